"""A bundle trained on any backend loads on every other with the same logits and greedy text; the
JAX and torch paths work with TensorFlow absent. Each backend runs in its own process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_BERT, TINY_LSTM, TINY_MODEL, TINY_SEQ2SEQ, made_once, run_zoo

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


# The families checked, and the `zoo train` arguments of each one's tiny model.
TRAIN = {"gpt": ["gpt", "--data", "{corpus}", *TINY_MODEL],
         "bert": ["bert", "--task", "classify", *TINY_BERT, "--vocab-size", "600", "--cased"],
         "seq2seq": ["seq2seq", *TINY_SEQ2SEQ, "--bleu-pairs", "0"],
         "lstm": ["lstm", "--data", "{corpus}", *TINY_LSTM]}


def _selected_kinds(request):
    """The families whose agreement test this session runs (all of them, or those `-k` keeps)."""
    return [kind for kind in TRAIN if any(
        item.module is request.module and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("kind") == kind for item in request.session.items)]


def _probe(backend, paths, env=None):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "probe_bundles.py"), *map(str, paths)],
                            cwd=ROOT, env={**os.environ, "KERAS_BACKEND": backend, **(env or {})},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _train_and_probe(kinds, directory, corpus):
    """Tiny bundles of `kinds`, each trained and exported on each backend (the commands of one
    backend in one process), and what each computes on each backend (a process per backend):
    {kind: {trained_on: {loaded_on: probe}}}."""
    made = {}
    for backend in BACKENDS:
        steps = []
        for kind in kinds:
            command = [str(corpus) if arg == "{corpus}" else arg for arg in TRAIN[kind]]
            run = directory / f"{kind}-{backend}" / "run"
            made[(kind, backend)] = run.parent / "bundle"
            steps += [["train", *command, "--out", run, "--max-steps", "20", "--eval-every", "20", "--lr", "3e-3"],
                      ["export", run, "--out", made[(kind, backend)]]]
        zoo_commands(backend, *steps)
    seen = {backend: _probe(backend, made.values()) for backend in BACKENDS}
    return {kind: {trained_on: {backend: seen[backend][str(made[(kind, trained_on)])] for backend in BACKENDS}
                   for trained_on in BACKENDS} for kind in kinds}


@pytest.fixture(scope="module")
def probed(request, tmp_path_factory, small_corpus):
    """`_train_and_probe` of the kinds this session checks, made once per session (conftest's
    `made_once`)."""
    kinds = _selected_kinds(request)
    return made_once(tmp_path_factory, f"cross-backend-{'-'.join(kinds)}",
                     lambda directory: _train_and_probe(kinds, directory, small_corpus))


@pytest.mark.parametrize("kind", list(TRAIN))
def test_every_bundle_gives_the_same_results_on_every_backend(probed, kind):
    """gpt, seq2seq and lstm: logits within 1e-4 and the same greedy tokens; bert: class
    probabilities within 1e-4 and the same labels; whichever backend trained the bundle."""
    for trained_on, loaded in probed[kind].items():
        reference = loaded[trained_on]
        assert reference["backend"] == trained_on
        for backend, other in loaded.items():
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
