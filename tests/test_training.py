"""Training through the real `zoo train gpt`: loss falls, checkpoints, exact resume after Ctrl-C or a kill."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL, run_zoo

STEPS = 160
RESUME_ARGS = [*TINY_MODEL, "--max-steps", STEPS, "--eval-every", 80, "--save-every", 40, "--log-every", 1,
               "--dropout", "0.1", "--lr", "3e-3"]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_validation_loss(tiny_run):
    run, _ = tiny_run
    evals = [m for m in _metrics(run) if "val_loss" in m]
    assert [m["step"] for m in evals] == [15, 30]
    vocabulary = json.loads((run / "config.json").read_text())["tokenizer"]["vocabulary_size"]
    assert evals[-1]["val_loss"] < math.log(vocabulary) - 0.5  # well below an untrained model's
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all({"step", "loss", "lr", "tokens_per_s", "elapsed_s"} <= m.keys() for m in _metrics(run))


def test_run_directory_layout(tiny_run):
    run, _ = tiny_run
    config = json.loads((run / "config.json").read_text())
    assert config["command"][:3] == ["zoo", "train", "gpt"]
    assert config["kind"] == "gpt" and len(config["data"]["sha256"]) == 64
    assert (run / "tokenizer.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000030.npz"]  # --save-every 500


def test_checkpoints_every_save_every_steps_keeping_the_newest_three(straight_run):
    names = sorted(p.name for p in (straight_run / "checkpoints").iterdir())
    assert names == ["step-00000080.npz", "step-00000120.npz", "step-00000160.npz"]


def _final_weights(run):
    """The arrays of the final checkpoint, by position. Not the variables' paths: Keras numbers the
    objects it names (seed_generator_50, ...) per process, and a checkpoint is read by position."""
    with np.load(run / "checkpoints" / f"step-{STEPS:08d}.npz") as data:
        return {k: data[k] for k in data.files if k != "paths"}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, small_corpus):
    run = tmp_path_factory.mktemp("straight") / "run"
    run_zoo("train", "gpt", "--data", small_corpus, "--out", run, *RESUME_ARGS, check=True)
    return run


def _start_and_signal(run, corpus, signum, ready):
    """Starts training and sends `signum` as soon as `ready(log_lines)` holds (checked every 20 ms);
    returns the exit code."""
    cmd = [sys.executable, "-m", "cli.main", "train", "gpt", "--data", str(corpus), "--out", str(run),
           *map(str, RESUME_ARGS)]
    process = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines = []

    def read():
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not ready(lines):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("training ended (or took 300 s) before the moment to signal it:\n"
                                 + "".join(lines)[-3000:])
        time.sleep(0.02)
    process.send_signal(signum)
    code = process.wait(timeout=300)
    reader.join(timeout=60)
    return code


def _past_step(step):
    return lambda lines: any((m := re.match(r"step (\d+)/", line)) and int(m.group(1)) >= step for line in lines)


def _checkpoint_exists(run, step):
    return lambda lines: (run / "checkpoints" / f"step-{step:08d}.npz").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, small_corpus, straight_run, signum):
    """Ctrl-C (SIGINT) once past step 10: a checkpoint at the step it stopped at, exit 130. A hard
    kill (SIGKILL) as soon as the step-40 checkpoint is written: the newest periodic checkpoint
    survives (40, or a later one if training got further before the kill landed). Either way the
    resumed run ends with the uninterrupted run's weights."""
    run = tmp_path / "run"
    ready = _past_step(10) if signum == signal.SIGINT else _checkpoint_exists(run, 40)
    code = _start_and_signal(run, small_corpus, signum, ready)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    saved = [name for name in names if re.fullmatch(r"step-\d{8}\.npz", name)]
    assert saved, "no checkpoint survived"
    stopped_at = int(saved[-1][5:13])
    assert stopped_at < STEPS
    if signum == signal.SIGINT:
        assert code == 130
        assert stopped_at >= 10
    else:
        assert code == -signal.SIGKILL
        assert stopped_at >= 40 and stopped_at % 40 == 0, saved  # only periodic checkpoints: --save-every 40
        # A kill during a later save can leave only its temporary file, which resuming ignores.
        assert all(name in saved or (name.startswith(".step-") and name.endswith(".tmp")) for name in names), names
    resumed = run_zoo("train", "gpt", "--data", small_corpus, "--out", run, "--resume", *RESUME_ARGS, check=True)
    assert f"step-{stopped_at:08d}" in resumed.stderr
    steps = [m["step"] for m in _metrics(run)]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps redone after the resume"
    expected, got = _final_weights(straight_run), _final_weights(run)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=2e-5, rtol=1e-4, err_msg=key)


def test_resume_refuses_changed_settings(straight_run, small_corpus):
    result = run_zoo("train", "gpt", "--data", small_corpus, "--out", straight_run, "--resume", "--lr", "0.5")
    assert result.returncode != 0
    assert "--lr 0.5 differs from the run's 0.003" in result.stderr
    result = run_zoo("train", "gpt", "--data", small_corpus, "--out", straight_run, "--resume", "--beta2", "0.95")
    assert result.returncode != 0
    assert "--beta2 0.95 differs from the run's 0.99" in result.stderr


