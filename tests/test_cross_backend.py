"""A bundle trained on any backend loads on every other with the same logits and greedy text; the
JAX and torch paths work with TensorFlow absent. Each backend runs in its own process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_BERT, TINY_MODEL, TINY_SEQ2SEQ, run_zoo

pytestmark = pytest.mark.cross_backend
BACKENDS = ["jax", "tensorflow", "torch"]
NO_TF = {"PYTHONPATH": str(ROOT / "tests" / "helpers" / "no_tensorflow")}


def zoo_commands(backend, *commands, env=None):
    """Runs `zoo` commands one after another in one process on `backend` (tests/helpers/zoo_commands.py);
    returns its CompletedProcess, after checking that every command succeeded."""
    commands = [[str(arg) for arg in command] for command in commands]
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "zoo_commands.py"), json.dumps(commands)],
                            cwd=ROOT, env={**os.environ, "KERAS_BACKEND": backend, **(env or {})},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, small_corpus):
    """Tiny bundles of every kind (gpt, a bert classifier, seq2seq), each trained and exported on
    each backend (the commands of one backend in one process)."""
    commands = {"gpt": ["gpt", "--data", small_corpus, *TINY_MODEL],
                "bert": ["bert", "--task", "classify", *TINY_BERT, "--vocab-size", "600", "--cased"],
                "seq2seq": ["seq2seq", *TINY_SEQ2SEQ, "--bleu-pairs", "0"]}
    made = {}
    for backend in BACKENDS:
        steps = []
        for kind, command in commands.items():
            run = tmp_path_factory.mktemp(f"{kind}-{backend}") / "run"
            made[(kind, backend)] = run.parent / "bundle"
            steps += [["train", *command, "--out", run, "--max-steps", "20", "--eval-every", "20", "--lr", "3e-3"],
                      ["export", run, "--out", made[(kind, backend)]]]
        zoo_commands(backend, *steps)
    return made


def _probe(backend, paths, env=None):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "probe_bundles.py"), *map(str, paths)],
                            cwd=ROOT, env={**os.environ, "KERAS_BACKEND": backend, **(env or {})},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_bundle_gives_the_same_results_on_every_backend(bundles):
    """gpt and seq2seq: logits within 1e-4 and the same greedy tokens; bert: class probabilities
    within 1e-4 and the same labels; whichever backend trained the bundle."""
    paths = list(bundles.values())
    seen = {backend: _probe(backend, paths) for backend in BACKENDS}
    for (kind, trained_on), path in bundles.items():
        reference = seen[trained_on][str(path)]
        assert reference["backend"] == trained_on
        for backend in BACKENDS:
            other = seen[backend][str(path)]
            where = f"{kind} trained on {trained_on}, loaded on {backend}"
            assert other["backend"] == backend
            np.testing.assert_allclose(other["outputs"], reference["outputs"], atol=1e-4, rtol=0, err_msg=where)
            assert other["answer"] == reference["answer"], where


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_export_generate_without_tensorflow(tmp_path, small_corpus, backend):
    blocked = run_zoo("info", backend="tensorflow", env=NO_TF)
    assert blocked.returncode != 0  # the blocker works: TensorFlow really is unavailable here
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    result = zoo_commands(backend,
                          ["train", "gpt", "--data", small_corpus, "--out", run, *TINY_MODEL, "--max-steps", "5",
                           "--eval-every", "5"],
                          ["export", run, "--out", bundle],
                          ["generate", bundle, "--prompt", "KING.", "--max-new-tokens", "5", "--json"], env=NO_TF)
    assert json.loads(result.stdout.strip().splitlines()[-1])["finish_reason"] in ("length", "end_token")
