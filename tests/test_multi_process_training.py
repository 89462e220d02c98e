"""Multi-process training (zoo/training/cluster.py): real `zoo train gpt` processes on this
machine, joined by keras.distribution.initialize over JAX's CPU collectives, one CPU device each,
against one process with the same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL, run_zoo
from zoo.errors import ZooError
from zoo.training.cluster import Cluster

# Without TensorFlow, as on the GPU machines (and each process starts faster).
ENV = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "helpers" / "no_tensorflow"), str(ROOT)])}


def _train_args(corpus, out, max_steps):
    return ["train", "gpt", "--data", str(corpus), "--out", str(out), *TINY_MODEL, "--tokenizer", "char",
            "--max-steps", str(max_steps), "--eval-every", "3", "--save-every", "2", "--log-every", "1",
            "--lr", "3e-3"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, env=None, extra=()):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args, *extra], cwd=ROOT, env=env or ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _group(args, by_environment=False):
    """Two processes of one group, by flags or by Keras's environment variables."""
    port, processes = _free_port(), []
    for rank in range(2):
        if by_environment:
            env = {**ENV, "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                   "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(rank)}
            processes.append(_start(args, env))
        else:
            processes.append(_start(args, extra=["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                                 "--process-id", str(rank)]))
    return processes


def _finish(processes, timeout=300):
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        results.append((process.returncode, out, err))
    return results


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _curve(run, key):
    return [m[key] for m in _metrics(run) if key in m]


@pytest.mark.cross_backend
def test_two_processes_train_the_curve_of_one_and_resume_as_a_group(tmp_path, small_corpus):
    one, two = tmp_path / "one", tmp_path / "two"
    single = _start(_train_args(small_corpus, one, 6))
    group = _group(_train_args(small_corpus, two, 6))
    (code, _, err), *ranks = _finish([single, *group])
    assert code == 0, err[-3000:]
    for rank, (code, out, err) in enumerate(ranks):
        assert code == 0, f"process {rank}:\n{err[-3000:]}"
    (_, chief_out, chief_err), (_, other_out, other_err) = ranks
    assert "DataParallel over 2 devices in 2 processes" in chief_err
    # Process 0 writes and reports; process 1 only trains.
    assert "step 6/6" in chief_err and f"run {two}: step 6" in chief_out
    assert "step 6/6" not in other_err and other_out == ""
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "step-00000002.npz", "step-00000004.npz", "step-00000006.npz"]
    # The same global batch of 8 rows (4 per process): the same losses, step by step.
    np.testing.assert_allclose(_curve(two, "loss"), _curve(one, "loss"), rtol=1e-5)
    np.testing.assert_allclose(_curve(two, "val_loss"), _curve(one, "val_loss"), rtol=1e-5)
    assert len(_curve(one, "loss")) == 6 and len(_curve(one, "val_loss")) == 2

    # A group killed after its step-4 checkpoint resumes from it, every process restoring it
    # (here joined by Keras's environment variables): the curve is still the one process's.
    (two / "checkpoints" / "step-00000006.npz").unlink()
    resumed = _finish(_group(_train_args(small_corpus, two, 6) + ["--resume"], by_environment=True))
    for rank, (code, _, err) in enumerate(resumed):
        assert code == 0, f"process {rank}:\n{err[-3000:]}"
        assert "resumed from" in err and "step-00000004.npz" in err
    assert [m["step"] for m in _metrics(two) if "loss" in m] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(_curve(two, "loss"), _curve(one, "loss"), rtol=1e-5)
    np.testing.assert_allclose(_curve(two, "val_loss"), _curve(one, "val_loss"), rtol=1e-5)


@pytest.mark.cross_backend
def test_a_stop_in_one_process_stops_the_group_at_one_step_with_a_checkpoint(tmp_path, small_corpus):
    run = tmp_path / "run"
    group = _group(_train_args(small_corpus, run, 100_000))
    deadline = time.monotonic() + 600  # generous: the other xdist worker trains on the same 2 cores
    while not ((run / "metrics.jsonl").is_file() and len(_metrics(run)) >= 2):
        if time.monotonic() > deadline or any(p.poll() is not None for p in group):
            for p in group:
                p.kill()
            logs = "\n".join(p.communicate()[1][-2000:] for p in group)
            raise AssertionError(f"the group did not train:\n{logs}")
        time.sleep(0.2)
    group[1].send_signal(signal.SIGTERM)  # process 1 only: process 0 learns of it from the group
    (chief_code, _, chief_err), (other_code, _, other_err) = _finish(group, timeout=120)
    assert (chief_code, other_code) == (130, 130), chief_err[-2000:] + other_err[-2000:]
    assert "SIGTERM: stopping after this step" in other_err
    stopped_at = _metrics(run)[-1]["step"]
    assert f"saved a checkpoint at step {stopped_at}; continue with --resume" in chief_err
    assert (run / "checkpoints" / f"step-{stopped_at:08d}.npz").is_file()


@pytest.mark.backend_independent
def test_groups_are_refused_where_they_cannot_work(tmp_path, small_corpus):
    no_coordinator = run_zoo(*_train_args(small_corpus, tmp_path / "a", 1), "--num-processes", "2")
    assert no_coordinator.returncode != 0 and "needs --coordinator HOST:PORT" in no_coordinator.stderr
    bad_rank = run_zoo(*_train_args(small_corpus, tmp_path / "b", 1), "--num-processes", "2", "--process-id", "2",
                       "--coordinator", "127.0.0.1:1")
    assert bad_rank.returncode != 0 and "--process-id must be in [0, 2)" in bad_rank.stderr
    other_family = run_zoo("train", "bert", "--out", tmp_path / "c", "--num-processes", "2",
                           "--coordinator", "127.0.0.1:1")
    assert other_family.returncode != 0 and "built for gpt runs" in other_family.stderr
    assert not any((tmp_path / name).exists() for name in "abc")  # refused before anything is written
    for backend in ("tensorflow", "torch"):  # checked before the backend is imported
        with pytest.raises(ZooError, match=f"JAX backend only \\(this is {backend}\\)"):
            Cluster("127.0.0.1:1", 2, 1).check(backend, None)