def test_the_schedule_is_keras_cosine_decay_with_warmup():
    """zoo's schedule (warmup then cosine decay, its branch picked without `ops.cond`, which
    recompiles at every eager call on JAX) gives Keras's CosineDecay's values at every step,
    warmup and the end of the decay included."""
    import keras

    from zoo.training.loop import WarmupCosineDecay

    for warmup in (0, 7):
        settings = dict(initial_learning_rate=3e-3 / (warmup + 1), decay_steps=40, alpha=0.1,
                        warmup_target=3e-3 if warmup else None, warmup_steps=warmup)
        ours, keras_schedule = WarmupCosineDecay(**settings), keras.optimizers.schedules.CosineDecay(**settings)
        steps = range(0, 40 + warmup + 5)
        got = [float(ours(step)) for step in steps]
        np.testing.assert_allclose(got, [float(keras_schedule(step)) for step in steps], rtol=1e-6, atol=0)
        assert got[-1] == pytest.approx(3e-4)  # alpha * the peak, held after the decay ends
        # What the loop logs, computed in Python: the same rates.
        np.testing.assert_allclose([ours.value(step) for step in steps], got, rtol=1e-6, atol=0)


# zoo's schedule; and a rate set between updates (compile_for_training's learning_rate)
@pytest.mark.parametrize("position_embedding, learning_rate", [("learned", None), ("rotary", 3e-3)])
def test_the_gpts_torch_step_is_train_on_batch(backend, position_embedding, learning_rate):
    """On torch the GPT trains through a plain-torch forward pass over its own variables
    (zoo.families.gpt.torch_training): the model's logits exactly, and the same losses and weights
    step after step as Keras's train_on_batch, the optimizer's state included. On the other
    backends it declines (the model trains through train_on_batch)."""
    import keras
    import torch

    from zoo.families.gpt.model import GPT
    from zoo.families.gpt.torch_training import TorchForward, batch_loss, train_step
    from zoo.training.config import TrainConfig
    from zoo.training.loop import compile_for_training

    models = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        model = GPT(vocabulary_size=70, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=16,
                    position_embedding=position_embedding)
        model.build()
        compile_for_training(model, TrainConfig(max_steps=10, warmup_steps=2, grad_clip=0.05),  # clipping every step
                             learning_rate=learning_rate)
        models.append(model)
    keras_model, torch_model = models
    if backend != "torch":
        assert train_step(torch_model) is None and batch_loss(torch_model) is None
        return
    tokens = np.random.default_rng(0).integers(0, 70, (4, 17)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        assert torch.equal(TorchForward(torch_model)(torch.as_tensor(x).long()), torch_model(torch.as_tensor(x)))
    step = train_step(torch_model)
    assert "fused" in step.description  # the update through torch's fused AdamW kernel, checked below
    for update in range(4):
        if learning_rate is not None:
            for model in models:
                model.optimizer.learning_rate = learning_rate / (update + 1)
        expected = keras_model.train_on_batch(x, y, return_dict=True)["loss"]
        assert float(step(x, y)) == pytest.approx(expected, rel=1e-6)
    for a, b in zip(keras_model.variables + keras_model.optimizer.variables,
                    torch_model.variables + torch_model.optimizer.variables, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), atol=1e-6, rtol=1e-5,
                                   err_msg=a.path)
    keras.utils.set_random_seed(0)
    dropout = GPT(vocabulary_size=70, num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=16,
                  dropout=0.1)
    dropout.build()
    compile_for_training(dropout, TrainConfig(max_steps=10))
    # Keras's seeded dropout masks: Keras's forward pass (the next test)
    assert train_step(dropout).description.startswith("Keras's forward pass")
    validation = batch_loss(torch_model)
    expected = torch_model.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)["loss"]
    assert float(validation(x, y)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("precision, dropout", [("bf16", 0.0), ("fp32", 0.1)])
def test_the_gpts_torch_step_keeps_keras_forward_pass_where_it_has_no_torch_twin(backend, precision, dropout):
    """Under mixed_bfloat16, or with dropout, the torch step runs Keras's own forward pass and loss
    and updates through torch's fused AdamW: the same losses and weights as train_on_batch, step
    after step (dropout's seeded masks included). In bfloat16 the update's last-bit differences
    (fused against Keras's eleven calls) move some weights across a bfloat16 rounding, so the
    weights are compared after the first update and the later losses to bfloat16's precision.
    Elsewhere the step declines."""
    import keras

    from zoo.families.gpt.model import GPT
    from zoo.families.gpt.torch_training import train_step
    from zoo.training import accelerator
    from zoo.training.config import TrainConfig
    from zoo.training.loop import compile_for_training

    previous = keras.config.dtype_policy()
    models = []
    try:
        for _ in range(2):
            keras.utils.set_random_seed(0)
            accelerator.set_precision(precision)
            model = GPT(vocabulary_size=70, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                        max_length=16, dropout=dropout)
            model.build()
            compile_for_training(model, TrainConfig(max_steps=10, warmup_steps=2, grad_clip=0.05, precision=precision))
            models.append(model)
    finally:
        keras.config.set_dtype_policy(previous)
    keras_model, torch_model = models
    if backend != "torch":
        assert train_step(torch_model) is None
        return
    step = train_step(torch_model)
    assert step.description.startswith("Keras's forward pass and Keras's AdamW in torch's fused kernel")
    tokens = np.random.default_rng(0).integers(0, 70, (4, 17)).astype(np.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    compared_after = 1 if precision == "bf16" else 4
    for update in range(4):
        expected = keras_model.train_on_batch(x, y, return_dict=True)["loss"]
        assert float(step(x, y)) == pytest.approx(expected, rel=1e-5 if update < compared_after else 1e-2)
        if update + 1 != compared_after:
            continue
        for a, b in zip(keras_model.variables + keras_model.optimizer.variables,
                        torch_model.variables + torch_model.optimizer.variables, strict=True):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), atol=1e-6,
                                       rtol=1e-5, err_msg=a.path)


