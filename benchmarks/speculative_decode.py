"""Speculative decoding's speed-up at batch 1 on the current backend: a target model alone against
the same target with a draft proposing k tokens per pass, side by side in one process, greedy and
sampled, with the draft's acceptance rate.

    KERAS_BACKEND=jax python benchmarks/speculative_decode.py TARGET DRAFT [--draft-tokens 2 3 4 6]
        [--prompts-from HELD_OUT.txt --prompt-count 16 --new-tokens 90]

TARGET and DRAFT are gpt runs or bundles sharing a tokenizer, e.g. the `small` preset and a `nano`
draft trained on the same prepared corpus, the draft then distilled from the target (`zoo train gpt
--teacher`, on the corpus as below or on the target's own samples, benchmarks/draft_corpus.py:
as good); the pair of RESULTS.md's "2026-12-05 (evening)" (target val_loss 1.546, about an hour
and a half on the 2-core CPU; the distillation 31 minutes of it, with a bfloat16 teacher):

    zoo prepare --tokenizer char --out prepared/shakespeare-char
    KERAS_BACKEND=torch zoo train gpt --data prepared/shakespeare-char --preset small --dropout 0 \\
        --max-steps 3000 --batch-size 16 --seq-len 128 --out runs/small
    zoo train gpt --data prepared/shakespeare-char --preset nano --max-steps 1500 --seq-len 128 --out runs/nano
    zoo export runs/small --out bundles/small
    KERAS_BACKEND=torch zoo train gpt --init runs/nano --teacher bundles/small --teacher-precision bf16 \\
        --data zoo/data/corpora/shakespeare.txt --max-steps 6000 --lr 5e-4 --seq-len 128 --out runs/nano-distilled
    tail -c 100000 zoo/data/corpora/shakespeare.txt > held-out.txt   # inside the runs' held-out last 10%

Each figure is the best of --repeats runs over the prompts (after a warm-up that compiles), the
target alone and with its draft taking turns run by run, so that both see the same machine (this
2-core machine's speed drifted by 10-40% between minutes, enough to move a ratio measured apart
by as much); tokens/s counts generated tokens over the wall time of whole generations, prefill
included. The greedy outputs are checked equal to the target's own.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from zoo.bundle import load_runtime  # noqa: E402
from zoo.engine import SamplingConfig  # noqa: E402
from zoo.engine.speculative import SpeculativeGenerator, SpeculationStats  # noqa: E402

PROMPTS = ["ROMEO.\n", "KING HENRY.\nNow, lords,", "To be, or not to be, that is", "First Citizen:\n"]


def prompts_from(path, count, length=32):
    """`count` prompts from the text file at `path`: the first `length` characters of paragraphs
    (blank-line separated) spread evenly over it, e.g. over a corpus's held-out end. More prompts
    than the 4 built in make the acceptance, and so the speed-up, less a matter of which text."""
    paragraphs = [p.strip() for p in Path(path).read_text(encoding="utf-8").split("\n\n") if len(p.strip()) >= length]
    if len(paragraphs) < count:
        raise SystemExit(f"--prompts-from {path}: {len(paragraphs)} paragraphs of {length}+ characters, "
                         f"fewer than --prompt-count {count}")
    return [paragraphs[i * len(paragraphs) // count][:length] for i in range(count)]


def timed(generator, config, prompts):
    """(tokens/s of one pass over the prompts, the outputs' token ids)."""
    start, tokens, outputs = time.perf_counter(), 0, []
    for prompt in prompts:
        result = generator.generate(prompt, config)
        tokens += len(result.token_ids)
        outputs.append(result.token_ids)
    return tokens / (time.perf_counter() - start), outputs


def side_by_side(target, speculative, config, prompts, repeats):
    """(best tokens/s of the target alone, best with speculation, the outputs of each), the two
    taking turns for `repeats` rounds."""
    alone = with_draft = 0.0
    for _ in range(repeats):
        rate, expected = timed(target, config, prompts)
        alone = max(alone, rate)
        rate, outputs = timed(speculative, config, prompts)
        with_draft = max(with_draft, rate)
    return alone, with_draft, expected, outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target")
    parser.add_argument("draft")
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--new-tokens", type=int, default=96,
                        help="per prompt; past the draft's context (a nano preset's is 128) the target decodes alone")
    parser.add_argument("--temperature", type=float, default=0.8, help="for the sampled rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts-from", metavar="TEXT_FILE",
                        help="take the prompts from this text instead of the 4 built in (e.g. a corpus's held-out end)")
    parser.add_argument("--prompt-count", type=int, default=16, help="with --prompts-from")
    args = parser.parse_args()
    prompts = prompts_from(args.prompts_from, args.prompt_count) if args.prompts_from else PROMPTS

    target, target_info = load_runtime(args.target, "generate")
    draft, draft_info = load_runtime(args.draft, "generate")
    print(f"backend {keras.backend.backend()}; target {args.target}: {target.model.count_params() / 1e6:.2f}M "
          f"parameters; draft {args.draft}: {draft.model.count_params() / 1e6:.2f}M; {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens, batch 1, best of {args.repeats}")
    longest = args.new_tokens + max(len(target.prompt_ids(prompt, SamplingConfig(max_new_tokens=args.new_tokens)))
                                    for prompt in prompts)
    if longest > draft.max_length:
        print(f"note: prompts and new tokens reach position {longest}, past the draft's context "
              f"({draft.max_length}); from there the target decodes alone, one token a pass")
    rows = []
    for name, config in (("greedy", SamplingConfig(temperature=0, max_new_tokens=args.new_tokens)),
                         (f"T={args.temperature}", SamplingConfig(temperature=args.temperature, seed=0,
                                                                  max_new_tokens=args.new_tokens))):
        timed(target, config, prompts)  # warm-up: compiles
        for k in args.draft_tokens:
            speculative = SpeculativeGenerator(target, draft, k)
            timed(speculative, config, prompts)
            speculative.stats = SpeculationStats()
            alone, rate, expected, outputs = side_by_side(target, speculative, config, prompts, args.repeats)
            stats = speculative.stats
            same = outputs == expected if config.temperature == 0 else "-"
            rows.append((name, k, alone, rate, stats.acceptance_rate, stats.tokens_per_pass, same))
            print(f"{name} k={k}: alone {alone:.1f} tok/s, speculative {rate:.1f} tok/s ({rate / alone:.2f}x), "
                  f"acceptance {stats.acceptance_rate:.1%}, {stats.tokens_per_pass:.2f} tokens per pass, "
                  f"greedy equal: {same}", flush=True)
    print(f"\n| backend | decoding | k | target alone tok/s | speculative tok/s | speed-up | acceptance | "
          f"tokens per target pass | greedy output equal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, k, alone, rate, acceptance, per_pass, same in rows:
        print(f"| {keras.backend.backend()} | {name} | {k} | {alone:.1f} | {rate:.1f} | {rate / alone:.2f}x | "
              f"{acceptance:.1%} | {per_pass:.2f} | {same} |")


if __name__ == "__main__":
    main()
