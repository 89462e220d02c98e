"""The training loop: a plain loop over `model.train_on_batch`, nanoGPT style.

`train_on_batch` gives each backend its compiled step (XLA on JAX and TensorFlow, torch.compile on
torch with `--jit-compile on`) while the loop keeps what `fit` makes awkward: a step counter that
is the number of optimizer updates (so the schedule and the data position resume exactly),
evaluation and checkpoints at any step, and Ctrl-C handled between updates, never half-way
through one. A family may give its own step instead (`train(train_step=...)`: the GPT's plain-torch
forward pass on torch, zoo.families.gpt.torch_training), which must update the model exactly as
`train_on_batch` would.

Nothing in the loop waits for the device except what it logs: a step's loss is read back (a host
sync) only at the steps that write a metrics line, and the logged learning rate is computed in
Python (`WarmupCosineDecay.value`), not with the backend's eager ops at every logged step.

With `--grad-accum N`, an update is N batches: Keras's AdamW(gradient_accumulation_steps=N) sums
their gradients and applies the mean on the Nth, and the loop feeds batch indices step*N .. step*N+N-1,
which are exactly the rows of batch `step` at N times the batch size. The LR schedule is indexed
by updates (`_PerUpdate`); Adam's bias correction already is.
"""

import json
import math
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np

from zoo.atomic import atomic_write_text
from zoo.training import cluster
from zoo.training.checkpoints import checkpoint_step, latest_checkpoint, restore_checkpoint, save_checkpoint

_JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


class _PerUpdate(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule over updates, for an optimizer that counts micro-batches: Keras evaluates the
    learning rate at its raw counter, which with gradient accumulation advances N per update."""

    def __init__(self, schedule, micro_steps):
        self.schedule, self.micro_steps = schedule, micro_steps

    def __call__(self, step):
        return self.schedule(keras.ops.floor_divide(step, self.micro_steps))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "micro_steps": self.micro_steps}


class WarmupCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras's CosineDecay with warmup, with the warmup-or-decay choice made by `ops.where` instead of
    `ops.cond`; the same values.

    Why: on JAX an eager `ops.cond` traces its two branch closures afresh and compiles them on
    every call (about 0.1 s on a CPU, each time), while `where` is elementwise ops that compile
    once. Both branches are finite at every step, so computing both costs nothing else. `value`
    is the same schedule in NumPy float32 scalars, for logging without the backend's eager ops.
    """

    def value(self, step):
        """The learning rate at `step` as a Python float, computed as `__call__` computes it (float32)."""
        f32 = np.float32
        initial, decay_steps = f32(self.initial_learning_rate), f32(self.decay_steps)
        step = f32(step)

        def decay(step, decay_from):
            cosine = f32(0.5) * (f32(1.0) + np.cos(f32(math.pi) * (step / decay_steps)))
            return float(decay_from * ((f32(1) - f32(self.alpha)) * cosine + f32(self.alpha)))

        if self.warmup_target is None:
            return decay(min(step, decay_steps), initial)
        target, warmup_steps = f32(self.warmup_target), f32(self.warmup_steps)
        step = min(step, decay_steps + warmup_steps)
        if step < warmup_steps:
            return float((target - initial) * (step / warmup_steps) + initial)
        return decay(step - warmup_steps, target)

    def __call__(self, step):
        if self.warmup_target is None:  # no cond on this path
            return super().__call__(step)
        ops = keras.ops
        initial_learning_rate = ops.convert_to_tensor(self.initial_learning_rate)
        dtype = initial_learning_rate.dtype
        decay_steps, warmup_steps = ops.cast(self.decay_steps, dtype), ops.cast(self.warmup_steps, dtype)
        warmup_target = ops.cast(self.warmup_target, dtype)
        step = ops.minimum(ops.cast(step, dtype), decay_steps + warmup_steps)
        warming = self._warmup_function(step, warmup_steps, warmup_target, initial_learning_rate)
        decaying = self._decay_function(step - warmup_steps, decay_steps, warmup_target, dtype)
        return ops.where(step < warmup_steps, warming, decaying)


def resolve_jit_compile(setting, xla_on_tensorflow=False):
    """`model.compile`'s jit_compile for a `--jit-compile` setting. "auto" is Keras's choice (XLA on
    JAX, and on TensorFlow with a GPU; torch eager), except that with `xla_on_tensorflow` (a family
    whose step XLA makes faster on a CPU too) TensorFlow always gets XLA."""
    if setting == "auto" and xla_on_tensorflow and keras.backend.backend() == "tensorflow":
        return True
    return _JIT_COMPILE[setting]


def compile_for_training(model, config, loss=None, metrics=None, learning_rate=None, xla_on_tensorflow=False):
    """AdamW with linear warmup then cosine decay, global-norm gradient clipping, decoupled weight
    decay, `config.grad_accum` batches per update. Returns the schedule, indexed by update.

    `loss` defaults to next-token cross-entropy on logits; a family passes its own (and metrics).
    Under mixed_float16 Keras's compile wraps the optimizer in a LossScaleOptimizer (dynamic loss
    scaling); an update whose gradients overflow is skipped and the scale halved. `learning_rate`
    (a float) replaces the schedule: the optimizer's rate is then a variable that its caller sets
    between steps (`model.optimizer.learning_rate = ...`), to schedule by time, say.

    `xla_on_tensorflow`: `--jit-compile auto` compiles TensorFlow's step with XLA on a CPU too
    (Keras leaves XLA off there). For the GPT, XLA's step on the 2-core CPU took 0.73x the time of
    TensorFlow's graph without it (nanoGPT's CPU configuration), for about 7 s more compilation.
    """
    warmup = config.resolved_warmup()
    schedule = WarmupCosineDecay(
        initial_learning_rate=config.learning_rate / (warmup + 1), decay_steps=max(config.max_steps - warmup, 1),
        alpha=config.min_learning_rate_ratio, warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup)
    accum = config.grad_accum if config.grad_accum > 1 else None
    if learning_rate is None:
        learning_rate = _PerUpdate(schedule, accum) if accum else schedule
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=config.weight_decay,
        beta_1=0.9, beta_2=config.beta_2, global_clipnorm=config.grad_clip or None,
        gradient_accumulation_steps=accum)
    # Like GPT-2: no decay on biases and LayerNorm scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer, loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics, jit_compile=resolve_jit_compile(config.jit_compile, xla_on_tensorflow))
    model.optimizer.build(model.trainable_variables)
    return schedule


