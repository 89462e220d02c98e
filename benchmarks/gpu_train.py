"""Training speed on an accelerator: tokens/s, MFU, peak memory and time to a validation loss.

Trains through zoo's real path (`zoo prepare`, then `train_gpt` on the memory-mapped tokens) for a
fixed number of steps, each backend in its own process:

  small  nanoGPT's Shakespeare baby GPT: char-level, 6 layers x 384, batch 64, context 256,
         5000 steps, lr 1e-3, warmup 100, dropout 0.2 (nanoGPT: ~3 min on one A100, best val 1.4697)
  gpt2   GPT-2 124M shape, byte-level BPE (50257 tokens asked; Shakespeare supports 45072, so
         120.5M parameters), batch 16, context 1024, 300 steps, lr 6e-4

    python benchmarks/gpu_train.py --backend jax --out results/jax.json
    python benchmarks/gpu_train.py --backend jax torch torch+compile --out results/gpu.json   # and gpu.md
    python benchmarks/gpu_train.py --backend jax --presets small --steps 3 --batch-size 4 --seq-len 32 \\
        --override num_layers=2 --out /tmp/smoke.json                                          # CPU smoke run
    python benchmarks/gpu_train.py --prepare-only --cache .gpu/data    # tokenize first, off the GPU's clock

`torch+compile` is torch with `--jit-compile on` (torch.compile). Needs no TensorFlow. The JSON
holds one row per (preset, backend); the .md beside it a table with each backend's tokens/s
relative to JAX. tokens/s and MFU are medians over the logged intervals after the first (which
holds compilation); time to target is wall-clock from the start of training, evaluations included.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing zoo

SETUPS = {
    "small": dict(tokenizer="char", vocab_size=None, batch_size=64, seq_len=256, steps=5000, lr=1e-3, warmup=100,
                  eval_every=250, target_loss=1.5),
    "gpt2": dict(tokenizer="bpe", vocab_size=50257, batch_size=16, seq_len=1024, steps=300, lr=6e-4, warmup=30,
                 eval_every=100, target_loss=5.0),
}
BACKENDS = {"jax": ("jax", "auto"), "torch": ("torch", "auto"), "torch+compile": ("torch", "on")}


def _setting(args, preset, name):
    value = getattr(args, name)
    return SETUPS[preset][name] if value is None else value


def prepare(args, preset, cache):
    """The prepared corpus for `preset` (tokenized once, shared by every backend)."""
    from zoo.data.prepared import is_prepared, prepare_corpus

    kind, vocab = SETUPS[preset]["tokenizer"], SETUPS[preset]["vocab_size"] or 256
    path = cache / f"{kind}-{vocab}"
    if not is_prepared(path):
        print(f"preparing {args.data or 'the shipped corpus'} ({kind} tokenizer) in {path} ...", file=sys.stderr, flush=True)
        prepare_corpus(path, args.data, kind, vocab)
    return path


def worker(args, preset, name, prepared, run_dir):
    """Runs in a process whose KERAS_BACKEND is set; returns this (preset, backend)'s row."""
    from zoo.training.accelerator import peak_memory
    from zoo.training.config import TrainConfig
    from zoo.families.gpt.training import train_gpt

    steps = _setting(args, preset, "steps")
    config = TrainConfig(
        max_steps=steps, batch_size=_setting(args, preset, "batch_size"), learning_rate=_setting(args, preset, "lr"),
        warmup_steps=min(_setting(args, preset, "warmup"), steps), precision=args.precision, grad_accum=args.grad_accum,
        jit_compile=BACKENDS[name][1], peak_flops=args.peak_flops, eval_every=min(_setting(args, preset, "eval_every"), steps),
        eval_blocks=args.eval_blocks, save_every=steps, log_every=args.log_every, seed=0)
    overrides = {key: (float(value) if key == "dropout" else int(value))
                 for key, value in (item.split("=", 1) for item in args.override)}
    summary = train_gpt(run_dir, data=prepared, preset=preset, model_overrides=overrides,
                        seq_len=_setting(args, preset, "seq_len"), train_config=config)
    metrics = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    timed = [m for m in metrics if "tokens_per_s" in m][1:] or [m for m in metrics if "tokens_per_s" in m]
    target = _setting(args, preset, "target_loss")
    reached = next((m["elapsed_s"] for m in metrics if m.get("val_loss", float("inf")) <= target), None)
    mfus = [m["mfu"] for m in timed if "mfu" in m]
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    return {"preset": preset, "backend": name, "device": _device(), "precision": summary["precision"],
            "attention": summary["attention"], "parameters": summary["parameters"],
            "flops_per_token": summary["flops_per_token"], "batch_size": config.batch_size * config.grad_accum,
            "seq_len": _setting(args, preset, "seq_len"), "steps": summary["step"],
            "tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in timed), 1),
            "mfu": round(statistics.median(mfus), 4) if mfus else None,
            "target_val_loss": target, "time_to_target_s": reached, "final_val_loss": vals[-1] if vals else None,
            "best_val_loss": min(vals) if vals else None, "wall_s": summary["wall_s"], "stopped": summary["stopped"],
            **peak_memory()}


