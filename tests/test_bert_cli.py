"""BERT through the real `zoo` command: masked-LM pretraining, fine-tuning with --init, the
shipped classification data, `zoo classify`, `zoo eval`, and one-line data errors."""

import json

import numpy as np
import pytest

from conftest import TINY_BERT, run_zoo, zoo_json


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, small_corpus):
    run = tmp_path_factory.mktemp("mlm") / "run"
    summary = zoo_json("train", "bert", "--task", "mlm", "--data", small_corpus, "--out", run, *TINY_BERT,
                       "--vocab-size", "600", "--seq-len", "32", "--max-steps", "40", "--eval-every", "20", "--lr", "3e-3")
    return run, summary


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_masked_lm_pretraining_lowers_the_validation_loss(mlm_run):
    run, summary = mlm_run
    evals = [m for m in _metrics(run) if "val_loss" in m]
    assert [m["step"] for m in evals] == [20, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["val_loss"] < np.log(600) - 0.5  # well below an untrained model's log(vocabulary)
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "bert" and config["task"] == "mlm" and config["tokenizer"]["kind"] == "wordpiece"


def test_fine_tuning_from_init_carries_the_encoder_weights(mlm_run, tmp_path):
    mlm, _ = mlm_run
    run = tmp_path / "init"
    # One step at a vanishing learning rate: the encoder must still be the pretrained one.
    run_zoo("train", "bert", "--task", "classify", "--init", mlm, "--out", run, "--max-steps", "1", "--lr", "1e-12",
            "--batch-size", "8", check=True)
    with np.load(sorted((mlm / "checkpoints").iterdir())[-1]) as pretrained, \
            np.load(sorted((run / "checkpoints").iterdir())[-1]) as fine_tuned:
        def encoder(data):
            paths = json.loads(bytes(data["paths"]))["model"]
            return {p.split("encoder/", 1)[1]: data[f"model/{i}"] for i, p in enumerate(paths)
                    if "encoder/" in p and "seed_generator" not in p}  # dropout RNG states are not weights

        before, after = encoder(pretrained), encoder(fine_tuned)
    assert before.keys() == after.keys() and len(before) > 10
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(mlm) and config["model"]["hidden_dim"] == 32  # the shape came from --init


def test_classifier_on_the_shipped_data_beats_the_majority_class(tiny_classifier):
    _, _, summary = tiny_classifier
    report = summary["report"]
    assert report["labels"] == ["dutch", "english", "french", "german", "italian", "portuguese", "spanish"]
    assert report["accuracy"] > report["majority_baseline"] + 0.3
    assert report["macro_f1"] > 0.4
    assert np.sum(report["confusion"]) == report["examples"] == 222


def test_eval_reproduces_the_training_report_and_classify_labels_texts(tiny_classifier):
    run, bundle, summary = tiny_classifier
    report = zoo_json("eval", bundle)
    assert report["confusion"] == summary["report"]["confusion"]
    assert report["accuracy"] == pytest.approx(summary["report"]["accuracy"])
    long_text = " ".join(["word"] * 200)
    texts = ["Mot de passe oublié", "Passwort zurücksetzen", long_text]
    lines = run_zoo("classify", bundle, *texts, "--json", check=True).stdout
    results = [json.loads(line) for line in lines.splitlines()]
    assert [r["text"] for r in results] == texts
    assert [r["truncated"] for r in results] == [False, False, True]
    for r in results:
        assert r["label"] in report["labels"]
        assert sum(r["classes"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["probability"] == max(r["classes"].values())


@pytest.mark.backend_independent
@pytest.mark.parametrize("content, args, message", [
    ("sentence\tlabel\nhello\ta\n", ["--label-column", "gold"], "no column 'gold'"),
    ("sentence\tlabel\n", [], "no rows"),
    ("sentence\tlabel\n" + "hello there\tsame\n" * 30, [], "at least two classes"),
    ("sentence\tlabel\n", ["--text-column", "nope"], "nope"),
])
def test_data_errors_are_one_line(tmp_path, content, args, message):
    data = tmp_path / "data.tsv"
    data.write_text(content, encoding="utf-8")
    result = run_zoo("train", "bert", "--task", "classify", "--data", data, "--out", tmp_path / "run", *args)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.backend_independent
def test_a_label_the_model_never_saw_is_an_error(tiny_classifier, tmp_path):
    data = tmp_path / "dev.tsv"
    data.write_text("sentence\tlabel\nBonjour tout le monde\tfrench\nBuongiorno\tklingon\n", encoding="utf-8")
    result = run_zoo("eval", tiny_classifier[1], "--data", data)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "line 3" in result.stderr and "'klingon'" in result.stderr


@pytest.mark.backend_independent
def test_a_metric_choice_is_refused_for_a_report_printed_whole(tiny_classifier):
    result = run_zoo("eval", tiny_classifier[1], "--metric", "bleu")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--metric bleu: not a score of a bert model's report; its report is printed whole" in result.stderr
