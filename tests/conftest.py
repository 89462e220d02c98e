"""Shared fixtures. The suite runs once per backend (KERAS_BACKEND, set by `make test`); tests
marked cross_backend start their own process per backend."""

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores (`make test`): one OpenMP thread each, for the processes they start
    # too. With a thread per core in each, torch's OpenMP threads spin-wait on cores the other
    # worker holds: the torch part of the suite took 295 s with them and 136 s without.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# JAX's persistent compilation cache, for this session and the processes it starts: the suite
# compiles the same tiny programs in many processes (each `zoo generate` of one bundle compiles the
# same decode steps), and a program compiled once is then read back by its HLO's hash: a `zoo`
# subprocess on JAX takes ~40% less time. A session gets its own directory (keyed by content, a
# cache cannot give another program; it is emptied when the session ends).
_JAX_CACHE = tempfile.TemporaryDirectory(prefix="zoo-tests-jax-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE.name)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "zoo" / "data" / "corpora" / "shakespeare.txt"

# A model small enough that a training step takes milliseconds on a CPU.
TINY_MODEL = ["--num-layers", "2", "--num-heads", "2", "--hidden-dim", "32", "--intermediate-dim", "64",
              "--max-length", "32", "--vocab-size", "300", "--batch-size", "8"]


def _backend_flag(args):
    """The backend `--backend X` or `--backend=X` names in `args`, else None."""
    for i, arg in enumerate(args):
        if arg == "--backend" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    return None


def _run_zoo_here(args, input):
    """`zoo ARGS` in this process through click's test runner, as a CompletedProcess: its exit
    status, standard output and error; an exception the command let escape is written to stderr
    as a traceback with status 1, as Python does."""
    from click.testing import CliRunner

    from cli.main import cli

    argv, sys.argv = sys.argv, ["zoo", *args]  # what a run records as its command
    try:
        result = CliRunner().invoke(cli, args, input=input, prog_name="zoo")
    finally:
        sys.argv = argv
    stderr, code = result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
        code = 1
    return subprocess.CompletedProcess(["zoo", *args], code, result.stdout, stderr)


def run_zoo(*args, backend=None, env=None, timeout=600, check=False, input=None, own_process=False):
    """Runs the real `zoo` command (`input`: the text on its standard input); returns a
    CompletedProcess.

    In this process, through click's test runner, where that runs the same thing: on this
    session's backend and with this environment. A `zoo` subprocess pays 5 to 10 s of imports on a
    2-core machine, which was most of the suite's time. In its own process with `own_process`
    (signals, exit on a kill, file-descriptor-level stderr), for another backend (`backend`, or a
    `--backend` flag naming one), or with `env`.
    """
    args = [str(arg) for arg in args]
    here = os.environ["KERAS_BACKEND"]
    if not own_process and not env and backend in (None, here) and _backend_flag(args) in (None, here):
        result = _run_zoo_here(args, input)
    else:
        full_env = {**os.environ, **(env or {})}
        if backend:
            full_env["KERAS_BACKEND"] = backend
        result = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=full_env,
                                capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"zoo {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def checkpoint_variant(source, target, drop=(), config=None):
    """`target`: a copy of the checkpoint directory `source` (links to its files) less the files
    named in `drop`, with `config` (a dict) merged into its config.json."""
    target.mkdir()
    for file in source.iterdir():
        if file.name not in drop:
            (target / file.name).symlink_to(file)
    if config is not None:
        (target / "config.json").unlink()
        (target / "config.json").write_text(json.dumps({**json.loads((source / "config.json").read_text()), **config}))
    return target


def zoo_json(*args, **kwargs):
    return json.loads(run_zoo(*args, "--json", check=True, **kwargs).stdout)


def made_once(tmp_path_factory, name, make):
    """What `make(directory)` returns (JSON data), made once per test session: under pytest-xdist
    (`make test` runs two workers) the first worker to ask makes it, under a lock in the directory
    the workers share, and the others read it back (pytest-xdist's recipe for a fixture made once):
    a model trained once, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    saved, directory = shared / f"{name}.json", shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not saved.is_file():
            shutil.rmtree(directory, ignore_errors=True)  # what a worker that failed here left
            directory.mkdir()
            saved.write_text(json.dumps(make(directory)))
    return json.loads(saved.read_text())


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
    def make(directory):
        run, bundle = directory / "tiny", directory / "tiny-bundle"
        run_zoo("train", "gpt", "--data", small_corpus, "--out", run, *TINY_MODEL, "--max-steps", "30",
                "--eval-every", "15", "--lr", "3e-3", check=True)
        run_zoo("export", run, "--out", bundle, check=True)
        return [str(run), str(bundle)]

    return tuple(map(Path, made_once(tmp_path_factory, "tiny_run", make)))


# An LSTM language model of TINY_MODEL's size.
TINY_LSTM = ["--num-layers", "2", "--hidden-dim", "32", "--embedding-dim", "32", "--max-length", "32",
             "--vocab-size", "300", "--batch-size", "8"]


# A BERT small enough to train in seconds.
TINY_BERT = ["--num-layers", "2", "--num-heads", "2", "--hidden-dim", "32", "--intermediate-dim", "64",
             "--max-length", "64", "--batch-size", "32"]


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, backend):
    """A tiny BERT language-identification classifier trained from scratch on the shipped data through
    the real CLI on this backend (150 steps, width 64), its bundle, and the training summary."""
    def make(directory):
        run, bundle = directory / "classifier", directory / "classifier-bundle"
        # Twice TINY_BERT's width: enough to beat the majority class by a wide margin in 150 steps.
        summary = zoo_json("train", "bert", "--task", "classify", "--out", run, *TINY_BERT, "--hidden-dim", "64",
                           "--intermediate-dim", "128", "--vocab-size", "1000", "--cased", "--max-steps", "150",
                           "--eval-every", "75", "--lr", "3e-3")
        run_zoo("export", run, "--out", bundle, check=True)
        return [str(run), str(bundle), summary]

    run, bundle, summary = made_once(tmp_path_factory, "tiny_classifier", make)
    return Path(run), Path(bundle), summary


# A seq2seq model small enough to train in seconds.
TINY_SEQ2SEQ = ["--num-encoder-layers", "1", "--num-decoder-layers", "1", "--num-heads", "2", "--hidden-dim", "64",
                "--intermediate-dim", "128", "--max-source-length", "48", "--max-target-length", "48",
                "--vocab-size", "800", "--batch-size", "32"]


COPY_WORDS = ("red blue green black white cat dog bird fish cow sun moon star tree rock one two three four five "
              "big small old new").split()


def copy_sentences(count, seed):
    """Sentences of 2 to 5 words of COPY_WORDS: the copy task of `tiny_copier`."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(COPY_WORDS, k=rng.randint(2, 5))) for _ in range(count)]


@pytest.fixture(scope="session")
def tiny_copier(tmp_path_factory, backend):
    """A tiny seq2seq model trained through the real CLI on this backend to copy sentences (2,000
    pairs written as a .tsv here; 250 steps, BLEU scored on 20 validation pairs), its bundle, and
    the training summary. A task it learns: BLEU 100 on every backend. At 150 steps it was on the
    edge: the validation BLEU ran 62-100 over seeds 0-3 on the three backends (the initial weights
    are each backend's own draws), and TensorFlow's seed 0 scored 31 on the CLI test's sentences;
    at 250 steps the weakest of those runs score 100."""
    def make(directory):
        data, run, bundle = directory / "copy.tsv", directory / "copier", directory / "copier-bundle"
        data.write_text("".join(f"{s}\t{s}\n" for s in copy_sentences(2000, seed=0)), encoding="utf-8")
        summary = zoo_json("train", "seq2seq", "--data", data, "--out", run, *TINY_SEQ2SEQ, "--max-source-length",
                           "16", "--max-target-length", "16", "--vocab-size", "300", "--max-steps", "250",
                           "--eval-every", "125", "--lr", "3e-3", "--bleu-pairs", "20")
        run_zoo("export", run, "--out", bundle, check=True)
        return [str(run), str(bundle), summary]

    run, bundle, summary = made_once(tmp_path_factory, "tiny_copier", make)
    return Path(run), Path(bundle), summary
