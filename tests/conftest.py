"""Shared fixtures. The suite runs once per backend (KERAS_BACKEND, set by `make test`); tests
marked cross_backend start their own process per backend."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "zoo" / "data" / "corpora" / "shakespeare.txt"

# A model small enough that a training step takes milliseconds on a CPU.
TINY_MODEL = ["--num-layers", "2", "--num-heads", "2", "--hidden-dim", "32", "--intermediate-dim", "64",
              "--max-length", "32", "--vocab-size", "300", "--batch-size", "8"]


def run_zoo(*args, backend=None, env=None, timeout=600, check=False, input=None):
    """Runs the real `zoo` command in a subprocess (`input`: the text on its standard input);
    returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    if backend:
        full_env["KERAS_BACKEND"] = backend
    result = subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, env=full_env,
                            capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"zoo {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def zoo_json(*args, **kwargs):
    return json.loads(run_zoo(*args, "--json", check=True, **kwargs).stdout)


@pytest.fixture(scope="session")
def backend():
    return os.environ["KERAS_BACKEND"]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """The first ~150 KB of the shipped corpus: real text, quick to tokenize."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(CORPUS.read_text(encoding="utf-8")[:150_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, small_corpus, backend):
    """A tiny GPT trained for 30 steps through the real CLI on this backend, and its bundle."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run_zoo("train", "gpt", "--data", small_corpus, "--out", run, *TINY_MODEL, "--max-steps", "30",
            "--eval-every", "15", "--lr", "3e-3", check=True)
    bundle = run.parent / "tiny-bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle


# A BERT small enough to train in seconds.
TINY_BERT = ["--num-layers", "2", "--num-heads", "2", "--hidden-dim", "32", "--intermediate-dim", "64",
             "--max-length", "64", "--batch-size", "32"]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, backend):
    """A tiny BERT language-identification classifier trained from scratch on the shipped data through
    the real CLI on this backend (150 steps, width 64), its bundle, and the training summary."""
    run = tmp_path_factory.mktemp("bert") / "classifier"
    # Twice TINY_BERT's width: enough to beat the majority class by a wide margin in 150 steps.
    summary = zoo_json("train", "bert", "--task", "classify", "--out", run, *TINY_BERT, "--hidden-dim", "64",
                       "--intermediate-dim", "128", "--vocab-size", "1000", "--cased", "--max-steps", "150",
                       "--eval-every", "75", "--lr", "3e-3")
    bundle = run.parent / "classifier-bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle, summary


# A seq2seq model small enough to train in seconds.
TINY_SEQ2SEQ = ["--num-encoder-layers", "1", "--num-decoder-layers", "1", "--num-heads", "2", "--hidden-dim", "64",
                "--intermediate-dim", "128", "--max-source-length", "48", "--max-target-length", "48",
                "--vocab-size", "800", "--batch-size", "32"]


@pytest.fixture(scope="session")
def tiny_copier(tmp_path_factory, backend):
    """A tiny seq2seq model trained through the real CLI on this backend to copy sentences (2,000
    pairs written as a .tsv here; 150 steps, BLEU scored on 20 validation pairs), its bundle, and
    the training summary. A task it learns: its BLEU is far from 0 (100 on jax and torch when written)."""
    base = tmp_path_factory.mktemp("copier")
    data = base / "copy.tsv"
    data.write_text("".join(f"{s}\t{s}\n" for s in copy_sentences(2000, seed=0)), encoding="utf-8")
    run = base / "copier"
    summary = zoo_json("train", "seq2seq", "--data", data, "--out", run, *TINY_SEQ2SEQ, "--max-source-length", "16",
                       "--max-target-length", "16", "--vocab-size", "300", "--max-steps", "150", "--eval-every", "75",
                       "--lr", "3e-3", "--bleu-pairs", "20")
    bundle = base / "copier-bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle, summary
