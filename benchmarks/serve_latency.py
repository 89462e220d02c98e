"""Latency of a `Generate` call through `zoo serve` next to the same generation in-process.

Starts a real server process on a free loopback port serving BUNDLE, makes N greedy Generate
calls one after another, then runs the same generation N times in this process with the same
engine; prints p50/p90 of both and their ratio.

    python benchmarks/serve_latency.py BUNDLE [--calls 100] [--max-new-tokens 32] [--backend jax]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from serving import ROOT, start_server


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--prompt", default="ROMEO.")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    sys.path.insert(0, str(ROOT))

    server, address = start_server(args.bundle, args.backend)
    try:
        from server.client import ZooClient

        name = Path(args.bundle).name
        remote = []
        with ZooClient(address, timeout=120) as client:
            client.generate(name, args.prompt, temperature=0, max_new_tokens=args.max_new_tokens)  # warm-up
            for _ in range(args.calls):
                start = time.perf_counter()
                response = client.generate(name, args.prompt, temperature=0, max_new_tokens=args.max_new_tokens)
                remote.append(time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=60)

    from zoo.bundle import load_model
    from zoo.engine import SamplingConfig
    from zoo.families.gpt.generator import Generator

    model, tokenizer, _ = load_model(args.bundle)
    generator = Generator(model, tokenizer)
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0)
    generator.generate(args.prompt, config)  # warm-up
    local = []
    for _ in range(args.calls):
        start = time.perf_counter()
        result = generator.generate(args.prompt, config)
        local.append(time.perf_counter() - start)
    assert result.text == response.text, "server and in-process text differ"

    print(f"backend {args.backend}, {args.calls} greedy calls of {len(result.token_ids)} new tokens, one at a time")
    print(f"{'':<12} {'p50 ms':>8} {'p90 ms':>8} {'mean ms':>8}")
    for label, times in (("gRPC", remote), ("in-process", local)):
        print(f"{label:<12} {1000 * percentile(times, 0.5):>8.1f} {1000 * percentile(times, 0.9):>8.1f} "
              f"{1000 * statistics.mean(times):>8.1f}")
    print(f"gRPC / in-process p50: {percentile(remote, 0.5) / percentile(local, 0.5):.3f}")


if __name__ == "__main__":
    main()
