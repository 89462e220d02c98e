"""Training throughput (tokens/s) of zoo's GPT presets on each backend, side by side.

Each (preset, backend) pair runs in its own process with the real training step (zoo's AdamW
setup and `train_on_batch`, as `zoo train` uses), on random tokens, after warm-up steps that
absorb compilation. Prints one table with each backend's ratio to the fastest for that preset.

    python benchmarks/train_throughput.py                       # nano and small, all backends
    python benchmarks/train_throughput.py --presets small --steps 20 --json results.json
    python benchmarks/train_throughput.py --backends torch --jit-compile on    # torch.compile'd step
"""

import argparse
import json
import os
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")
# Per-preset defaults sized for a CPU; pass --batch-size / --seq-len for a GPU.
DEFAULT_SHAPES = {"nano": (32, 128), "small": (8, 256), "gpt2": (4, 1024)}


def worker(preset, batch_size, seq_len, steps, warmup, vocabulary_size, precision, jit_compile="auto"):
    """Runs in a child process whose KERAS_BACKEND is already set; prints one JSON line."""
    import keras
    import numpy as np

    from zoo.families.gpt.model import gpt_from_preset
    from zoo.training.config import TrainConfig
    from zoo.training.accelerator import set_precision
    from zoo.training.loop import compile_for_training

    keras.utils.set_random_seed(0)
    set_precision(precision)
    started = time.perf_counter()
    model = gpt_from_preset(preset, vocabulary_size, max_length=max(seq_len, 1))
    compile_for_training(model, TrainConfig(max_steps=steps + warmup, batch_size=batch_size, precision=precision,
                                            jit_compile=jit_compile))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocabulary_size, (batch_size, seq_len + 1)).astype("int32")
    x, y = tokens[:, :-1], tokens[:, 1:]
    model.train_on_batch(x, y)
    compile_s = time.perf_counter() - started
    for _ in range(warmup - 1):
        model.train_on_batch(x, y)
    begin = time.perf_counter()
    for _ in range(steps):
        logs = model.train_on_batch(x, y, return_dict=True)
    float(logs["loss"])  # wait for the device
    elapsed = time.perf_counter() - begin
    print(json.dumps({"preset": preset, "backend": keras.backend.backend(), "batch_size": batch_size,
                      "seq_len": seq_len, "parameters": model.count_params(), "steps": steps,
                      "step_ms": round(1000 * elapsed / steps, 2), "tokens_per_s": round(steps * batch_size * seq_len / elapsed, 1),
                      "first_step_s": round(compile_s, 2), "jit_compile": jit_compile}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["nano", "small"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--steps", type=int, default=10, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (compilation).")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--jit-compile", choices=["auto", "on", "off"], default="auto",
                        help="auto: XLA on jax/tensorflow, eager torch; on: torch.compile on torch.")
    parser.add_argument("--json", help="Also write the rows to this file.")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        preset, batch_size, seq_len = args.worker
        worker(preset, int(batch_size), int(seq_len), args.steps, args.warmup, args.vocab_size, args.precision,
               args.jit_compile)
        return

    rows = []
    for preset in args.presets:
        batch_size = args.batch_size or DEFAULT_SHAPES[preset][0]
        seq_len = args.seq_len or DEFAULT_SHAPES[preset][1]
        for backend in args.backends:
            print(f"{preset} on {backend} (batch {batch_size} x {seq_len}) ...", file=sys.stderr, flush=True)
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            cmd = [sys.executable, __file__, "--worker", preset, str(batch_size), str(seq_len), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--vocab-size", str(args.vocab_size), "--precision", args.precision,
                   "--jit-compile", args.jit_compile]
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                print(f"  failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}",
                      file=sys.stderr)
                continue
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    print(f"\n{'preset':<7} {'backend':<11} {'params':>8} {'batch x len':>12} {'step ms':>9} {'tokens/s':>10} "
          f"{'vs fastest':>10} {'1st step s':>10}")
    for preset in args.presets:
        group = [r for r in rows if r["preset"] == preset]
        if not group:
            continue
        fastest = max(r["tokens_per_s"] for r in group)
        for r in group:
            r["ratio_to_fastest"] = round(r["tokens_per_s"] / fastest, 3)
            print(f"{preset:<7} {r['backend']:<11} {r['parameters'] / 1e6:>7.2f}M {r['batch_size']:>5} x {r['seq_len']:<5}"
                  f"{r['step_ms']:>9.1f} {r['tokens_per_s']:>10,.0f} {r['ratio_to_fastest']:>10.2f} {r['first_step_s']:>10.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
