"""Full fine-tuning vs LoRA on the same GPT, side by side: trainable parameters, step time, peak memory.

Each variant runs in its own process (so that its peak RSS is its own) with zoo's training step
(`compile_for_training` and `train_on_batch`, as `zoo train` uses) on blocks of the shipped corpus,
from the same random initialization; LoRA as `--lora-rank` applies it (`zoo.training.lora.enable`:
the attention projections adapted, every other weight frozen). Peak memory is the process's
high-water RSS (`ru_maxrss`) at the end, and above the one it had with the model built, before
the optimizer and the first step; on a GPU also the device's peak. Prints the ratios LoRA / full.

    python benchmarks/lora.py                                  # small preset (10.8M parameters), jax
    python benchmarks/lora.py --backends jax torch --rank 16 --json lora.json
    python benchmarks/lora.py --preset gpt2 --batch-size 8 --seq-len 1024 --precision bf16   # on a GPU
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANTS = ("full", "lora")


def _rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(variant, tokens_path, vocabulary_size, args):
    """Runs in a child process whose KERAS_BACKEND is already set; prints one JSON line."""
    import keras

    from zoo.data import BlockBatches
    from zoo.families.gpt.model import gpt_from_preset
    from zoo.training import lora
    from zoo.training.accelerator import peak_memory, set_precision
    from zoo.training.config import TrainConfig
    from zoo.training.loop import compile_for_training

    keras.utils.set_random_seed(0)
    set_precision(args.precision)
    model = gpt_from_preset(args.preset, vocabulary_size, max_length=args.seq_len)
    if variant == "lora":
        lora.enable(model, {"rank": args.rank, "alpha": float(args.rank)})
    built_rss = _rss()
    compile_for_training(model, TrainConfig(max_steps=args.steps + args.warmup, batch_size=args.batch_size,
                                            precision=args.precision, learning_rate=args.lr))
    batches = BlockBatches(np.load(tokens_path, allow_pickle=False), args.seq_len, args.batch_size)
    losses = [float(model.train_on_batch(*batches.batch(i))) for i in range(args.warmup)]
    begin = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        loss = model.train_on_batch(*batches.batch(i))
    losses.append(float(loss))  # waits for the device
    elapsed = time.perf_counter() - begin
    memory = peak_memory()
    print(json.dumps({
        "variant": variant, "backend": keras.backend.backend(), "preset": args.preset, "rank": args.rank,
        "batch_size": args.batch_size, "seq_len": args.seq_len, "precision": args.precision,
        "parameters": model.count_params(),
        "trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "step_ms": round(1000 * elapsed / args.steps, 1),
        "tokens_per_s": round(args.steps * batches.tokens_per_batch / elapsed, 1),
        "peak_rss_mb": round(memory["host_peak_rss_bytes"] / 2**20, 1),
        "training_rss_mb": round((memory["host_peak_rss_bytes"] - built_rss) / 2**20, 1),
        **({"device_peak_mb": round(memory["device_peak_bytes"] / 2**20, 1)} if "device_peak_bytes" in memory else {}),
        "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}))


def _tokens(vocabulary_size, directory):
    """The shipped corpus as BPE tokens (trained here once, for both variants), saved as .npy."""
    from zoo.data import DEFAULT_CORPUS, encode_documents, read_documents
    from zoo.tokenizers import train_bpe

    documents = read_documents(DEFAULT_CORPUS)
    tokenizer = train_bpe(documents, vocabulary_size)
    path = os.path.join(directory, "tokens.npy")
    np.save(path, encode_documents(tokenizer, documents))
    return path, tokenizer.vocabulary_size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--backends", nargs="+", default=["jax"], choices=["jax", "tensorflow", "torch"])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="Timed steps.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps first (compilation).")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--json", help="Also write the rows to this file.")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        variant, tokens_path, vocabulary_size = args.worker
        worker(variant, tokens_path, int(vocabulary_size), args)
        return

    rows = []
    with tempfile.TemporaryDirectory() as directory:
        tokens_path, vocabulary_size = _tokens(args.vocab_size, directory)
        passed = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in
                  ("preset", "rank", "batch_size", "seq_len", "steps", "warmup", "lr", "precision")]
        for backend in args.backends:
            for variant in VARIANTS:
                print(f"{variant} on {backend} ...", file=sys.stderr, flush=True)
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
                result = subprocess.run([sys.executable, __file__, *passed, "--worker", variant, tokens_path,
                                         str(vocabulary_size)], env=env, capture_output=True, text=True)
                if result.returncode != 0:
                    sys.exit(f"{variant} on {backend} failed:\n{result.stderr[-3000:]}")
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))

    device = any("device_peak_mb" in r for r in rows)
    print(f"\n{'backend':<11} {'variant':<5} {'parameters':>11} {'trainable':>10} {'step ms':>8} {'tokens/s':>9} "
          f"{'peak RSS MB':>11} {'training RSS MB':>15}" + (f" {'device MB':>9}" if device else "")
          + f" {'loss':>15}")
    for r in rows:
        print(f"{r['backend']:<11} {r['variant']:<5} {r['parameters']:>11,} {r['trainable']:>10,} {r['step_ms']:>8.1f} "
              f"{r['tokens_per_s']:>9,.0f} {r['peak_rss_mb']:>11,.0f} {r['training_rss_mb']:>15,.0f}"
              + (f" {r.get('device_peak_mb', 0):>9,.0f}" if device else "")
              + f" {r['first_loss']:>6.3f} -> {r['last_loss']:.3f}")
    for backend in args.backends:
        full, adapted = (next(r for r in rows if r["backend"] == backend and r["variant"] == v) for v in VARIANTS)
        ratios = {"trainable": adapted["trainable"] / full["trainable"],
                  "step time": adapted["step_ms"] / full["step_ms"],
                  "peak RSS": adapted["peak_rss_mb"] / full["peak_rss_mb"],
                  "training RSS": adapted["training_rss_mb"] / max(full["training_rss_mb"], 1e-9)}
        if device:
            ratios["device peak"] = adapted["device_peak_mb"] / full["device_peak_mb"]
        print(f"{backend}: LoRA / full: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
