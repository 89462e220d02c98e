"""Training at accelerator speed, checked on the CPU: mixed precision, gradient accumulation,
prepared (memory-mapped) corpora, the MFU arithmetic, and, once, in a process with 8 forced CPU
devices, data- and model-parallel training against one device."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ROOT
from zoo.data import encode_documents, read_documents, split_documents
from zoo.data.prepared import PreparedCorpus, prepare_corpus
from zoo.errors import ZooError
from zoo.tokenizers import END_TOKEN
from zoo.training import flops
from zoo.training.config import TrainConfig

TINY = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=32)
NO_TF = str(ROOT / "tests" / "helpers" / "no_tensorflow")


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.backend_independent
def test_flops_per_token_and_mfu_match_a_hand_count_for_the_nano_preset():
    from zoo.families.gpt.model import gpt_from_preset

    # nano: 4 layers, width 128, MLP 512, context 128; vocabulary 2048. Per layer: two LayerNorms
    # 4*128, QKV 128*384+384, attention out 128*128+128, MLP 128*512+512 and 512*128+128.
    per_layer = 4 * 128 + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)
    n = 4 * per_layer + 2 * 128 + 2048 * 128  # + final LayerNorm + token embedding (the tied output layer)
    assert n == 1_055_488
    by_hand = 6 * n + 12 * 4 * 128 * 128  # nanoGPT: 6N + 12*L*T*H
    assert by_hand == 7_119_360
    assert flops.flops_per_token(n, 4, 128, 128) == by_hand
    model = gpt_from_preset("nano", 2048)
    assert flops.model_flops_per_token(model, 128) == by_hand  # the position embedding is left out
    # 1M tokens/s on one A100 in bf16 (312 TFLOP/s): 7.11936e12 / 312e12.
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB", "bf16") == 312e12
    assert flops.mfu(1e6, by_hand, 312e12) == pytest.approx(0.022818, abs=1e-6)
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert flops.peak_flops("NVIDIA H200", "fp32") == 494.5e12
    assert flops.peak_flops("NVIDIA L40S", "bf16") == 362e12 and flops.peak_flops("NVIDIA L4", "bf16") == 121e12
    assert flops.peak_flops("cpu", "fp32") is None and flops.mfu(1e6, by_hand, None) is None
    throughput = flops.Throughput(by_hand, "bf16", devices=8, override=2e12, device="cpu")
    assert throughput.mfu(1e6) == pytest.approx(by_hand * 1e6 / 16e12)


@pytest.mark.backend_independent
def test_prepared_corpus_round_trips(tmp_path, small_corpus):
    from cli.main import cli

    train_docs, val_docs = split_documents(read_documents(small_corpus), 0.1)
    result = CliRunner().invoke(cli, ["prepare", "--data", str(small_corpus), "--out", str(tmp_path / "char"),
                                      "--tokenizer", "char", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    char = PreparedCorpus(tmp_path / "char")
    assert isinstance(char.train, np.memmap) and char.train.dtype == np.uint16 and meta["dtype"] == "uint16"
    # The same tokens as the in-memory path with the same tokenizer.
    assert np.array_equal(char.train, encode_documents(char.tokenizer, train_docs))
    assert np.array_equal(char.val, encode_documents(char.tokenizer, val_docs))
    assert (meta["train_tokens"], meta["val_tokens"]) == (char.train.size, char.val.size)

    prepare_corpus(tmp_path / "bpe", small_corpus, "bpe", 300)
    bpe = PreparedCorpus(tmp_path / "bpe")
    # Each document's text, then the end token: decoding the stream gives back the text exactly.
    assert bpe.tokenizer.decode(bpe.train) == "".join(doc + END_TOKEN for doc in train_docs)
    assert bpe.tokenizer.decode(bpe.val) == "".join(doc + END_TOKEN for doc in val_docs)
    assert bpe.meta["sha256"] != char.meta["sha256"] and bpe.meta["source"]["sha256"] == meta["source"]["sha256"]

    with pytest.raises(ZooError, match="already exists"):
        prepare_corpus(tmp_path / "bpe", small_corpus)
    refused = CliRunner().invoke(cli, ["train", "gpt", "--data", str(tmp_path / "char"), "--tokenizer", "bpe"])
    assert refused.exit_code != 0 and "is a prepared corpus" in refused.output


@pytest.fixture(scope="module")
def prepared_bf16_run(tmp_path_factory, small_corpus):
    """A tiny GPT trained in bf16 for 30 steps on a char-level prepared corpus."""
    from zoo.families.gpt.training import train_gpt

    base = tmp_path_factory.mktemp("prepared-run")
    prepare_corpus(base / "prepared", small_corpus, "char")
    config = TrainConfig(max_steps=30, batch_size=8, learning_rate=3e-3, precision="bf16", eval_every=15, log_every=5)
    summary = train_gpt(base / "run", data=base / "prepared", model_overrides=TINY, train_config=config)
    return base / "prepared", base / "run", summary


def test_bf16_training_lowers_the_loss(prepared_bf16_run):
    _, run, summary = prepared_bf16_run
    assert summary["precision"] == "bf16"
    evals = [m for m in _metrics(run) if "val_loss" in m]
    vocabulary = json.loads((run / "config.json").read_text())["tokenizer"]["vocabulary_size"]
    assert [m["step"] for m in evals] == [15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < math.log(vocabulary)
    assert all(math.isfinite(m["loss"]) and "tokens_per_s" in m and "mfu" not in m for m in _metrics(run))  # CPU: no peak


def test_training_on_a_prepared_corpus_reuses_its_tokens_and_resumes(prepared_bf16_run):
    from zoo.families.gpt.training import train_gpt

    prepared, run, _ = prepared_bf16_run
    config = json.loads((run / "config.json").read_text())
    meta = json.loads((prepared / "meta.json").read_text())
    assert config["data"]["prepared"] and config["data"]["sha256"] == meta["sha256"]
    assert config["data"]["train_tokens"] == meta["train_tokens"]
    assert (run / "tokenizer.json").read_text() == (prepared / "tokenizer.json").read_text()
    summary = train_gpt(run, data=prepared, resume=True, explicit_train_changes={"max_steps": 32})
    assert (summary["start_step"], summary["step"]) == (30, 32)


def _tiny_model(vocabulary):
    from zoo.families.gpt.model import GPT

    model = GPT(vocabulary_size=vocabulary, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=16)
    model.build()
    return model


def _train_tiny(tmp_path, name, tokens, **settings):
    import keras

    from zoo.data import BlockBatches, validation_blocks
    from zoo.training.accelerator import set_precision
    from zoo.training.loop import compile_for_training, train

    config = TrainConfig(max_steps=3, learning_rate=3e-3, warmup_steps=1, eval_every=100, log_every=1, **settings)
    keras.utils.set_random_seed(0)
    previous = keras.config.dtype_policy()
    set_precision(config.precision)
    try:
        model = _tiny_model(64)
        schedule = compile_for_training(model, config)
    finally:
        keras.config.set_dtype_policy(previous)
    run = tmp_path / name
    run.mkdir()
    batches = BlockBatches(tokens, 16, config.batch_size, seed=0)
    summary = train(model, schedule, batches, validation_blocks(tokens, 16, 4), lambda m: {"val_loss": 0.0}, config, run)
    return model, summary, _metrics(run)


def test_grad_accum_of_n_batches_equals_one_n_times_larger(tmp_path):
    import keras

    tokens = np.random.default_rng(0).integers(0, 64, 4000).astype(np.int32)
    whole, whole_summary, whole_log = _train_tiny(tmp_path, "whole", tokens, batch_size=8)
    accumulated, summary, log = _train_tiny(tmp_path, "accumulated", tokens, batch_size=2, grad_accum=4)
    # The optimizer accumulates: one accumulator per trainable variable (checked below).
    accumulators = [v for v in accumulated.optimizer.variables if "accumulator" in v.path]
    assert len(accumulators) == len(accumulated.trainable_weights), [v.path for v in accumulated.optimizer.variables]
    for model in (whole, accumulated):
        assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3  # updates, not batches
    assert [m["lr"] for m in log] == [m["lr"] for m in whole_log]
    np.testing.assert_allclose([m["loss"] for m in log], [m["loss"] for m in whole_log], rtol=1e-5)
    for a, b in zip(accumulated.trainable_weights, whole.trainable_weights, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=2e-6, rtol=1e-5,
                                   err_msg=a.path)
    # Checkpoints fall on update boundaries: nothing half-accumulated is left to resume.
    for variable in accumulators:
        assert not np.any(keras.ops.convert_to_numpy(variable)), variable.path


def test_fp16_trains_under_keras_loss_scaling(backend, tmp_path):
    import keras

    from zoo.training.loop import compile_for_training

    keras.config.set_dtype_policy("mixed_float16")
    try:  # compile wraps the optimizer in dynamic loss scaling, on every backend
        wrapped = _tiny_model(64)
        compile_for_training(wrapped, TrainConfig(precision="fp16"))
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(wrapped.optimizer, keras.optimizers.LossScaleOptimizer)
    tokens = np.random.default_rng(1).integers(0, 64, 4000).astype(np.int32)
    if backend == "jax":  # XLA:CPU refuses float16 matmuls; said before anything is built
        with pytest.raises(ZooError, match="JAX on the CPU cannot multiply float16"):
            _train_tiny(tmp_path, "fp16", tokens, batch_size=4, precision="fp16")
        return
    model, summary, log = _train_tiny(tmp_path, "fp16", tokens, batch_size=4, precision="fp16")
    assert model.dtype_policy.name == "mixed_float16" and keras.config.dtype_policy().name == "float32"
    assert summary["step"] == 3 and all(math.isfinite(m["loss"]) for m in log)


def test_more_than_one_device_is_refused_with_the_reason(backend, tmp_path, small_corpus):
    from zoo.families.gpt.training import train_gpt

    expected = "device\\(s\\) visible" if backend == "jax" else "JAX backend only"
    with pytest.raises(ZooError, match=expected):
        train_gpt(tmp_path / "run", data=small_corpus, model_overrides=TINY, tokenizer_kind="char",
                  train_config=TrainConfig(max_steps=1, batch_size=8, devices=2))


@pytest.mark.cross_backend
def test_data_and_model_parallel_on_8_cpu_devices_match_one_device(tmp_path, small_corpus):
    # Without TensorFlow, as on the GPU machines (and it starts faster).
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "PYTHONPATH": os.pathsep.join([NO_TF, str(ROOT)])}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "distributed_training.py"),
                             str(small_corpus), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert runs["devices_visible"] == 8
    assert (runs["one"]["devices"], runs["data"]["devices"], runs["model"]["devices"]) == (1, 8, 8)
    for name in ("data", "model"):  # the same global batch of 16: the same loss curve
        np.testing.assert_allclose(runs[name]["losses"], runs["one"]["losses"], rtol=2e-5, err_msg=name)
        assert runs[name]["val_loss"] == pytest.approx(runs["one"]["val_loss"], rel=2e-5)
    assert "ModelParallel over 8 devices (4 batch x 2 model)" in result.stderr
    # The helper's 2 layers' qkv and mlp_out kernels and the token embedding: all found, all sharded.
    sharding = runs["sharding"]
    for suffix, count in (("attn/qkv/kernel", 2), ("mlp_out/kernel", 2), ("token_embedding/embeddings", 1)):
        assert sum(path.endswith(suffix) for path in sharding) == count, f"{count} {suffix} expected in {sharding}"
    assert len(sharding) == 5, sharding
    for path, spec in sharding.items():
        assert "'model'" in spec, f"{path} is not sharded: {spec}"


@pytest.mark.cross_backend
def test_gpu_benchmark_runs_unchanged_on_the_cpu_without_tensorflow(tmp_path, small_corpus):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": NO_TF}
    # A validation loss the run has to learn its way to: below ln(vocabulary), what a model that
    # guesses every character alike scores (the small corpus has 75 characters: ln 75 = 4.32).
    steps, target = 40, 4.0
    vocabulary = len(set(small_corpus.read_text(encoding="utf-8")))
    assert target < math.log(vocabulary) - 0.05
    # Tokenized first (`--prepare-only`, as before a short GPU lease), then reused from the cache.
    cache = tmp_path / "prepared"
    prepared = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--prepare-only", "--presets", "small",
         "--cache", str(cache), "--data", str(small_corpus)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert prepared.stdout.split() == [str(cache / "char-256")] and (cache / "char-256" / "meta.json").is_file()
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--backend", "jax", "torch", "--presets", "small",
         "--cache", str(cache), "--steps", str(steps), "--batch-size", "4", "--seq-len", "32", "--eval-every", "10", "--eval-blocks", "4",
         "--log-every", "1", "--lr", "3e-3", "--warmup", "3", "--target-loss", str(target), "--data", str(small_corpus),
         "--out", str(out),
         "--override", "num_layers=2", "--override", "hidden_dim=32", "--override", "num_heads=2",
         "--override", "intermediate_dim=64"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preparing" not in result.stderr  # the prepared corpus was used as it was
    report = json.loads(out.read_text())
    assert [(r["preset"], r["backend"]) for r in report["rows"]] == [("small", "jax"), ("small", "torch")]
    for row in report["rows"]:
        assert row["steps"] == steps and row["tokens_per_s"] > 0 and row["mfu"] is None  # no known CPU peak
        assert row["host_peak_rss_bytes"] > 0 and row["target_val_loss"] == target
        # Reached, as the validation losses say, within the run's training time.
        assert row["best_val_loss"] <= target, row
        assert row["time_to_target_s"] is not None and 0 < row["time_to_target_s"] <= row["wall_s"], row
    assert "| small | torch |" in out.with_suffix(".md").read_text()