@pytest.mark.backend_independent
def test_a_stop_arriving_after_the_groups_agreement_ends_the_loop_only_at_the_next_one(tmp_path, monkeypatch):
    """The loop ends on the group's agreed stop, not on the process's own flag: a SIGTERM landing after
    a step's agreement (here during its evaluation) runs one more step, whose agreement stops every
    process. Ending at once would leave the other processes of a group in that step's collectives."""
    import os

    import keras

    from zoo.training import cluster, loop
    from zoo.training.config import TrainConfig

    agreements = []
    monkeypatch.setattr(cluster, "any_process", lambda flag: agreements.append(bool(flag)) or bool(flag))

    def evaluate(model):
        if len(agreements) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"val_loss": 1.0}

    class Batches:
        tokens_per_batch = 4

        def batch(self, i):
            return np.zeros((1, 4), "float32"), np.zeros((1, 1), "float32")

        def epoch_of(self, i):
            return i / 100

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    config = TrainConfig(max_steps=100, eval_every=3, save_every=50, log_every=1)
    summary = loop.train(model, keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9), Batches(), None, evaluate,
                         config, tmp_path, train_step=lambda *data: 0.0)
    assert agreements == [False, False, False, True]
    assert summary["step"] == 4 and summary["stopped"] == "SIGTERM"
    assert (tmp_path / "checkpoints" / "step-00000004.npz").is_file()


@pytest.mark.backend_independent
def test_blocks_shorter_than_the_context_are_noted(tmp_path, small_corpus, capsys):
    short = run_zoo("train", "gpt", "--data", small_corpus, *TINY_MODEL, "--tokenizer", "char", "--max-steps", "1",
                    "--eval-every", "1", "--seq-len", "16", "--out", tmp_path / "run", check=True)
    assert "note: --seq-len 16 trains 16 of the context's 32 learned positions" in short.stderr
    # ... and generating past them says so too: from the run, and from its bundle (provenance)
    past = run_zoo("generate", tmp_path / "run", "--max-new-tokens", "20", "--temperature", "0", check=True)
    assert "note: this model was trained on blocks of 16 of its 32 positions; a prompt and output of 21" in past.stderr
    from zoo.bundle import export_bundle, load_runtime
    from zoo.configs import read_bundle_info
    from zoo.engine import SamplingConfig

    export_bundle(tmp_path / "run", tmp_path / "bundle")
    assert read_bundle_info(tmp_path / "bundle").provenance["trained_positions"] == 16
    generator, _ = load_runtime(tmp_path / "bundle", "generate")
    capsys.readouterr()
    generator.start("", SamplingConfig(max_new_tokens=15, temperature=0))  # 16 tokens with the start token
    assert capsys.readouterr().err == ""
    generator.start("", SamplingConfig(max_new_tokens=16, temperature=0))
    assert "trained on blocks of 16 of its 32 positions" in capsys.readouterr().err
    from zoo.families.gpt.training import _untrained_positions

    for model, seq_len in (({"max_length": 32}, 32), ({"max_length": 32, "position_embedding": "rotary"}, 16)):
        assert _untrained_positions({"model": model, "seq_len": seq_len}) is None


@pytest.mark.backend_independent  # one torch process, whatever the suite's backend
def test_training_imports_keras_without_the_integrations_it_never_uses():
    """zoo.training.run.import_keras keeps scikit-learn, rouge-score, matplotlib and (on another
    backend) JAX out of keras's import, seconds of every `zoo train` start, and leaves them
    importable after."""
    code = ("import sys; from zoo.training.run import import_keras; import_keras(); "
            "print(sorted(m for m in ('jax', 'sklearn', 'rouge_score', 'matplotlib', 'keras_hub') "
            "if m in sys.modules)); "
            "import jax, sklearn, matplotlib.pyplot; print('importable')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "KERAS_BACKEND": "torch"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["['keras_hub']", "importable"]

