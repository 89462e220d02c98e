"""Prompts that arrive together, prefilled one at a time against together (`engine.prefill_slots`),
on the current backend's decode engine, side by side in one process.

    KERAS_BACKEND=jax python benchmarks/prefill_together.py BUNDLE [--slots 16] [--counts 4 16] [--lengths 13 61 125]
    KERAS_BACKEND=torch python benchmarks/prefill_together.py demo/bundle

BUNDLE is any GPT bundle or run (`make demo` writes demo/bundle). For each prompt length and count,
that many prompts of that length go into the first slots of a cache of --slots rows: one
`prefill_slot` each, then one `prefill_slots` call (a compiled engine runs them in groups of 4, 16,
...: zoo.engine.interface.prefill_groups; a count between two group sizes runs a group and the rest
alone). Each figure is the best of --rounds rounds of --repeats calls, the two ways taken in turns
after one call of each (which compiles), so both see the same machine; the ratio is alone /
together.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="A GPT bundle or run directory.")
    parser.add_argument("--slots", type=int, default=16, help="Rows of the cache (a server's --decode-slots).")
    parser.add_argument("--counts", type=int, nargs="+", default=[4, 16], help="Prompts arriving together.")
    parser.add_argument("--lengths", type=int, nargs="+", default=[13, 61, 125], help="Tokens a prompt.")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    import keras

    from zoo.bundle import load_model
    from zoo.engine import engine_for

    engine = engine_for(load_model(args.bundle)[0])
    cache = engine.new_cache(args.slots)
    print(f"{keras.backend.backend()}, {Path(args.bundle).name}, a cache of {args.slots} slots; ms for all the "
          f"prompts, best of {args.rounds} x {args.repeats}\n")
    print("| prompt tokens | prompts | one at a time | together | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for length in args.lengths:
        for count in args.counts:
            prompts = [[(7 * row + i) % 50 + 1 for i in range(length)] for row in range(count)]

            def alone(cache):
                for slot, ids in enumerate(prompts):
                    cache = engine.prefill_slot(cache, slot, ids)[1]
                return cache

            def together(cache):
                return engine.prefill_slots(cache, range(count), prompts)[1]

            best = {alone: float("inf"), together: float("inf")}
            cache = together(alone(cache))  # compiles both
            for _ in range(args.rounds):
                for way in best:
                    start = time.perf_counter()
                    for _ in range(args.repeats):
                        cache = way(cache)
                    best[way] = min(best[way], (time.perf_counter() - start) / args.repeats * 1000)
            print(f"| {length} | {count} | {best[alone]:.2f} | {best[together]:.2f} | "
                  f"{best[alone] / best[together]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