class _StopRequests:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.requested = None

    def __enter__(self):
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._previous:
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested}: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class _Progress:
    """One status line: step, loss, lr, tokens/s, elapsed, ETA (rewritten in place on a terminal).

    Written here because keras.utils.Progbar's ETA assumes a count from zero, wrong after a resume.
    """

    def __init__(self, max_steps, start_step, stream=sys.stderr):
        self.max_steps, self.stream = max_steps, stream
        self.tty = stream.isatty()
        self.start_time = time.time()
        self.mark_time, self.mark_step = self.start_time, start_step
        self.recent_step_time = None

    def rate(self, step, tokens_per_step):
        now = time.time()
        steps = step - self.mark_step
        step_time = (now - self.mark_time) / steps if steps else float("nan")
        self.recent_step_time = step_time
        self.mark_time, self.mark_step = now, step
        return tokens_per_step / step_time if steps else 0.0

    def show(self, step, text, final=False):
        elapsed = time.time() - self.start_time
        eta = (self.max_steps - step) * (self.recent_step_time or 0.0)
        line = f"step {step}/{self.max_steps} {text} | {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        if self.tty and not final:
            self.stream.write("\r\x1b[K" + line)
        else:
            self.stream.write(("\r\x1b[K" if self.tty else "") + line + "\n")
        self.stream.flush()


def learning_rate_at(schedule, update):
    """The rate of update `update` (from 0) as a Python float: in Python for zoo's own schedule (no
    eager ops), else as the schedule computes it."""
    if isinstance(schedule, WarmupCosineDecay):
        return schedule.value(update)
    return float(schedule(update))


