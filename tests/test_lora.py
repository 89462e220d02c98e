"""LoRA fine-tuning through the real `zoo train ... --init ... --lora-rank`: only the adapters (and
a new head) change, the loss falls, a resumed run continues with its adapters, and `zoo export`
merges them into an ordinary bundle that gives the unmerged model's logits."""

import json
import random
import shutil

import numpy as np
import pytest

from conftest import TINY_BERT, run_zoo

GPT_LORA = ["--lora-rank", "8", "--lora-alpha", "16", "--batch-size", "8", "--max-steps", "40", "--eval-every", "20",
            "--save-every", "20", "--lr", "1e-2"]
SENTENCES = ["To be, or not to be, that is the question.", "All the world's a stage.",
             "Now is the winter of our discontent."]


def _inside(path):
    """A variable's path inside its model: the model's own name varies between processes."""
    return path.split("/", 1)[1]


def _checkpoint(run, step):
    with np.load(run / "checkpoints" / f"step-{step:08d}.npz") as data:
        paths = json.loads(bytes(data["paths"]))["model"]
        return {_inside(p): data[f"model/{i}"] for i, p in enumerate(paths) if "seed_generator" not in p}


def _bundle_weights(bundle):
    import keras

    from zoo.bundle import load_bundle

    return {_inside(w.path): keras.ops.convert_to_numpy(w.value) for w in load_bundle(bundle)[0].weights}


def _train(*args):
    result = run_zoo("train", *args, "--json", check=True)
    return json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def gpt_lora(tiny_run, tmp_path_factory):
    """The tiny Shakespeare GPT adapted to three lines said over and over: a new domain."""
    _, bundle = tiny_run
    base = tmp_path_factory.mktemp("lora")
    rng = random.Random(0)
    (base / "lines.txt").write_text("".join(rng.choice(SENTENCES) + "\n" for _ in range(3000)), encoding="utf-8")
    summary, log = _train("gpt", "--init", bundle, "--data", base / "lines.txt", "--out", base / "gpt", *GPT_LORA)
    return bundle, base / "gpt", summary, log, base / "lines.txt"


def _val_loss(path, data):
    """The next-token loss of the run or bundle at `path` on the validation blocks `zoo train gpt`
    takes from `data` (32 tokens, 64 blocks)."""
    import keras

    from zoo.bundle import load_model
    from zoo.data import encode_documents, read_documents, split_documents, validation_blocks

    model, tokenizer, _ = load_model(path)
    inputs, targets = validation_blocks(encode_documents(tokenizer, split_documents(read_documents(data))[1]), 32, 64)
    logits = keras.ops.convert_to_numpy(model(inputs)).astype("float64")
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], -1).mean()


def _only_adapters_changed(before, after):
    """Every weight of `before` is bit-identical in `after`, whose adapters trained; returns them."""
    for name, value in before.items():
        assert np.array_equal(after[name], value), f"{name} changed"
    adapters = {k: v for k, v in after.items() if "lora_kernel" in k}
    assert adapters and all(np.any(v) for k, v in adapters.items() if k.endswith("lora_kernel_b"))  # B starts at 0
    return adapters


def test_gpt_lora_trains_only_the_attention_adapters(gpt_lora):
    bundle, run, summary, log, _ = gpt_lora
    config = json.loads((run / "config.json").read_text())
    assert config["lora"] == {"rank": 8, "alpha": 16.0, "targets": [
        "block_0/attn/qkv", "block_0/attn/out", "block_1/attn/qkv", "block_1/attn/out"]}
    before, after = _bundle_weights(bundle), _checkpoint(run, 40)
    adapters = _only_adapters_changed(before, after)
    assert len(adapters) == 8 and set(after) == set(before) | set(adapters)
    assert not any(np.array_equal(_checkpoint(run, 20)[k], v) for k, v in adapters.items())  # they kept training
    trainable = sum(v.size for v in adapters.values())
    assert summary["trainable_parameters"] == trainable == 2 * 8 * (32 + 96 + 32 + 32)  # 2 blocks' qkv and out
    total = summary["parameters"]
    assert f"trainable parameters: {trainable:,} of {total:,} ({trainable / total:.2%})" in log


def test_gpt_lora_lowers_the_loss(gpt_lora):
    """Modestly: with its embeddings and norms frozen, a 30-step tiny model cannot sharpen its
    predictions much (0.03 on every backend when written)."""
    init, run, _, _, data = gpt_lora
    assert _val_loss(run, data) < _val_loss(init, data) - 0.01


