"""Aggregate generation tokens/s through `zoo serve` with 1, 4 and 16 concurrent GenerateStream
clients, with continuous batching (`--decode-slots 16`) and without it (`--decode-slots 1`: one
request decodes at a time, the others queue), side by side; with `--decode-steps N`, also
continuous batching that runs N greedy steps a turn (`zoo serve --decode-steps`).

For each setting, starts a real server on a free loopback port serving BUNDLE (a GPT bundle) and,
for each stream count, runs that many client threads, each streaming greedy generations of
--max-new-tokens from its own prompt one after another for --seconds. Tokens are counted as their
chunks arrive (the streams still running at the end are cancelled), over the wall time.

    python benchmarks/stream_throughput.py BUNDLE [--streams 1 4 16] [--seconds 20] [--backend jax]
    python benchmarks/stream_throughput.py BUNDLE --decode-steps 8
"""

import argparse
import os
import sys
import time
from pathlib import Path

from serving import ROOT, run_threads, start_server

PROMPTS = ["ROMEO.", "KING HENRY.", "First Citizen:", "To be, or not", "O", "Now is the winter", "JULIET.",
           "What light", "Friends, Romans", "All the world", "HAMLET.", "The quality of mercy", "LEAR.",
           "Once more unto", "If music be", "Good night"]


def tokens_per_second(address, name, streams, seconds, max_new_tokens):
    from server.client import ZooClient

    with ZooClient(address, timeout=600) as client:
        client.generate(name, "ROMEO.", temperature=0, max_new_tokens=4)  # warm-up
        counts, stop_at = [0] * streams, time.monotonic() + seconds

        def work(i):
            while time.monotonic() < stop_at:
                stream = client.stream(name, PROMPTS[i % len(PROMPTS)], temperature=0, max_new_tokens=max_new_tokens)
                for message in stream:
                    if time.monotonic() >= stop_at:
                        stream.cancel()
                        break
                    counts[i] += len(message.chunk.token_ids)

        seconds = run_threads(work, streams)
        return sum(counts) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--decode-steps", type=int, help="also a continuously batched server with this many "
                                                         "greedy steps a turn")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    name = Path(args.bundle).resolve().name
    slots = max(args.streams)
    settings = ((f"continuous batching ({slots} slots)", ["--decode-slots", str(slots)]),
                ("one at a time (1 slot)", ["--decode-slots", "1"]))
    if args.decode_steps:
        settings += ((f"continuous, {args.decode_steps} steps a turn", ["--decode-slots", str(slots), "--decode-steps",
                                                                         str(args.decode_steps)]),)
    results = {}
    for setting, flags in settings:
        server, address = start_server(args.bundle, args.backend, *flags)
        try:
            for streams in args.streams:
                rate = tokens_per_second(address, name, streams, args.seconds, args.max_new_tokens)
                results[(setting, streams)] = rate
                print(f"{setting:>34}, {streams:>2} streams: {rate:8.1f} tokens/s", flush=True)
        finally:
            server.terminate()
            server.wait()
    low, high = min(args.streams), max(args.streams)
    print(f"\nbackend {args.backend}, greedy, {args.max_new_tokens} new tokens a request, {args.seconds:g} s each")
    print("| server | " + " | ".join(f"{n} streams" for n in args.streams) + f" | {high} / {low} |")
    print("| --- |" + " --- |" * (len(args.streams) + 1))
    for setting, _ in settings:
        cells = " | ".join(f"{results[(setting, n)]:.1f} tok/s" for n in args.streams)
        print(f"| {setting} | {cells} | {results[(setting, high)] / results[(setting, low)]:.2f}x |")
    on, off = (results[(setting, high)] for setting, _ in settings[:2])
    print(f"{high} streams, continuous batching / one at a time = {on / off:.2f}x")


if __name__ == "__main__":
    main()
