"""Does the HTTP API slow gRPC down? gRPC GenerateStream tokens/s with and without concurrent
HTTP /v1/completions traffic on the same `zoo serve` process (one event loop serves both).

Starts one real server (`--http-port 0`) on BUNDLE, a GPT bundle, or without one on a tiny GPT
it trains and exports first (about 30 s). Then alternates, --rounds times:
  A: --streams gRPC clients, each streaming greedy generations of --max-new-tokens one after
     another for --seconds; tokens counted as their chunks arrive;
  B: the same, while --http-clients threads of another process (so that the clients do not share
     one interpreter lock) post non-streamed /v1/completions of the same size back to back;
  C: the same as B with that extra load sent as gRPC Generate calls instead.
Prints gRPC tokens/s of each phase and the extra load's beside B's and C's. The extra requests
share the decode slots (--decode-slots, default 8 >= streams + clients) whichever way they come,
so B's gRPC figure falls below A's by the decode work they add; what serving HTTP itself costs
the gRPC side is B against C: the same work arriving over HTTP instead of gRPC.

    python benchmarks/http_interference.py [BUNDLE] [--streams 4] [--http-clients 2] [--seconds 10]
"""

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream_throughput import tokens_per_second  # noqa: E402 (the same measurement as that benchmark)
PROMPTS = ["ROMEO.", "KING HENRY.", "First Citizen:", "To be, or not", "JULIET.", "What light", "HAMLET.", "LEAR."]
TINY_GPT = ["--num-layers", "2", "--num-heads", "2", "--hidden-dim", "64", "--intermediate-dim", "128",
            "--max-length", "128", "--vocab-size", "300", "--batch-size", "8", "--max-steps", "30"]


def zoo(*args):
    subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def tiny_bundle(directory):
    """A tiny GPT trained for 30 steps on the shipped corpus's first 150 KB, exported."""
    corpus = directory / "corpus.txt"
    corpus.write_text((ROOT / "zoo/data/corpora/shakespeare.txt").read_text(encoding="utf-8")[:150_000])
    zoo("train", "gpt", "--data", corpus, "--out", directory / "run", *TINY_GPT)
    zoo("export", directory / "run", "--out", directory / "tiny")
    return directory / "tiny"


def start_server(bundle, backend, *flags):
    """(process, gRPC address, HTTP port) of `zoo serve BUNDLE --http-port 0`, once it serves."""
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(bundle), "--port", "0", "--http-port",
                               "0", "--backend", backend, *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    http_port = None
    for line in server.stderr:
        if match := re.search(r"HTTP API on http://[\d.]+:(\d+)/v1", line):
            http_port = int(match.group(1))
        if match := re.search(r"serving \S+ on ([\d.]+:\d+)", line):
            threading.Thread(target=server.stderr.read, daemon=True).start()  # keep the pipe drained
            return server, match.group(1), http_port
    raise SystemExit("the server exited before serving")


def extra_load(via, target, name, clients, max_new_tokens, ready, stop, tokens):
    """In its own process: `clients` threads asking for completions until `stop`, over HTTP
    (`target`: the port) or gRPC (`target`: the address); adds the tokens generated to `tokens`
    (a shared value) and sets `ready` after the first answer."""
    sys.path.insert(0, str(ROOT))
    from server.client import ZooClient

    client = ZooClient(target, timeout=600) if via == "grpc" else None

    def work(i):
        prompt = PROMPTS[(i + 3) % len(PROMPTS)]
        body = json.dumps({"model": name, "prompt": prompt, "temperature": 0, "max_tokens": max_new_tokens}).encode()
        while not stop.is_set():
            if client is not None:
                generated = client.generate(name, prompt, temperature=0, max_new_tokens=max_new_tokens).usage
                generated = generated.generated_tokens
            else:
                request = urllib.request.Request(f"http://127.0.0.1:{target}/v1/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=600) as response:
                    generated = json.loads(response.read())["usage"]["completion_tokens"]
            with tokens.get_lock():
                tokens.value += generated
            ready.set()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def with_traffic(args, address, via, target, name):
    """(gRPC tokens/s, the extra load's tokens/s) of a phase B (`via` "http") or C ("grpc")."""
    context = multiprocessing.get_context("spawn")
    ready, stop, tokens = context.Event(), context.Event(), context.Value("q", 0)
    load = context.Process(target=extra_load, args=(via, target, name, args.http_clients, args.max_new_tokens, ready,
                                                    stop, tokens))
    load.start()
    try:
        if not ready.wait(120):
            raise SystemExit(f"the {via} traffic never got an answer")
        before, began = tokens.value, time.monotonic()
        grpc_rate = tokens_per_second(address, name, args.streams, args.seconds, args.max_new_tokens)
        http_rate = (tokens.value - before) / (time.monotonic() - began)
    finally:
        stop.set()
        load.join(120)
    return grpc_rate, http_rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", help="a GPT bundle (default: train a tiny one first)")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--http-clients", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="A/B pairs")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="zoo-http-bench-") as scratch:
        bundle = Path(args.bundle) if args.bundle else tiny_bundle(Path(scratch))
        name = bundle.resolve().name
        server, address, port = start_server(bundle, args.backend)
        try:
            tokens_per_second(address, name, args.streams, 2, args.max_new_tokens)  # warm-up
            phases = {"A": [], "B": [], "C": []}
            extra = {"B": [], "C": []}
            for round_ in range(1, args.rounds + 1):
                phases["A"].append(tokens_per_second(address, name, args.streams, args.seconds,
                                                          args.max_new_tokens))
                print(f"round {round_} A: gRPC {phases['A'][-1]:8.1f} tokens/s alone", flush=True)
                for phase, via, target in (("B", "http", port), ("C", "grpc", address)):
                    grpc_rate, extra_rate = with_traffic(args, address, via, target, name)
                    phases[phase].append(grpc_rate)
                    extra[phase].append(extra_rate)
                    print(f"round {round_} {phase}: gRPC {grpc_rate:8.1f} tokens/s beside {via} {extra_rate:8.1f} "
                          f"tokens/s (total {grpc_rate + extra_rate:.1f})", flush=True)
        finally:
            server.terminate()
            server.wait(60)
    a, b, c = (sum(v) / len(v) for v in phases.values())
    hb, hc = (sum(v) / len(v) for v in extra.values())
    print(f"\nbackend {args.backend}, {args.streams} gRPC streams, {args.http_clients} extra clients, greedy, "
          f"{args.max_new_tokens} new tokens a request, {args.seconds:g} s a phase, {args.rounds} rounds")
    print(f"A gRPC streams alone:                {a:8.1f} tokens/s")
    print(f"B gRPC streams beside HTTP clients:  {b:8.1f} tokens/s (HTTP {hb:.1f}, total {b + hb:.1f})")
    print(f"C gRPC streams beside gRPC clients:  {c:8.1f} tokens/s (gRPC {hc:.1f}, total {c + hc:.1f})")
    print(f"B / C = {b / c:.2f}: the gRPC streams with the extra load over HTTP rather than gRPC "
          f"(extra load B / C = {hb / hc:.2f}); B / A = {b / a:.2f}")


if __name__ == "__main__":
    main()
