"""Many prompts generated one at a time against continuously batched (`zoo generate --input
FILE --batch-size N`, zoo.engine.slots.generate_all), on the current backend, side by side in one
process.

    KERAS_BACKEND=jax python benchmarks/generate_many.py BUNDLE [--prompts 64] [--max-new-tokens 32]
        [--batch-sizes 1 4 8 16] [--temperature 0] [--input FILE]
    KERAS_BACKEND=torch python benchmarks/generate_many.py demo/bundle

BUNDLE is any generation bundle or run (`make demo` writes demo/bundle). The prompts are the
first --prompts lines of --input (default: the Shakespeare corpus the demo trained on, lines of 20
characters or more), each generating up to --max-new-tokens (an end token may stop it sooner). Batch
size 1 is `zoo generate`'s one prompt at a time (each alone on its engine: greedy ones in chunks
of `decode_chunk` steps on the device); the others `generate_all` on that many slots. One untimed
pass of each first (it compiles), then --rounds rounds taking the ways in turns, so all see the
same machine; each figure is the best round's, tokens generated / seconds, and the ratio is
against batch size 1.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CORPUS = Path(__file__).resolve().parent.parent / "zoo" / "data" / "corpora" / "shakespeare.txt"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="A generation bundle or run directory.")
    parser.add_argument("--input", type=Path, default=CORPUS, help="Prompts, one a line.")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy; above it, seeded sampling.")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    from zoo.bundle import load_runtime
    from zoo.engine import SamplingConfig
    from zoo.engine.slots import generate_all

    generator, info = load_runtime(args.bundle, "generate")
    lines = [line.strip() for line in args.input.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if len(line) >= 20][:args.prompts]
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=1)

    def run(batch_size):  # -> tokens generated
        if batch_size == 1:
            return sum(len(generator.generate(prompt, config).token_ids) for prompt in prompts)
        continuations = [generator.start(prompt, config) for prompt in prompts]
        return sum(len(result.token_ids) for _, result in generate_all(generator.engine, continuations, batch_size))

    made = {size: run(size) for size in args.batch_sizes}  # compiles
    best = dict.fromkeys(args.batch_sizes, 0.0)
    for _ in range(args.rounds):
        for size in args.batch_sizes:
            start = time.perf_counter()
            tokens = run(size)
            best[size] = max(best[size], tokens / (time.perf_counter() - start))
            assert tokens == made[size]
    print(f"{keras.backend.backend()}, {Path(args.bundle).name} ({info.kind}), {len(prompts)} prompts, up to "
          f"{args.max_new_tokens} new tokens each, temperature {args.temperature}; best of {args.rounds} rounds\n")
    print("| batch size | tokens | tokens/s | ratio |")
    print("| --- | --- | --- | --- |")
    for size in args.batch_sizes:
        print(f"| {size} | {made[size]} | {best[size]:,.1f} | {best[size] / best[args.batch_sizes[0]]:.2f}x |")


if __name__ == "__main__":
    main()