def _clock(seconds):
    seconds = int(seconds) if math.isfinite(seconds) else 0
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _drop_metrics_after(path, step):
    """A run killed after its last checkpoint logged steps that the resumed run will redo."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _keras_step(model):
    def step(*data):
        return model.train_on_batch(*data, return_dict=True)["loss"]

    return step


def train(model, schedule, batches, validation, evaluate, config, run_dir, resume=False, throughput=None,
          train_step=None):
    """Trains `model` (compiled by `compile_for_training`) until `config.max_steps` updates.

    `batches.batch(i)` gives the (inputs, targets[, sample_weight]) of batch i, a pure function of
    i so that a resumed run sees the same data (update `step` trains on batches step*N .. step*N+N-1
    for `config.grad_accum` N); `batches.tokens_per_batch` counts the tokens of one batch, for
    tokens/s; `batches.epoch_of(i)` the epochs done after i batches. `evaluate(model)` returns the
    validation metrics ({"val_loss": ..., ...}). `throughput` (a `zoo.training.flops.Throughput`)
    adds MFU to the log. `train_step(*batch)` trains on one batch and returns its loss (anything
    `float` takes; read only at logged steps); default `model.train_on_batch`. Writes
    `run_dir/metrics.jsonl` and `run_dir/checkpoints/` (process 0 of a multi-process group; every
    process trains and reads the checkpoint it resumes). With `resume`,
    continues from the newest checkpoint. Returns a summary dict; `summary["stopped"]` names the
    signal when one ended the run early.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    train_step = train_step or _keras_step(model)
    chief = cluster.is_chief()  # process 0 of a multi-process run writes the files; the others only train
    step = 0
    if resume and (path := latest_checkpoint(checkpoints)) is not None:
        restore_checkpoint(path, model)
        # The checkpoint's step, not the optimizer's counter: under fp16 an update skipped for an
        # overflow does not advance the counter, but its data was consumed all the same.
        step = checkpoint_step(path)
        print(f"resumed from {path}", file=sys.stderr)
    if chief:
        _drop_metrics_after(run_dir / "metrics.jsonl", step)
    accum = max(config.grad_accum, 1)
    tokens_per_step = batches.tokens_per_batch * accum
    summary = {"start_step": step, "stopped": None}
    last = {}
    started = time.time()

    # One batch ahead on a worker thread, so that assembling it (and any page faults on a
    # memory-mapped corpus) overlaps the device's step instead of delaying the next one.
    with open(run_dir / "metrics.jsonl" if chief else os.devnull, "a", encoding="utf-8") as metrics, \
            _StopRequests() as stop, ThreadPoolExecutor(1, thread_name_prefix="zoo-batches") as prefetch:
        progress = _Progress(config.max_steps, step, stream=sys.stderr if chief else metrics)
        upcoming = prefetch.submit(batches.batch, step * accum)
        # The loop ends on the stop the group agreed on, never on this process's own flag: a signal
        # landing after the agreement would otherwise leave the other processes waiting in the next
        # step's collectives for one that has gone.
        stopping = None
        while step < config.max_steps and not stopping:
            losses = []
            for micro in range(accum):
                data = upcoming.result()
                upcoming = prefetch.submit(batches.batch, step * accum + micro + 1)
                losses.append(train_step(*data))
            step += 1
            if cluster.any_process(stop.requested):  # every process stops at this step
                stopping = stop.requested or "a stop in another process"
            is_last = step == config.max_steps
            record = {}
            evaluating = step % config.eval_every == 0 or is_last
            if step % config.log_every == 0 or evaluating or stopping:
                tokens_per_s = progress.rate(step, tokens_per_step)
                record = {"step": step, "loss": sum(map(float, losses)) / accum,
                          "lr": learning_rate_at(schedule, step - 1), "tokens_per_s": round(tokens_per_s, 1),
                          "epoch": round(batches.epoch_of(step * accum), 3)}
                if throughput is not None and (mfu := throughput.mfu(tokens_per_s)) is not None:
                    record["mfu"] = round(mfu, 4)
            if evaluating:
                record.update(evaluate(model))
                progress.mark_time = time.time()  # evaluation time is not training throughput
            if record:
                record["elapsed_s"] = round(time.time() - started, 2)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                last.update(record)
                text = f"loss {last.get('loss', float('nan')):.4f} lr {last.get('lr', 0):.2e} {last.get('tokens_per_s', 0):,.0f} tok/s"
                if "mfu" in last:
                    text += f" MFU {last['mfu']:.1%}"
                if evaluating:
                    text += " | " + " ".join(f"{k} {v:.4f}" for k, v in record.items()
                                             if k.startswith("val_") and isinstance(v, float))
                progress.show(step, text, final=evaluating)
            if chief and (step % config.save_every == 0 or is_last or stopping):
                save_checkpoint(checkpoints, model, step)
    if chief and stopping and step < config.max_steps:
        print(f"saved a checkpoint at step {step}; continue with --resume", file=sys.stderr)
    summary.update(step=step, stopped=stopping if step < config.max_steps else None,
                   wall_s=round(time.time() - started, 1),
                   **{k: v for k, v in last.items() if k in ("loss", "tokens_per_s", "mfu") or k.startswith("val_")})
    return summary
