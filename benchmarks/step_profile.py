"""Where a step's time goes, on the current backend: a GPT training step (zoo's own step, as `zoo
train` runs it) or a decode step (zoo's engine), timed with and without the backend's profiler, and
the profiler's busiest operations (XLA's thunks or GPU kernels on JAX, torch's operators and CUDA
kernels on torch) per step. For a GPU session's questions that timings alone cannot answer: is the
step waiting on the host (wall time well above the device's busy time) or on a few kernels?

    KERAS_BACKEND=jax python benchmarks/step_profile.py decode --batch 1
    KERAS_BACKEND=torch python benchmarks/step_profile.py train --preset gpt2 --precision bf16 \\
        --batch-size 16 --seq-len 1024
    KERAS_BACKEND=jax python benchmarks/step_profile.py train --preset small --override num_layers=2 \\
        --batch-size 4 --seq-len 64 --precision fp32          # a quick run on a CPU

Random weights and random token ids (vocabulary --vocabulary). JAX's trace is kept in --trace-dir
(open it in Perfetto); torch's table is printed. Needs no TensorFlow.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
if "xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):  # XLA:CPU's thunks in the trace
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import numpy as np  # noqa: E402


def training_step(model, args):
    """`step()`: one update on a fixed random batch, through the step `zoo train` would use."""
    import keras

    from zoo.training.config import TrainConfig
    from zoo.training.loop import compile_for_training

    # xla_on_tensorflow as the GPT family's `zoo train gpt` passes it (zoo/families/gpt/training.py).
    compile_for_training(model, TrainConfig(max_steps=1000, batch_size=args.batch_size, precision=args.precision),
                         xla_on_tensorflow=True)
    step = None
    if keras.backend.backend() == "torch":
        from zoo.families.gpt import torch_training

        step = torch_training.train_step(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocabulary, (args.batch_size, args.seq_len + 1)).astype("int32")
    inputs, targets = ids[:, :-1], ids[:, 1:]
    if step is not None:
        return lambda: float(step(inputs, targets))
    return lambda: float(model.train_on_batch(inputs, targets, return_dict=True)["loss"])


def decode_step(model, args):
    """`step()`: one greedy decode step of --batch rows, through the engine (cache reused, so
    positions advance and wrap at the context's end)."""
    from zoo.engine import new_engine

    engine = new_engine(model)
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, args.vocabulary, (args.batch, 16)).tolist()
    # Compiles the prompts' prefill and this batch's decode at every reach: the positions stepped
    # cross reach buckets (and wrap), and a compile inside the timed steps once tripled the mean.
    engine.warmup(slots=(args.batch,), buckets=(16,))
    cache = engine.new_cache(args.batch)
    for slot, ids in enumerate(prompts):
        _, cache = engine.prefill_slot(cache, slot, ids)
    state = {"cache": cache, "position": 16, "tokens": np.ones(args.batch, "int32")}

    def step():
        if state["position"] >= model.max_length - 1:
            state["position"] = 16
        positions = np.full(args.batch, state["position"], "int32")
        logits, state["cache"] = engine.decode(state["tokens"], state["cache"], positions)
        state["tokens"] = np.asarray(logits).argmax(-1).astype("int32")  # as the engine's host sampling
        state["position"] += 1

    return step


def timed(step, steps):
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def jax_profile(step, steps, trace_dir, top):
    import jax

    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            step()
    path = sorted(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
    trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    by_process = collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and "dur" in e and not e["name"].startswith("$"):  # "$...": Python calls
            # numbered copies of one operation (fusion.12, fusion.13) count as one name
            by_process[processes.get(e["pid"], str(e["pid"]))][re.sub(r"\.\d+$", "", e["name"])] += e["dur"]
    print(f"trace: {path}")
    for process, names in sorted(by_process.items(), key=lambda item: -sum(item[1].values())):
        print(f"\n{process}: {sum(names.values()) / steps / 1e3:.3f} ms of events a step (nested events count twice)")
        for name, micros in names.most_common(top):
            print(f"  {micros / steps / 1e3:9.3f} ms  {name[:110]}")


def torch_profile(step, steps, top):
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    cuda = torch.cuda.is_available()
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    averages = profile.key_averages()
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=top, max_name_column_width=60))
    if cuda:
        busy = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in averages)
        print(f"GPU busy (kernels' own time): {busy / steps / 1e3:.3f} ms a step")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["train", "decode"])
    parser.add_argument("--preset", default="small", help="A GPT preset (nano, small, gpt2, ...).")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a preset field (num_layers=2, dropout=0.0, ...); repeatable.")
    parser.add_argument("--vocabulary", type=int, default=8192)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16",
                        help="Training's precision (decode runs the float32 model).")
    parser.add_argument("--batch-size", type=int, default=64, help="Training examples a step.")
    parser.add_argument("--seq-len", type=int, default=256, help="Training tokens an example.")
    parser.add_argument("--batch", type=int, default=1, help="Decode rows a step.")
    parser.add_argument("--quantize", choices=["int8", "int4"],
                        help="Decode: the model quantized first, as `zoo quantize` does.")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="Steps timed, and steps profiled.")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--trace-dir", help="Where JAX's trace is written (default: a temporary folder).")
    args = parser.parse_args()

    import keras  # after the arguments: --help needs no framework

    from zoo.backend import keep_freed_heap_memory
    from zoo.families.gpt.model import gpt_from_preset
    from zoo.training import accelerator

    overrides = {key: (float(value) if key == "dropout" else int(value))
                 for key, value in (item.split("=", 1) for item in args.override)}
    # As every `zoo` command does: without it JAX's CPU steps fault their temporaries in again each
    # step (a nanoGPT-shaped training step 37-43 ms against 27-30 with it).
    keep_freed_heap_memory(keras.backend.backend())
    keras.utils.set_random_seed(0)
    if args.what == "train":
        precision = accelerator.set_precision(args.precision)
        model = gpt_from_preset(args.preset, args.vocabulary, **overrides)
        step = training_step(model, args)
        shape = f"batch {args.batch_size} x {args.seq_len}, {precision}"
    else:
        model = gpt_from_preset(args.preset, args.vocabulary, **{"dropout": 0.0, **overrides})
        if args.quantize:
            from zoo.layers.quantized import quantize_model

            quantize_model(model, args.quantize)
        step = decode_step(model, args)
        shape = f"batch {args.batch}{', ' + args.quantize if args.quantize else ''}"
    backend = keras.backend.backend()
    print(f"{args.what} step, {backend}, preset {args.preset} {overrides or ''}, {model.count_params() / 1e6:.2f}M "
          f"parameters, {shape}, device {accelerator_device()}")
    for _ in range(args.warmup):
        step()
    print(f"wall: {timed(step, args.steps) * 1e3:.3f} ms a step (each step reads its result on the host), "
          f"mean of {args.steps}")
    if backend == "jax":
        with tempfile.TemporaryDirectory() as tmp:
            jax_profile(step, args.steps, args.trace_dir or tmp, args.top)
    elif backend == "torch":
        torch_profile(step, args.steps, args.top)
    else:
        print("no profiler table for this backend (jax and torch only)")


def accelerator_device():
    from zoo.training.flops import device_name

    return device_name()


if __name__ == "__main__":
    main()