def test_gpt_lora_export_merges_the_adapters_with_the_same_logits(gpt_lora, tmp_path):
    import keras

    from zoo.bundle import load_bundle
    from zoo.configs import read_run_config
    from zoo.families.gpt.model import GPT
    from zoo.training import lora
    from zoo.training.checkpoints import restore_checkpoint

    init, run, _, _, _ = gpt_lora
    run_zoo("export", run, "--out", tmp_path / "bundle", check=True)
    config = read_run_config(run)
    unmerged = GPT(**config.model)
    unmerged.build()
    lora.enable(unmerged, config.settings["lora"])
    restore_checkpoint(run / "checkpoints" / "step-00000040.npz", unmerged, with_optimizer=False)
    merged, _, info = load_bundle(tmp_path / "bundle")
    tokens = np.random.default_rng(0).integers(0, config.model["vocabulary_size"], (2, 32))
    expected = keras.ops.convert_to_numpy(unmerged(tokens))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(merged(tokens)), expected, atol=1e-5)
    # An ordinary bundle: no adapters in its weights or its config, only in its provenance.
    assert not any("lora" in w.path for w in merged.weights) and len(merged.weights) + 8 == len(unmerged.weights)
    assert "lora" not in (tmp_path / "bundle" / "config.json").read_text()
    assert info.provenance["lora"]["merged"] and info.provenance["lora"]["rank"] == 8
    before = keras.ops.convert_to_numpy(load_bundle(init)[0](tokens))
    assert np.abs(expected - before).max() > 1e-3  # the adapters did change the model


def test_gpt_lora_resumes_with_its_adapters(gpt_lora, tmp_path):
    _, run, summary, _, _ = gpt_lora
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "step-00000040.npz").unlink()
    resumed, log = _train("gpt", "--out", copy, "--resume")
    assert "step-00000020" in log and resumed["trainable_parameters"] == summary["trainable_parameters"]
    expected, got = _checkpoint(run, 40), _checkpoint(copy, 40)
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], atol=2e-5, rtol=1e-4, err_msg=name)
    refused = run_zoo("train", "gpt", "--out", copy, "--resume", "--lora-rank", "8")
    assert refused.returncode == 1 and "differs from the run's LoRA (rank 8, alpha 16)" in refused.stderr


def test_lora_flags_need_init(small_corpus, tmp_path):
    for args, message in ((["gpt", "--data", small_corpus, "--lora-rank", "4"], "--lora-rank needs --init"),
                          (["bert", "--task", "classify", "--lora-rank", "4"], "--lora-rank needs --init"),
                          (["gpt", "--init", tmp_path, "--lora-alpha", "4"], "--lora-alpha needs --lora-rank"),
                          (["gpt", "--init", tmp_path, "--lora-rank", "0"], "must be positive")):
        result = run_zoo("train", *args, "--out", tmp_path / "run")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_bert_classifier_lora_trains_adapters_and_the_new_head(small_corpus, tmp_path):
    import keras

    from zoo.bundle import load_bundle
    from zoo.configs import read_run_config
    from zoo.families.bert.model import BertClassifier
    from zoo.training import lora
    from zoo.training.checkpoints import restore_checkpoint

    mlm = tmp_path / "mlm"
    run_zoo("train", "bert", "--task", "mlm", "--data", small_corpus, "--out", mlm, *TINY_BERT, "--vocab-size", "600",
            "--seq-len", "32", "--max-steps", "5", check=True)
    run_zoo("export", mlm, "--out", tmp_path / "mlm-bundle", check=True)
    run = tmp_path / "classify"
    summary, log = _train("bert", "--task", "classify", "--init", tmp_path / "mlm-bundle", "--out", run,
                          "--lora-rank", "2", "--batch-size", "32", "--max-steps", "30", "--eval-every", "15",
                          "--lr", "1e-2")
    config = read_run_config(run)
    assert config.settings["lora"]["head"] == ["classifier"] and len(config.settings["lora"]["targets"]) == 8
    before = {k: v for k, v in _bundle_weights(tmp_path / "mlm-bundle").items() if k.startswith("encoder/")}
    after = _checkpoint(run, 30)
    adapters = _only_adapters_changed(before, after)
    assert all("self_attention_layer/" in k for k in adapters)  # query, key, value and attention_output
    head = after["classifier/kernel"].size + after["classifier/bias"].size
    assert summary["trainable_parameters"] == sum(v.size for v in adapters.values()) + head
    evals = [json.loads(line)["val_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    assert evals[1] < evals[0]

    run_zoo("export", run, "--out", tmp_path / "bundle", check=True)
    unmerged = BertClassifier(**config.model)
    unmerged.build()
    lora.enable(unmerged, config.settings["lora"])
    restore_checkpoint(run / "checkpoints" / "step-00000030.npz", unmerged, with_optimizer=False)
    merged = load_bundle(tmp_path / "bundle")[0]
    rng = np.random.default_rng(0)
    inputs = {"token_ids": rng.integers(0, config.model["vocabulary_size"], (3, 16)),
              "segment_ids": np.zeros((3, 16), "int32"), "padding_mask": np.ones((3, 16), "int32")}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(merged(inputs)),
                               keras.ops.convert_to_numpy(unmerged(inputs)), atol=1e-5)
