"""The training loop: a plain loop over `model.train_on_batch`, nanoGPT style.

`train_on_batch` gives each backend its compiled step (XLA on JAX and TensorFlow) while the loop
keeps what `fit` makes awkward: a step counter that *is* the optimizer's (so the schedule and the
data position resume exactly), evaluation and checkpoints at any step, and Ctrl-C handled between
steps, never half-way through a variable update.
"""

import json
import math
import signal
import sys
import time
from pathlib import Path

import keras

from zoo.atomic import atomic_write_text
from zoo.training.checkpoints import latest_checkpoint, restore_checkpoint, save_checkpoint


def set_precision(precision):
    """Sets the global dtype policy; call before building the model."""
    policies = {"fp32": "float32", "bf16": "mixed_bfloat16"}
    keras.config.set_dtype_policy(policies[precision])


def compile_for_training(model, config, loss=None, metrics=None):
    """AdamW with linear warmup then cosine decay, gradient clipping, decoupled weight decay.

    `loss` defaults to next-token cross-entropy on logits; a family passes its own (and metrics).
    """
    warmup = config.resolved_warmup()
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / (warmup + 1), decay_steps=max(config.max_steps - warmup, 1),
        alpha=config.min_learning_rate_ratio, warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay, beta_1=0.9,
                                       beta_2=config.beta_2, clipnorm=config.grad_clip or None)
    # Like GPT-2: no decay on biases and LayerNorm scales/offsets.
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    model.compile(optimizer=optimizer, loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=metrics)
    optimizer.build(model.trainable_variables)
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


def train(model, schedule, batches, validation, evaluate, config, run_dir, resume=False):
    """Trains `model` (compiled by `compile_for_training`) until `config.max_steps`.

    `batches.batch(step)` gives the (inputs, targets[, sample_weight]) of a step, a pure function
    of the step so that a resumed run sees the same data; `batches.tokens_per_batch` counts the
    tokens a step trains on, for tokens/s. `evaluate(model)` returns the validation metrics
    ({"val_loss": ..., ...}). Writes `run_dir/metrics.jsonl` and `run_dir/checkpoints/`. With
    `resume`, continues from the newest checkpoint. Returns a summary dict;
    `summary["stopped"]` names the signal when one ended the run early.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / "checkpoints"
    if resume and (path := latest_checkpoint(checkpoints)) is not None:
        restore_checkpoint(path, model)
        print(f"resumed from {path}", file=sys.stderr)
    step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    _drop_metrics_after(run_dir / "metrics.jsonl", step)
    tokens_per_step = batches.tokens_per_batch
    progress = _Progress(config.max_steps, step)
    summary = {"start_step": step, "stopped": None}
    last = {}
    started = time.time()

    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics, _StopRequests() as stop:
        while step < config.max_steps and not stop.requested:
            logs = model.train_on_batch(*batches.batch(step), return_dict=True)
            step += 1
            is_last = step == config.max_steps
            record = {}
            evaluating = step % config.eval_every == 0 or is_last
            if step % config.log_every == 0 or evaluating or stop.requested:
                record = {"step": step, "loss": float(logs["loss"]), "lr": float(schedule(step - 1)),
                          "tokens_per_s": round(progress.rate(step, tokens_per_step), 1),
                          "epoch": round(batches.epoch_of(step), 3)}
            if evaluating:
                record.update(evaluate(model))
                progress.mark_time = time.time()  # evaluation time is not training throughput
            if record:
                record["elapsed_s"] = round(time.time() - started, 2)
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                last.update(record)
                text = f"loss {last.get('loss', float('nan')):.4f} lr {last.get('lr', 0):.2e} {last.get('tokens_per_s', 0):,.0f} tok/s"
                if evaluating:
                    text += " | " + " ".join(f"{k} {v:.4f}" for k, v in record.items()
                                             if k.startswith("val_") and isinstance(v, float))
                progress.show(step, text, final=evaluating)
            if step % config.save_every == 0 or is_last or stop.requested:
                save_checkpoint(checkpoints, model, step)
    if stop.requested and step < config.max_steps:
        print(f"saved a checkpoint at step {step}; continue with --resume", file=sys.stderr)
    summary.update(step=step, stopped=stop.requested if step < config.max_steps else None,
                   wall_s=round(time.time() - started, 1),
                   **{k: v for k, v in last.items() if k == "loss" or k.startswith("val_")})
    return summary
