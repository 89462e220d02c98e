"""`zoo train gpt` against nanoGPT on nanoGPT's shakespeare_char CPU recipe, whole processes side by side.

    python benchmarks/vs_nanogpt.py CORPUS.txt                                  # 2000 steps, every backend
    python benchmarks/vs_nanogpt.py zoo/data/corpora/shakespeare.txt --max-chars 1115394 --steps 500
    python benchmarks/vs_nanogpt.py CORPUS.txt --backends torch --rounds 2 --json results.json
    python benchmarks/vs_nanogpt.py CORPUS.txt --steps 500 --zoo-root /tmp/zoo-before   # beside another tree

nanoGPT is benchmarks/nanogpt_reference.py (its model and loop, plain torch), with the README's CPU
recipe: 4 layers, 4 heads, width 128, context 64, batch 12, no dropout, AdamW at 1e-3 (beta2 0.99,
weight decay 0.1), warmup 100 then cosine to 1e-4, clipping at 1.0, the loss estimated over 20
batches every 250 steps, the loss printed every step. `zoo train gpt` gets the same settings as
flags (`zoo_command` below): the character tokenizer, `--eval-every 250 --eval-blocks 240` (20
batches of 12), `--min-lr-ratio 0.1 --beta2 0.99`, `--log-every 1` (nanoGPT's --log_interval=1).

What differs by design, and is left so: nanoGPT evaluates the train split too and at step 0, and
on random val batches (zoo: 240 fixed, evenly spread val blocks, 8 evaluations); nanoGPT runs
max_iters + 1 updates; nanoGPT's model has no biases and exact GELU (zoo's GPT: biases, tanh GELU);
zoo's character vocabulary has 256 byte-fallback tokens and an end token beside the corpus's
characters; zoo writes config.json, metrics.jsonl and a checkpoint every 500 steps (nanoGPT's
checkpoints were cut from the reference).

Each run is its own subprocess, timed from start to exit (interpreter start-up and imports
included); a round runs nanoGPT then each backend, and `--rounds N` alternates them N times (the
table shows the median wall time per entry). Prints a markdown table: wall s, ratio to
nanoGPT's wall time, final validation loss, tokens/s (training tokens / whole-process wall time).
JAX runs start with an empty compilation cache unless `--jax-cache warm`. `--zoo-root DIR` also
runs another zoo source tree (e.g. `git archive` of an earlier commit), each backend beside it.

The machine is shared and torch's two intra-op threads lose most when another process takes a
core (nanoGPT's own step took 36 ms quiet and 500-900 ms under a load of 4): compare entries of
one run, and repeat with --rounds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BACKENDS = ("jax", "tensorflow", "torch")

# nanoGPT's shakespeare_char CPU recipe.
BATCH, CONTEXT, LAYERS, HEADS, WIDTH = 12, 64, 4, 4, 128
EVAL_EVERY, EVAL_BATCHES = 250, 20


def zoo_executable(root=None):
    local = Path(sys.executable).with_name("zoo")
    return [str(local)] if local.exists() and root is None else [sys.executable, "-m", "cli.main"]


def zoo_command(backend, corpus, steps, out, extra=(), root=None):
    command = [*zoo_executable(root), "train", "gpt", "--backend", backend, "--data", str(corpus), "--tokenizer", "char",
            "--val-fraction", "0.1", "--preset", "nano", "--num-layers", str(LAYERS), "--num-heads", str(HEADS),
            "--hidden-dim", str(WIDTH), "--intermediate-dim", str(4 * WIDTH), "--max-length", str(CONTEXT),
            "--dropout", "0", "--batch-size", str(BATCH), "--max-steps", str(steps), "--lr", "1e-3",
            "--warmup-steps", "100", "--min-lr-ratio", "0.1", "--beta2", "0.99", "--weight-decay", "0.1",
            "--grad-clip", "1.0", "--eval-every", str(EVAL_EVERY), "--eval-blocks", str(EVAL_BATCHES * BATCH),
            "--log-every", "1", "--out", str(out), "--json", *extra]
    if root is not None and "--min-lr-ratio" not in subprocess.run(
            [*command[:3], "--help"], cwd=root, capture_output=True, text=True).stdout:
        # A zoo from before those flags: its TrainConfig's defaults are these values.
        for flag in ("--min-lr-ratio", "--beta2"):
            at = command.index(flag)
            del command[at:at + 2]
    return command


def nanogpt_command(corpus, steps):
    return [sys.executable, str(HERE / "nanogpt_reference.py"), str(corpus), "--max_iters", str(steps),
            "--lr_decay_iters", str(steps), "--batch_size", str(BATCH), "--block_size", str(CONTEXT),
            "--n_layer", str(LAYERS), "--n_head", str(HEADS), "--n_embd", str(WIDTH), "--eval_interval",
            str(EVAL_EVERY), "--eval_iters", str(EVAL_BATCHES), "--log_interval", "1"]


def run(name, command, env=None, log=None, cwd=None):
    """Runs `command` to its end; returns (wall seconds, the JSON object on its last stdout line)."""
    print(f"  {name} ...", end="", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    if log is not None:
        Path(log).write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"\n{name} failed (exit {result.returncode}):\n{tail}")
    print(f" {wall:.1f} s", file=sys.stderr, flush=True)
    return wall, json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", type=Path, help="Any UTF-8 text file.")
    parser.add_argument("--steps", type=int, default=2000, help="Training steps (nanoGPT's max_iters).")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--max-chars", type=int, help="Use only the first N characters of the corpus "
                                                      "(1115394: the size of nanoGPT's tiny Shakespeare).")
    parser.add_argument("--rounds", type=int, default=1, help="Run everything this many times, alternating.")
    parser.add_argument("--no-nanogpt", action="store_true", help="Only zoo (ratios then absent).")
    parser.add_argument("--zoo-arg", action="append", default=[], help="An extra `zoo train gpt` argument "
                                                                       "(repeatable), e.g. --zoo-arg=--jit-compile=on.")
    parser.add_argument("--jax-cache", choices=["cold", "warm"], default="cold",
                        help="zoo keeps JAX's compiled programs in a persistent cache "
                             "(zoo.backend.use_compilation_cache). cold: every JAX run starts with an empty one "
                             "(a first run); warm: each JAX entry runs once untimed first, filling it (a repeated "
                             "run).")
    parser.add_argument("--logs", type=Path, help="Keep each run's output in this directory.")
    parser.add_argument("--zoo-root", type=Path, action="append", default=[],
                        help="Also run the zoo of this source tree (e.g. an earlier commit's `git archive`), as "
                             "`python -m cli.main` there; repeatable. Its entries are named by the directory.")
    parser.add_argument("--json", type=Path, help="Also write every run's figures here.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vs-nanogpt-") as tmp:
        corpus = args.corpus
        text = corpus.read_text(encoding="utf-8")
        if args.max_chars:
            text = text[:args.max_chars]
            corpus = Path(tmp) / "corpus.txt"
            corpus.write_text(text, encoding="utf-8")
        described = f"{args.corpus} ({len(text):,} characters{', its first' if args.max_chars else ''})"
        print(f"corpus: {described}; {args.steps} steps; {os.cpu_count()} CPUs", file=sys.stderr)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
        roots = {}
        for backend in args.backends:  # each backend beside its other trees
            roots[backend] = None
            roots.update({f"{backend}@{root.name}": root.resolve() for root in args.zoo_root})
        entries = ([] if args.no_nanogpt else ["nanogpt"]) + list(roots)
        runs = {name: [] for name in entries}

        def zoo_run(name, label, log=None):
            out = Path(tempfile.mkdtemp(prefix=f"run-{name}-", dir=tmp))
            backend, root = name.split("@")[0], roots[name]
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
            cache = Path(tmp) / f"jax-cache-{name}"
            if args.jax_cache == "cold":
                cache = Path(tempfile.mkdtemp(prefix="jax-cache-", dir=tmp))
            env["ZOO_JAX_CACHE_DIR"] = str(cache)
            if root is not None:
                env["PYTHONPATH"] = str(root)
            command = zoo_command(backend, corpus.resolve(), args.steps, out, args.zoo_arg, root)
            return run(label, command, env=env, log=log, cwd=root)

        if args.jax_cache == "warm":
            for name in entries:
                if name.split("@")[0] == "jax":
                    zoo_run(name, f"{name} (untimed, filling the JAX cache)")
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr)
            for name in entries:
                log = args.logs / f"{name}-{round_}.log" if args.logs else None
                if name == "nanogpt":
                    wall, result = run(name, nanogpt_command(corpus, args.steps), log=log)
                    runs[name].append({"wall_s": wall, "val_loss": result["val_loss"], "updates": result["iters"],
                                       "inner_s": result["loop_s"]})
                    continue
                wall, result = zoo_run(name, name, log)
                runs[name].append({"wall_s": wall, "val_loss": result.get("val_loss"), "updates": result["step"],
                                   "inner_s": result["wall_s"]})

    rows = []
    reference = statistics.median(r["wall_s"] for r in runs["nanogpt"]) if "nanogpt" in runs else None
    for name in entries:
        group = runs[name]
        wall = statistics.median(r["wall_s"] for r in group)
        rows.append({"entry": "nanoGPT (torch)" if name == "nanogpt" else f"zoo {name.replace('@', ' @ ')}", "wall_s": round(wall, 1),
                     "walls": [round(r["wall_s"], 1) for r in group],
                     "ratio": round(wall / reference, 2) if reference else None,
                     "val_loss": round(statistics.median(r["val_loss"] for r in group), 4),
                     "val_losses": [r["val_loss"] for r in group],
                     "tokens_per_s": round(group[0]["updates"] * BATCH * CONTEXT / wall),
                     "loop_s": round(statistics.median(r["inner_s"] for r in group), 1)})

    print(f"\n{described}, {args.steps} steps, {args.rounds} round(s) (median wall time; each run a whole process; "
          f"{args.jax_cache} JAX compilation cache)\n")
    print("| run | wall s | vs nanoGPT | final val loss | tokens/s | training loop s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        walls = f" ({', '.join(map(str, r['walls']))})" if len(r["walls"]) > 1 else ""
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(f"| {r['entry']} | {r['wall_s']}{walls} | {ratio} | {r['val_loss']:.4f} | {r['tokens_per_s']:,} | "
              f"{r['loop_s']} |")
    print("\ntokens/s: training tokens / whole-process wall time; training loop s: the time the run reports "
          "itself (its training loop, evaluation included)")
    if args.json:
        args.json.write_text(json.dumps({"corpus": described, "steps": args.steps, "runs": runs, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
