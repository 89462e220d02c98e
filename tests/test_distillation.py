"""`zoo train gpt --teacher`: a run learns its teacher's next-token distribution (zoo.training.distill)."""

import json

import keras
import numpy as np
import pytest

from conftest import TINY_MODEL, run_zoo
from zoo.bundle import load_model
from zoo.families.gpt.model import GPT
from zoo.families.gpt.torch_training import train_step
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


def _student(teacher, seed=3):
    keras.utils.set_random_seed(seed)
    student = GPT(**{**teacher.get_config(), "name": "student"})
    student.build()
    compile_for_training(student, TrainConfig(learning_rate=1e-3, max_steps=10))
    return student


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_step_minimizes_the_kl_divergence_from_the_teachers_distribution(tiny_run, backend, precision):
    _, teacher_bundle = tiny_run
    teacher = load_model(teacher_bundle)[0]
    student = _student(teacher)
    step = distillation_step(student, teacher_bundle, precision, family_step=train_step)
    # On torch the GPT's plain-torch step (both precisions); elsewhere it declines: Keras's Distiller.
    assert ("plain-torch" in step.description) == (backend == "torch"), step.description
    ids = np.random.default_rng(0).integers(0, teacher.vocabulary_size, (4, 32)).astype("int32")
    before = [keras.ops.convert_to_numpy(v.value).copy() for v in student.trainable_variables]
    expected = _kl(teacher, student, ids)  # from the float32 teacher

    loss = float(step(ids, ids))

    # The divergence of the distributions, not of the logits; a bfloat16 teacher's is close to it.
    assert loss == pytest.approx(expected, rel=1e-4 if precision == "fp32" else 2e-2)
    if precision == "bf16":  # and the teacher did compute in bfloat16
        assert loss != pytest.approx(expected, rel=1e-6)
    assert int(keras.ops.convert_to_numpy(student.optimizer.iterations)) == 1  # the run's own optimizer stepped
    after = [keras.ops.convert_to_numpy(v.value) for v in student.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    assert _kl(teacher, student, ids) < expected


def test_the_torch_step_is_the_distillers_step(tiny_run, backend):
    """The GPT's plain-torch distillation step computes what Keras's Distiller does: the same
    losses and the same weights over several updates. On the other backends it declines."""
    _, teacher_bundle = tiny_run
    teacher = load_model(teacher_bundle)[0]
    plain, distiller = _student(teacher), _student(teacher)
    if backend != "torch":
        assert train_step(plain, teacher=teacher) is None
        return
    plain_step = distillation_step(plain, teacher_bundle, family_step=train_step)
    distiller_step = distillation_step(distiller, teacher_bundle)
    assert "plain-torch" in plain_step.description and "Distiller" in distiller_step.description
    rng = np.random.default_rng(1)
    for _ in range(3):
        ids = rng.integers(0, teacher.vocabulary_size, (4, 32)).astype("int32")
        assert float(plain_step(ids, ids)) == pytest.approx(float(distiller_step(ids, ids)), rel=1e-5)
    for a, b in zip(plain.trainable_variables, distiller.trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value),
                                   atol=1e-5, err_msg=a.path)


def test_a_resumed_run_keeps_distilling(tiny_run, small_corpus, tmp_path):
    _, teacher_bundle = tiny_run
    out = tmp_path / "run"
    args = ["train", "gpt", "--data", small_corpus, "--out", out, *STUDENT, "--teacher", teacher_bundle,
            "--teacher-precision", "bf16"]
    run_zoo(*args, check=True)
    config = json.loads((out / "config.json").read_text())
    assert (config["teacher"], config["teacher_precision"]) == (str(teacher_bundle), "bf16")
    refused = run_zoo("train", "gpt", "--out", out, "--resume", "--max-steps", "40", "--teacher", small_corpus)
    assert refused.returncode != 0 and f"--teacher {small_corpus} differs from the run's" in refused.stderr
    refused = run_zoo("train", "gpt", "--out", out, "--resume", "--max-steps", "40", "--teacher-precision", "fp32")
    assert refused.returncode != 0 and "--teacher-precision fp32 differs from the run's (bf16)" in refused.stderr
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
        ([*STUDENT, "--teacher-precision", "bf16"], None, "--teacher-precision is the precision of a teacher's"),
    ]
    if backend == "jax":  # the only backend that trains on several devices
        cases.append(([*STUDENT, "--devices", "2"], teacher_bundle, "--teacher trains on one device"))
    for i, (flags, teacher, message) in enumerate(cases):
        result = run_zoo("train", "gpt", "--data", small_corpus, "--out", tmp_path / f"run{i}", *flags,
                         *(["--teacher", teacher] if teacher else []))
        assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-500:])
        assert "Traceback" not in result.stderr
