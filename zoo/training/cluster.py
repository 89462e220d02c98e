"""Training across several processes (on one host or many): data-parallel on JAX.

`zoo train gpt --coordinator HOST:PORT --num-processes N --process-id I` (or Keras's own
variables KERAS_DISTRIBUTION_JOB_ADDRESSES / _NUM_PROCESSES / _PROCESS_ID) starts process I of a
group of N. `join` connects the group with `keras.distribution.initialize` (jax.distributed:
process 0 hosts the coordinator, the collectives run over NCCL on GPUs and Gloo on CPUs); then
the run's DataParallel mesh spans the `--devices` of every process (zoo/training/distribution.py).

Who does what:
- every process builds the same model from the same seed and trains on its own rows of every
  global batch (`ProcessShard`: process I reads rows I*B/N .. (I+1)*B/N of batch B), so the
  maths are one process's with the same `--batch-size`;
- process 0 alone writes config.json, the tokenizer, metrics.jsonl, the checkpoints and the
  progress line; every process reads the run directory on `--resume`, so it must be on a file
  system they all see (the same disk for local processes, NFS or a bucket mount across hosts);
- a stop (Ctrl-C, SIGTERM) on any process is agreed on by all at the end of the step it arrives
  in, so the group stops at one step and process 0 saves that step's checkpoint.

Keras 3 implements `keras.distribution.initialize` for JAX only, so on TensorFlow and torch a
group is refused with that reason.
"""

import dataclasses
import hashlib
import json
import os
import sys

from zoo.errors import ZooError


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where this process is in its group. `coordinator`: process 0's HOST:PORT (or Keras's
    comma-separated list of every process's address, whose first is the coordinator)."""

    coordinator: str | None = None
    num_processes: int = 1
    process_id: int = 0

    def check(self, backend, family):
        """Refuses settings that cannot work, before anything slow happens; `family` names the
        model family when it does not support groups (None when it does)."""
        if self.num_processes < 1:
            raise ZooError(f"--num-processes must be 1 or more, got {self.num_processes}")
        if self.num_processes == 1:
            if self.process_id != 0:
                raise ZooError(f"--process-id {self.process_id} needs --num-processes above it")
            return
        if not 0 <= self.process_id < self.num_processes:
            raise ZooError(f"--process-id must be in [0, {self.num_processes}) for --num-processes "
                           f"{self.num_processes}, got {self.process_id}")
        if not self.coordinator:
            raise ZooError("--num-processes above 1 needs --coordinator HOST:PORT (process 0's address), or "
                           "$KERAS_DISTRIBUTION_JOB_ADDRESSES")
        if backend != "jax":
            raise ZooError(f"--num-processes {self.num_processes}: training across processes uses "
                           f"keras.distribution.initialize, which Keras implements for the JAX backend only (this "
                           f"is {backend}); use --backend jax")
        if family is not None:
            raise ZooError(f"--num-processes {self.num_processes}: multi-process training is built for gpt runs "
                           f"(their evaluation is a loss every process computes); {family} runs train in one "
                           "process")


_joined = Cluster()
PROVENANCE = ("backend", "versions", "command", "created")  # written into config.json by process 0 only


def join(cluster):
    """Connects this process to its group (blocks until every process has joined)."""
    global _joined
    if cluster.num_processes > 1:
        import keras

        # Gloo announces its connections on standard output, which is the run's summary (--json):
        # connect now, with that announcement sent to standard error.
        stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            keras.distribution.initialize(cluster.coordinator, cluster.num_processes, cluster.process_id)
            _multihost().sync_global_devices("joined")
        finally:
            sys.stdout.flush()
            os.dup2(stdout, 1)
            os.close(stdout)
    _joined = cluster


def current():
    return _joined


def is_chief():
    """True in process 0 (and in a run of one process): the process that writes the run's files."""
    return _joined.process_id == 0


def _multihost():
    from jax.experimental import multihost_utils  # imported only in a group, which is JAX only

    return multihost_utils


def wait_for_all(name):
    """A barrier: returns once every process of the group has reached it (at once in one process)."""
    if _joined.num_processes > 1:
        _multihost().sync_global_devices(name)


def any_process(flag):
    """True in every process when `flag` is true in any: a decision the whole group takes together."""
    if _joined.num_processes == 1:
        return bool(flag)
    import numpy as np

    return bool(np.asarray(_multihost().process_allgather(np.int32(bool(flag)))).any())


def check_same(config):
    """Refuses to train when the processes disagree on the run (settings, data, tokenizer size):
    each would otherwise compute a different model and average their gradients silently."""
    if _joined.num_processes == 1:
        return
    import numpy as np

    settled = {k: v for k, v in config.items() if k not in PROVENANCE}
    digest = hashlib.sha256(json.dumps(settled, sort_keys=True, default=str).encode()).digest()
    every = np.asarray(_multihost().process_allgather(np.frombuffer(digest, dtype=np.uint8), tiled=False))
    differing = [i for i, row in enumerate(every) if bytes(row) != bytes(every[0])]
    if differing:
        raise ZooError(f"process {differing[0]} of this group disagrees with process 0 on the run's settings or data: "
                       "start every process with the same flags and data")


class ProcessShard:
    """This process's rows of every global batch of `batches` (see zoo.training.loop.train for
    the interface): rows I*B/N .. (I+1)*B/N of each array. A batches class may read only those rows
    itself with `batch_rows(step, start, stop)` (a memory-mapped corpus then reads 1/N of each
    batch); otherwise the whole batch is made and sliced."""

    def __init__(self, batches, cluster):
        size = batches.batch_size
        if size % cluster.num_processes:
            raise ZooError(f"--batch-size {size} is not a multiple of --num-processes {cluster.num_processes}: "
                           "each process trains on an equal share of every batch")
        share = size // cluster.num_processes
        self.batches, self.start, self.stop = batches, cluster.process_id * share, (cluster.process_id + 1) * share

    def batch(self, step):
        if hasattr(self.batches, "batch_rows"):
            return self.batches.batch_rows(step, self.start, self.stop)
        return _rows(self.batches.batch(step), slice(self.start, self.stop))

    def __getattr__(self, name):  # tokens_per_batch (global: tokens/s counts the group), epoch_of, ...
        return getattr(self.batches, name)


def _rows(data, rows):
    if isinstance(data, dict):
        return {k: _rows(v, rows) for k, v in data.items()}
    if isinstance(data, (tuple, list)):
        return type(data)(_rows(v, rows) for v in data)
    return data if data is None else data[rows]
