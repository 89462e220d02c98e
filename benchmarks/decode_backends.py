"""The backend gap in decoding: the same GPT-2-shaped model (decode_speed.py's SHAPE, the same
random weights) on each backend's compiled engine, one warm process per backend, taking turns.

    python benchmarks/decode_backends.py [--backends jax tensorflow torch] [--batches 1 8] [--rounds 5]
    python benchmarks/decode_backends.py --backends jax torch torch:int8 --batches 1   # zoo quantize's int8

A backend written BACKEND:MODE runs the same weights quantized (`int8` or `int4`, as `zoo quantize`
does), to set a quantized engine beside the float32 ones; one written BACKEND@ROOT runs the zoo
checkout at ROOT (another commit's tree, e.g. from `git worktree add`), to measure a change side by side:

    python benchmarks/decode_backends.py --backends jax jax@/tmp/before --batches 1 8

`--shape tiny` decodes a 1-layer, width-32 model of the same vocabulary instead, whose step costs
next to nothing: what it measures is each engine's own cost per token (dispatch, the host's round
trip), which is what a step costs on a GPU.

decode_speed.py (and `zoo bench`, which measures a family's whole row per backend) measure one
backend per process, minutes apart; on a small shared machine the speed drifts by more than the
gap being measured between such runs (JAX's batch-1 rate measured 256 and 367 tok/s an hour apart
on the 2-core machine). Here each backend is a worker process
that builds the model, compiles, and then waits: the workers run one generation at a time in
turn, round after round, so every backend sees the same machine. Each figure is the best round;
each batch's row gives every backend's ratio to the fastest, and whether its greedy tokens equal
the first backend's (the same weights everywhere; random weights give nearly flat logits, so a
float rounding may flip a near-tie late in a row).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Each --shape as changes to decode_speed.py's SHAPE (6 x 384, vocabulary 8192, context 256).
SHAPES = {
    "gpt2": {},
    "tiny": dict(num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=128),
    "nano": dict(num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512),
    "124m": dict(vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
                 max_length=1024),
}
SHAPE_NAMES = {"gpt2": "GPT-2", "tiny": "tiny (1 x 32)", "nano": "nano (4 x 128, a speculative draft's)",
               "124m": "GPT-2 124M (12 x 768, vocabulary 50257)"}


def worker(args):
    """One backend: builds the model with seeded NumPy weights (quantized if --mode), warms every
    batch up, then answers each line `BATCH` on stdin with one line of JSON: tokens/s of one
    greedy generation and its tokens."""
    root = Path(args.root) if args.root else ROOT
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "benchmarks"))
    import keras
    import numpy as np

    from decode_speed import SHAPE

    SHAPE = dict(SHAPE, **SHAPES[args.shape])
    from zoo.engine import engine_for
    from zoo.families.gpt.model import GPT
    from zoo.layers.quantized import quantize_model

    model = GPT(**SHAPE)
    model.build()
    rng = np.random.default_rng(0)
    for variable in model.weights:  # the same weights on every backend: NumPy's, in variable order
        scale = 0.02 if len(variable.shape) >= 2 else 0.0
        value = rng.normal(0, scale, variable.shape) + (1.0 if "gamma" in variable.path else 0.0)
        variable.assign(value.astype("float32"))
    if args.mode:
        quantize_model(model, args.mode)
    engine = engine_for(model)
    prompts = {batch: np.random.default_rng(batch).integers(1, SHAPE["vocabulary_size"],
                                                            (batch, args.prompt_tokens)).tolist()
               for batch in args.batches}
    for batch in args.batches:
        engine.generate_batch(prompts[batch], args.new_tokens)  # compiles this batch's functions
    print(json.dumps({"ready": keras.backend.backend()}), flush=True)
    for line in sys.stdin:
        batch = int(line)
        start = time.perf_counter()
        tokens = engine.generate_batch(prompts[batch], args.new_tokens)
        seconds = time.perf_counter() - start
        print(json.dumps({"rate": batch * args.new_tokens / seconds, "tokens": tokens}), flush=True)


def start_worker(name, args):
    """The worker of `name`, BACKEND[:MODE][@ROOT] (checked by main)."""
    name, _, root = name.partition("@")
    backend, _, mode = name.partition(":")
    command = [sys.executable, __file__, "--worker", "--batches", *map(str, args.batches),
               "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--shape", args.shape]
    if mode:
        command += ["--mode", mode]
    if root:
        command += ["--root", root]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, bufsize=1)
    return process


def reply(process, backend):
    line = process.stdout.readline()
    if not line:
        sys.exit(f"the {backend} worker ended without answering (is {backend} installed? run "
                 f"KERAS_BACKEND={backend} {sys.executable} {__file__} --worker to see why)")
    return json.loads(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=112)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2",
                        help="gpt2: decode_speed.py's GPT-2 shape (56 MB of float32 weights); tiny: 1 layer of "
                             "width 32 (per-token overhead); 124m: GPT-2 124M's (497 MB: past a CPU's cache)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["int8", "int4"], help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    for name in args.backends:
        spec, _, root = name.partition("@")
        backend, _, mode = spec.partition(":")
        if backend not in ("jax", "tensorflow", "torch") or mode not in ("", "int8", "int4"):
            parser.error(f"--backends: {name!r} is not BACKEND[:MODE][@ROOT] (jax, tensorflow, torch; int8, int4)")
        if root and not (Path(root) / "zoo").is_dir():
            parser.error(f"--backends: {name!r}: {root} holds no zoo checkout")

    # Started one after another: two compiling at once on a small machine slows both.
    workers = {}
    for backend in args.backends:
        workers[backend] = start_worker(backend, args)
        reply(workers[backend], backend)
    best = {(backend, batch): 0.0 for backend in args.backends for batch in args.batches}
    tokens = {}
    for round_ in range(args.rounds):
        for batch in args.batches:
            for backend, process in workers.items():
                process.stdin.write(f"{batch}\n")
                answer = reply(process, backend)
                best[backend, batch] = max(best[backend, batch], answer["rate"])
                tokens[backend, batch] = answer["tokens"]
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{backend} b{batch} {rate:.1f}" for (backend, batch), rate in best.items()), flush=True)
    for process in workers.values():
        process.stdin.close()
        process.wait()

    first = args.backends[0]
    print(f"\n{SHAPE_NAMES[args.shape]} shape, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens greedy, best of "
          f"{args.rounds} rounds taken in turn\n")
    print("| batch | " + " | ".join(f"{backend} tok/s" for backend in args.backends) + " | slowest / fastest | "
          + " | ".join(f"{backend} tokens = {first}'s" for backend in args.backends[1:]) + " |")
    print("| --- " * (1 + 2 * len(args.backends)) + "|")
    for batch in args.batches:
        rates = [best[backend, batch] for backend in args.backends]
        cells = [f"{rate:.1f} ({rate / max(rates):.2f})" for rate in rates]
        same = [str(tokens[backend, batch] == tokens[first, batch]) for backend in args.backends[1:]]
        print(f"| {batch} | " + " | ".join(cells) + f" | {max(rates) / min(rates):.2f}x | " + " | ".join(same) + " |")


if __name__ == "__main__":
    main()
