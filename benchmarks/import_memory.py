"""`zoo import`'s time and peak memory on a GPT-2-medium-shaped checkpoint (355M parameters, random
weights), per backend, against the size of its weights.

    python benchmarks/import_memory.py [--backends jax tensorflow torch] [--layers 24 --width 1024]
    pip install transformers   # to write the checkpoint as save_pretrained does; not a dependency of zoo

The checkpoint is written once by transformers' `GPT2LMHeadModel.save_pretrained` (safetensors), with
a small byte-level BPE as its tokenizer (the tokenizer does not change the weights' cost). Each
import then runs as `zoo import` in its own process; its peak resident memory is the kernel's
(`wait4`'s ru_maxrss), and "imports only" is the same process's peak for `zoo info` (keras and the
backend loaded, no model), so that the difference is what the import itself holds.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_checkpoint(directory, layers, width):
    """A random GPT2LMHeadModel of GPT-2 medium's shape, and a small tokenizer, saved as a user's is."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    text = (ROOT / "zoo" / "data" / "corpora" / "shakespeare.txt").read_text(encoding="utf-8").splitlines()[:2000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text, trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(directory)
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=width // 64, n_positions=1024,
                                     vocab_size=50257, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def run_measured(args, env):
    """(exit status, wall seconds, peak RSS in MiB, stderr) of a child process."""
    start = time.perf_counter()
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read()
    return os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss / 1024, stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zoo-import-memory-"))
    try:
        checkpoint = work / "gpt2-medium-shaped"
        child = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                                f"from benchmarks.import_memory import write_checkpoint; "
                                f"print(write_checkpoint({str(checkpoint)!r}, {args.layers}, {args.width}))"],
                               capture_output=True, text=True, check=True)
        parameters = int(child.stdout.split()[-1])
        weight_mib = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 2**20
        rows = []
        for backend in args.backends:
            env = {**os.environ, "KERAS_BACKEND": backend}
            zoo = [sys.executable, "-m", "cli.main"]
            _, _, baseline, _ = run_measured(zoo + ["info"], env)
            bundle = work / f"bundle-{backend}"
            code, seconds, peak, stderr = run_measured(zoo + ["import", str(checkpoint), "--out", str(bundle)], env)
            if code != 0:
                raise SystemExit(f"zoo import failed on {backend}:\n{stderr[-3000:]}")
            rows.append(dict(backend=backend, parameters=parameters, weights_mib=round(weight_mib),
                             import_s=round(seconds, 1), peak_rss_mib=round(peak), imports_only_mib=round(baseline),
                             peak_over_weights=round(peak / weight_mib, 2),
                             import_over_weights=round((peak - baseline) / weight_mib, 2)))
            shutil.rmtree(bundle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"GPT-2-medium-shaped checkpoint: {parameters / 1e6:.0f}M parameters, {weight_mib:.0f} MiB of safetensors")
    print("| backend | zoo import s | peak RSS MiB | imports only MiB | peak / weights | (peak - imports) / weights |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['import_s']} | {r['peak_rss_mib']} | {r['imports_only_mib']} | "
              f"{r['peak_over_weights']} | {r['import_over_weights']} |")


if __name__ == "__main__":
    main()