def _device():
    from zoo.training.flops import device_name

    return device_name()


def markdown(rows):
    lines = ["| preset | backend | device | precision | steps | tokens/s | vs jax | MFU | peak memory | time to target | "
             "best val loss | attention |", "|" + " --- |" * 12]
    for row in rows:
        jax_row = next((r for r in rows if r["preset"] == row["preset"] and r["backend"] == "jax"), None)
        ratio = f"{row['tokens_per_s'] / jax_row['tokens_per_s']:.2f}" if jax_row else "-"
        memory = row.get("device_peak_bytes") or row.get("host_peak_rss_bytes")
        where = "device" if row.get("device_peak_bytes") else "host RSS"
        target = (f"{row['time_to_target_s']:.0f} s to {row['target_val_loss']}" if row["time_to_target_s"] is not None
                  else f"not reached ({row['target_val_loss']})")
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a"
        best = f"{row['best_val_loss']:.4f}" if row["best_val_loss"] is not None else "-"
        steps = f"{row['steps']}" + (f" ({row['stopped']})" if row.get("stopped") else "")
        lines.append(f"| {row['preset']} | {row['backend']} | {row['device']} | {row['precision']} | {steps} | "
                     f"{row['tokens_per_s']:,.0f} | {ratio} | {mfu} | {memory / 2**30:.2f} GiB {where} | {target} | "
                     f"{best} | {row['attention']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", default=["jax", "torch"], choices=list(BACKENDS))
    parser.add_argument("--presets", nargs="+", default=["small", "gpt2"], choices=list(SETUPS))
    parser.add_argument("--out", help="Results JSON; a markdown table is written beside it (.md).")
    parser.add_argument("--prepare-only", action="store_true",
                        help="Only tokenize the presets' corpora into --cache (before a short GPU lease), then exit.")
    parser.add_argument("--data", help="Corpus to prepare; default the shipped Shakespeare.")
    parser.add_argument("--cache", help="Where prepared corpora are kept; default OUT's name + .data/.")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seq-len", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--target-loss", type=float, help="Validation loss to time; default per preset (small 1.5, gpt2 5.0).")
    parser.add_argument("--eval-blocks", type=int, default=256, help="Validation blocks per evaluation.")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--peak-flops", type=float, help="Per-device peak FLOP/s, for a device not in the table.")
    parser.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a preset field (num_layers=2, hidden_dim=64, dropout=0.0, ...); repeatable.")
    parser.add_argument("--worker", nargs=4, metavar=("PRESET", "BACKEND", "PREPARED", "ROW_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        preset, name, prepared, row_path = args.worker
        with tempfile.TemporaryDirectory() as tmp:
            row = worker(args, preset, name, prepared, Path(tmp) / "run")
        Path(row_path).write_text(json.dumps(row))
        return

    if args.prepare_only:
        if not args.cache:
            parser.error("--prepare-only needs --cache")
        for preset in args.presets:
            print(prepare(args, preset, Path(args.cache)))
        return
    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out.with_name(out.stem + ".data")
    rows, failed = [], []
    forwarded = [a for a in sys.argv[1:] if a != "--worker"]
    # A SIGTERM (a time limit's, to the whole process group) stops the running worker after its
    # step, as `zoo train` stops; this process waits for its row, runs no further worker, and
    # writes what it has.
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signal.Signals(signum).name))
    for preset in args.presets:
        prepared = prepare(args, preset, cache)
        for name in args.backend:
            if stop:
                failed.append(f"{preset} on {name} (not run: {stop[0]})")
                continue
            print(f"=== {preset} on {name}", file=sys.stderr, flush=True)
            env = {**os.environ, "KERAS_BACKEND": BACKENDS[name][0]}
            with tempfile.TemporaryDirectory() as tmp:
                row_path = Path(tmp) / "row.json"
                result = subprocess.run([sys.executable, __file__, *forwarded, "--worker", preset, name, str(prepared),
                                         str(row_path)], env=env)
                if result.returncode != 0 or not row_path.is_file():
                    failed.append(f"{preset} on {name} (exit {result.returncode})")
                    continue
                rows.append(json.loads(row_path.read_text()))
    out.write_text(json.dumps({"rows": rows, "failed": failed, "command": sys.argv}, indent=2))
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
