"""Classify requests/s through `zoo serve`, with dynamic batching on and off, side by side.

For each setting, starts a real server on a free loopback port serving BUNDLE (a classifier),
then for each client count (1 and 32) sends one-text Classify requests from that many concurrent
threads for `--seconds` and counts the completed requests. Prints requests/s and the ratios.

    python benchmarks/classify_throughput.py BUNDLE [--seconds 20] [--clients 1 32] [--backend jax]
"""

import argparse
import os
import sys
import time
from pathlib import Path

from serving import ROOT, run_threads, start_server
TEXTS = ["Mot de passe oublié", "Passwort zurücksetzen", "Show all results", "Ver todos los resultados",
         "Nascondi i conteggi", "Voer twee geldige datums in", "Mostrar todos os resultados"]


def requests_per_second(address, name, clients, seconds):
    from server.client import ZooClient

    with ZooClient(address, timeout=60) as client:
        for text in TEXTS:  # warm up: compile every shape a single request uses
            client.classify(name, [text])
        done, stop_at = [0] * clients, time.monotonic() + seconds

        def work(i):
            while time.monotonic() < stop_at:
                client.classify(name, [TEXTS[(i + done[i]) % len(TEXTS)]])
                done[i] += 1

        seconds = run_threads(work, clients)
        return sum(done) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    name = Path(args.bundle).resolve().name
    results = {}
    for setting, flags in (("batching on", []), ("batching off", ["--no-dynamic-batching"])):
        server, address = start_server(args.bundle, args.backend, *flags)
        try:
            for clients in args.clients:
                results[(setting, clients)] = requests_per_second(address, name, clients, args.seconds)
                print(f"{setting:>13}, {clients:>2} clients: {results[(setting, clients)]:8.1f} requests/s", flush=True)
        finally:
            server.terminate()
            server.wait()
    low, high = min(args.clients), max(args.clients)
    print(f"\nbackend {args.backend}, {args.seconds:g} s per measurement")
    for setting in ("batching on", "batching off"):
        print(f"{setting}: {high} clients / {low} client = {results[(setting, high)] / results[(setting, low)]:.2f}x")
    print(f"{high} clients, batching on / off = {results[('batching on', high)] / results[('batching off', high)]:.2f}x")


if __name__ == "__main__":
    main()
