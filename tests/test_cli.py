"""The `zoo` command: help with examples, backend reporting, and one-line errors for bad input."""

import json

import pytest

from conftest import TINY_MODEL, run_zoo, zoo_json

COMMANDS = [[], ["info"], ["train"], ["train", "gpt"], ["train", "bert"], ["export"], ["generate"], ["classify"],
            ["eval"], ["serve"], ["client", "classify"]]


@pytest.mark.backend_independent
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "zoo")
def test_every_command_has_help_with_an_example(command):
    result = run_zoo(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if command not in (["train"],):
        assert "Example" in result.stdout


def test_info_reports_the_chosen_backend(backend):
    details = zoo_json("info", backend=backend)
    assert details["backend"] == backend
    assert details["devices"] and details["keras"].startswith("3.")
    assert zoo_json("info", "--backend", "torch")["backend"] == "torch"


def _assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], result.stderr


@pytest.mark.backend_independent
def test_data_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Just a few words of text.\n" * 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    out = tmp_path / "run"
    _assert_one_line_error(run_zoo("train", "gpt", "--data", tmp_path / "missing.txt", "--out", out), "missing.txt", "no such file")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", empty, "--out", out), "empty.txt", "is empty")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", tiny, "--out", out, "--tokenizer", "char"),
                           "fewer than", "--seq-len")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", bad, "--out", out), "line 2", "not a string")


@pytest.mark.backend_independent
def test_flag_errors(tmp_path, small_corpus):
    out = tmp_path / "run"
    _assert_one_line_error(run_zoo("train", "gpt", "--backend", "mxnet", "--out", out), "mxnet")
    _assert_one_line_error(run_zoo("train", "gpt", "--max-steps", "0", "--out", out), "must be positive")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", small_corpus, "--seq-len", "64", "--max-length", "32",
                                   "--out", out), "--seq-len 64 exceeds")
    _assert_one_line_error(run_zoo("train", "gpt", "--resume"), "--resume needs --out")
    _assert_one_line_error(run_zoo("train", "gpt", "--resume", "--out", tmp_path / "nothing"), "not a run directory")


def test_generate_and_export_errors(tmp_path, tiny_run):
    run, bundle = tiny_run
    _assert_one_line_error(run_zoo("generate", tmp_path / "nope", "--prompt", "x"), "no such bundle or run")
    _assert_one_line_error(run_zoo("generate", tmp_path, "--prompt", "x"), "neither a bundle")
    _assert_one_line_error(run_zoo("generate", bundle, "--prompt", "word " * 100, "--max-new-tokens", "4"),
                           "exceeds the model's context of 32")
    _assert_one_line_error(run_zoo("generate", bundle, "--temperature", "-1"), "temperature must be >= 0")
    _assert_one_line_error(run_zoo("generate", bundle, "--top-p", "2"), "top_p must be in (0, 1]")
    _assert_one_line_error(run_zoo("export", run, "--out", bundle), "already exists")
    _assert_one_line_error(run_zoo("export", tmp_path, "--out", tmp_path / "b"), "not a run directory")
    _assert_one_line_error(run_zoo("train", "gpt", "--out", run, *TINY_MODEL), "already exists and is not empty")


def test_generate_from_run_and_bundle_agree(tiny_run):
    run, bundle = tiny_run
    args = ["--prompt", "KING.", "--max-new-tokens", "12", "--temperature", "0"]
    from_bundle, from_run = zoo_json("generate", bundle, *args), zoo_json("generate", run, *args)
    assert from_bundle == from_run
    assert from_bundle["finish_reason"] in ("length", "end_token")
    assert len(from_bundle["token_ids"]) <= 12


def test_generate_truncates_long_prompt_only_when_asked(tiny_run):
    _, bundle = tiny_run
    result = zoo_json("generate", bundle, "--prompt", "word " * 100, "--max-new-tokens", "4", "--temperature", "0",
                      "--truncate-prompt")
    assert result["prompt_tokens"] == 32 - 4


def test_generate_streams_the_prompt_and_continuation(tiny_run):
    _, bundle = tiny_run
    result = run_zoo("generate", bundle, "--prompt", "ROMEO.", "--max-new-tokens", "10", "--seed", "3", check=True)
    assert result.stdout.startswith("ROMEO.")
    sampled = zoo_json("generate", bundle, "--prompt", "ROMEO.", "--max-new-tokens", "10", "--seed", "3")
    assert result.stdout == "ROMEO." + sampled["text"] + "\n"


def test_bundle_is_self_contained(tiny_run):
    _, bundle = tiny_run
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "model.weights.h5", "tokenizer.json", "zoo.json"]
    info = json.loads((bundle / "zoo.json").read_text())
    assert info["kind"] == "gpt" and info["task"] == "generate" and info["max_length"] == 32
    assert info["provenance"]["steps"] == 30 and "val_loss" in info["provenance"]["final_metrics"]
    assert info["special_tokens"]["end"] == "<|endoftext|>"
