"""`zoo train gpt --teacher`: a run learns its teacher's next-token distribution (zoo.training.distill)."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY_MODEL, run_zoo
from zoo.bundle import load_model
from zoo.families.gpt.model import GPT
from zoo.training.config import TrainConfig
from zoo.training.distill import distillation_step
from zoo.training.loop import compile_for_training

STUDENT = [*TINY_MODEL, "--max-steps", "30", "--eval-every", "30", "--lr", "3e-3", "--seed", "1"]


def _log_probabilities(model, ids):
    return keras.ops.convert_to_numpy(keras.ops.log_softmax(model(ids), axis=-1)).astype("float64")


def _kl(teacher, student, ids):
    """The mean over positions of KL(teacher || student)."""
    p, q = _log_probabilities(teacher, ids), _log_probabilities(student, ids)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def _blocks(tokenizer, text, length, count):
    ids = np.asarray(tokenizer.encode(text), dtype="int32")
    return np.stack([ids[i * length:(i + 1) * length] for i in range(count)])


def test_a_distilled_run_is_closer_to_its_teacher_than_the_same_run_on_the_corpus(tiny_run, small_corpus, tmp_path):
    _, teacher_bundle = tiny_run
    distilled, plain = tmp_path / "distilled", tmp_path / "plain"
    run_zoo("train", "gpt", "--data", small_corpus, "--out", distilled, *STUDENT, "--teacher", teacher_bundle,
            check=True)
    run_zoo("train", "gpt", "--data", small_corpus, "--out", plain, *STUDENT, check=True)
    assert json.loads((distilled / "config.json").read_text())["teacher"] == str(teacher_bundle)

    teacher, tokenizer, _ = load_model(teacher_bundle)
    ids = _blocks(tokenizer, small_corpus.read_text(encoding="utf-8")[-20_000:], 32, 16)  # the validation end
    kl_distilled = _kl(teacher, load_model(distilled)[0], ids)
    kl_plain = _kl(teacher, load_model(plain)[0], ids)
    assert kl_distilled < 0.5 * kl_plain, (kl_distilled, kl_plain)
    # The logged loss is the KL divergence to the teacher, not the corpus's cross-entropy (above 4 here).
    last = json.loads((distilled / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"] < 1.0 and last["val_loss"] > 3.0


def test_the_step_minimizes_the_kl_divergence_from_the_teachers_distribution(tiny_run):
    _, teacher_bundle = tiny_run
    teacher = load_model(teacher_bundle)[0]
    keras.utils.set_random_seed(3)
    student = GPT(**{**teacher.get_config(), "name": "student"})
    student.build()
    compile_for_training(student, TrainConfig(learning_rate=1e-3, max_steps=10))
    step = distillation_step(student, teacher_bundle)
    ids = np.random.default_rng(0).integers(0, teacher.vocabulary_size, (4, 32)).astype("int32")
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in student.trainable_variables]
    expected = _kl(teacher, student, ids)

    loss = float(step(ids, ids))

    assert loss == pytest.approx(expected, rel=1e-4)  # the divergence of the distributions, not of the logits
    assert int(keras.ops.convert_to_numpy(student.optimizer.iterations)) == 1  # the run's own optimizer stepped
    after = [keras.ops.convert_to_numpy(v.value) for v in student.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert _kl(teacher, student, ids) < expected


def test_a_resumed_run_keeps_distilling(tiny_run, small_corpus, tmp_path):
    _, teacher_bundle = tiny_run
    out = tmp_path / "run"
    args = ["train", "gpt", "--data", small_corpus, "--out", out, *STUDENT, "--teacher", teacher_bundle]
    run_zoo(*args, check=True)
    refused = run_zoo("train", "gpt", "--out", out, "--resume", "--max-steps", "40", "--teacher", small_corpus)
    assert refused.returncode != 0 and f"--teacher {small_corpus} differs from the run's" in refused.stderr
    run_zoo("train", "gpt", "--out", out, "--resume", "--max-steps", "40", "--log-every", "1", check=True)
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in resumed if m["step"] > 30] == list(range(31, 41))
    assert all(m["loss"] < 1.0 for m in resumed if m["step"] > 30)  # the KL divergence, not cross-entropy


def test_a_teacher_that_cannot_teach_the_run_is_refused_by_name(tiny_run, tiny_classifier, small_corpus, tmp_path,
                                                                backend):
    _, teacher_bundle = tiny_run
    _, classifier_bundle, _ = tiny_classifier
    cases = [
        ([*STUDENT, "--vocab-size", "280"], teacher_bundle, "its tokenizer differs from the run's"),
        ([*STUDENT, "--max-length", "64"], teacher_bundle, "its context (32 tokens) is shorter than the run's blocks"),
        (STUDENT, classifier_bundle, "a teacher is a language model"),
        (STUDENT, tmp_path / "missing", f"--teacher {tmp_path / 'missing'}: no such bundle or run directory"),
    ]
    if backend == "jax":  # the only backend that trains on several devices
        cases.append(([*STUDENT, "--devices", "2"], teacher_bundle, "--teacher trains on one device"))
    for i, (flags, teacher, message) in enumerate(cases):
        result = run_zoo("train", "gpt", "--data", small_corpus, "--out", tmp_path / f"run{i}", *flags,
                         "--teacher", teacher)
        assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-500:])
        assert "Traceback" not in result.stderr
