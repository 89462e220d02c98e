"""Writes a corpus of a target model's own samples, to distill a speculative-decoding draft on.

A draft speeds decoding up only as far as it proposes what the target would: trained on the same
corpus, a small draft learns the corpus, not the target. Trained on text the target sampled, with
the target's whole next-token distribution at every position as its loss (`zoo train gpt
--teacher`, logit distillation on the target's own text, as in DistillSpec, Zhou et al. 2023), it
learns the target's own distribution, which is what the acceptance rule compares it with.
(Fine-tuned on the samples' tokens alone, sequence-level distillation, it learns less: for a nano
draft of a `small` target, 2,500 steps each, its greedy choice agreed with the target's at 79.8%
of held-out positions against 85.8%; distilled on the corpus itself instead of samples, 85.6%:
with the whole distribution as the target, samples add little. benchmarks/RESULTS.md.)

    KERAS_BACKEND=jax python benchmarks/draft_corpus.py TARGET --data CORPUS.txt --out samples.txt
    zoo train gpt --init DRAFT --teacher TARGET --data samples.txt --out runs/draft-distilled --lr 5e-4
    zoo export runs/draft-distilled --out bundles/draft-distilled

Each sample continues a random stretch of CORPUS (the prompt, --prompt-chars characters starting
at a line) by --new-tokens tokens at --temperature (1: the target's distribution as it is), a batch
of --batch rows at a time; the prompt and its continuation are written as one paragraph.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from zoo.bundle import load_runtime  # noqa: E402
from zoo.engine import SamplingConfig  # noqa: E402


def line_starts(text, chars):
    """The offsets of `text`'s lines that leave `chars` characters after them."""
    return np.flatnonzero(np.frombuffer(text[:-chars].encode("utf-32-le"), "<u4") == ord("\n")) + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="the target gpt run or bundle")
    parser.add_argument("--data", required=True, help="a .txt corpus the prompts are taken from")
    parser.add_argument("--out", required=True, help="the .txt file to write")
    parser.add_argument("--chars", type=int, default=300_000, help="stop after this many characters")
    parser.add_argument("--prompt-chars", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generator, _ = load_runtime(args.target, "generate")
    text = Path(args.data).read_text(encoding="utf-8")
    rng = np.random.default_rng(args.seed)
    starts = line_starts(text, args.prompt_chars)
    written, tokens, started, batch_index = 0, 0, time.time(), 0
    partial = Path(args.out).with_suffix(".partial")
    config = SamplingConfig(temperature=args.temperature, max_new_tokens=args.new_tokens)  # checks prompt lengths
    with open(partial, "w", encoding="utf-8") as out:
        while written < args.chars:
            batch = [text[s:s + args.prompt_chars] for s in rng.choice(starts, args.batch)]
            ids = [generator.prompt_ids(p, config) for p in batch]
            seeds = [SamplingConfig(temperature=args.temperature, seed=args.seed * 1_000_003 + batch_index * args.batch + r)
                     for r in range(len(batch))]
            outputs = generator.engine.generate_batch(ids, args.new_tokens, seeds, generator.tokenizer.end_token_id)
            for prompt, new in zip(batch, outputs):
                sample = prompt + generator.tokenizer.decode(new)
                out.write(sample.rstrip("\n") + "\n\n")
                written += len(sample)
                tokens += len(new)
            batch_index += 1
            elapsed = time.time() - started
            eta = elapsed / written * (args.chars - written) if written < args.chars else 0
            print(f"{written:,}/{args.chars:,} characters, {tokens / elapsed:,.0f} tok/s, "
                  f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", file=sys.stderr, flush=True)
    partial.replace(args.out)
    print(f"wrote {args.out}: {written:,} characters from {batch_index * args.batch} samples")


if __name__ == "__main__":
    main()
