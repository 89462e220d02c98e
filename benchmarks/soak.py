"""Soak test: N concurrent clients mixing Generate, GenerateStream and Classify against a real
`zoo serve` for T seconds (or R requests), printing the requests, the count of each status, p50
and p99 latency per method, and the server's resident memory at the start and end (and its peak).

    python benchmarks/soak.py --generator bundles/shakespeare --classifier bundles/language-id \\
        --clients 64 --requests 50000 --backend jax

The clients are grpc.aio tasks in this one process. Every request is valid: a status other than
OK is a finding (RESOURCE_EXHAUSTED means the generation queue was full: raise --max-queue).
With --server HOST:PORT it soaks a running server instead (its memory is then not read). --tls-ca
and --token make the clients connect as to a secured server (give the server's flags with
--serve-flag, e.g. --serve-flag=--tls-cert=server.pem --serve-flag=--tls-key=server.key
--serve-flag=--auth-tokens=tokens.txt).
"""

import argparse
import asyncio
import collections
import random
import shutil
import tempfile
import time
from pathlib import Path

import grpc
from serving import start_server

from server.client import generate_request
from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.gen.zoo.v1 import model_pb2 as mpb
from server.tls import channel_credentials

PROMPTS = ["ROMEO.", "To be, or not", "KING HENRY.", "What light", "O, speak again", "My lord,"]
TEXTS = ["Mot de passe oublié", "Passwort zurücksetzen", "Show all results", "Muéstrame el pedido", "grazie mille",
         "Where is my order?", "Bonjour à tous"]


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def soak(address, args, server_pid):
    latencies = collections.defaultdict(list)
    statuses = collections.Counter()
    done = 0
    began = time.monotonic()
    deadline = began + args.seconds
    peak = rss_mib(server_pid) if server_pid else None
    rng = random.Random(0)

    def more():
        return done < args.requests and time.monotonic() < deadline

    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else None
    channel = grpc.aio.secure_channel(address, channel_credentials(args.tls_ca)) if args.tls_ca else \
        grpc.aio.insecure_channel(address)
    async with channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def one(method):
            if method == "Classify":
                request = pb.ClassifyRequest(model_spec=mpb.ModelSpec(name="classifier"),
                                             texts=rng.sample(TEXTS, rng.randint(1, 4)))
                await stub.Classify(request, timeout=120, metadata=metadata)
                return
            request = generate_request("generator", rng.choice(PROMPTS), max_new_tokens=args.max_new_tokens,
                                       temperature=rng.choice([0.0, 0.8]), seed=rng.randrange(1 << 30))
            if method == "Generate":
                await stub.Generate(request, timeout=120, metadata=metadata)
            else:
                async for _ in stub.GenerateStream(request, timeout=120, metadata=metadata):
                    pass

        async def client():
            nonlocal done
            while more():
                method = rng.choice(["Generate", "GenerateStream", "Classify"])
                start = time.monotonic()
                try:
                    await one(method)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
                latencies[method].append(time.monotonic() - start)
                statuses[code] += 1
                done += 1

        async def progress():
            nonlocal peak
            while more():
                await asyncio.sleep(args.report_every)
                if server_pid:
                    peak = max(peak, rss_mib(server_pid))
                elapsed = time.monotonic() - began
                rate = done / elapsed
                eta = min(args.seconds - elapsed, (args.requests - done) / rate if rate else float("inf"))
                print(f"{elapsed:6.0f}s  {done:7d} requests  {rate:6.1f}/s  statuses {dict(statuses)}  "
                      f"ETA {max(eta, 0):.0f}s", flush=True)

        reporter = asyncio.create_task(progress())
        await asyncio.gather(*(client() for _ in range(args.clients)))
        reporter.cancel()
    return time.monotonic() - began, done, statuses, latencies, peak


def repository(generator, classifier):
    repo = Path(tempfile.mkdtemp(prefix="zoo-soak-"))
    shutil.copytree(generator, repo / "generator" / "1")
    shutil.copytree(classifier, repo / "classifier" / "1")
    return repo


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", help="A generation bundle (served as 'generator').")
    parser.add_argument("--classifier", help="A classification bundle (served as 'classifier').")
    parser.add_argument("--server", help="Soak a running server at HOST:PORT serving 'generator' and 'classifier'.")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--requests", type=int, default=50_000, help="Stop after this many (or --seconds).")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--report-every", type=float, default=10)
    parser.add_argument("--tls-ca", help="Connect with TLS, verifying the server with this PEM CA.")
    parser.add_argument("--token", help="Send this bearer token.")
    parser.add_argument("--serve-flag", action="append", default=[], help="Extra `zoo serve` flag (repeatable).")
    args = parser.parse_args()

    process = None
    if args.server:
        address = args.server
    else:
        if not (args.generator and args.classifier):
            parser.error("give --generator and --classifier bundles, or --server")
        repo = repository(args.generator, args.classifier)
        process, address = start_server(repo, args.backend, "--decode-slots", "32", "--max-queue", "256",
                                        *args.serve_flag)
    pid = process.pid if process else None
    start_rss = rss_mib(pid) if pid else None
    try:
        seconds, done, statuses, latencies, peak = asyncio.run(soak(address, args, pid))
        end_rss = rss_mib(pid) if pid else None
        peak = max(peak, end_rss) if pid else None
    finally:
        if process:
            process.terminate()
            process.wait(60)
    print(f"\n{done} requests in {seconds:.0f}s ({done / seconds:.1f}/s) from {args.clients} concurrent clients "
          f"on {args.backend if process else address}")
    print("statuses: " + ", ".join(f"{code} {count}" for code, count in statuses.most_common()))
    print(f"{'method':<16}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for method, values in sorted(latencies.items()):
        print(f"{method:<16}{len(values):>10}{percentile(values, 0.5) * 1000:>10.1f}"
              f"{percentile(values, 0.99) * 1000:>10.1f}")
    every = [v for values in latencies.values() for v in values]
    print(f"{'all':<16}{len(every):>10}{percentile(every, 0.5) * 1000:>10.1f}{percentile(every, 0.99) * 1000:>10.1f}")
    if pid:
        print(f"server RSS: {start_rss:.0f} MiB at the start, {end_rss:.0f} MiB at the end "
              f"({end_rss - start_rss:+.0f} MiB), peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
