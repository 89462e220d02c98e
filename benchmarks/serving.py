"""Starting a real `zoo serve` process for the serving benchmarks."""

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_server(bundle, backend, *flags):
    """(process, address) of `zoo serve BUNDLE` on a free loopback port, once it serves."""
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(bundle), "--port", "0",
                               "--backend", backend, *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        if match := re.search(r"serving \S+ on ([\d.]+:\d+)", line):
            threading.Thread(target=lambda: server.stderr.read(), daemon=True).start()  # keep the pipe drained
            return server, match.group(1)
    raise SystemExit("the server exited before serving")


def run_threads(work, count):
    """Runs work(i) on `count` threads at once, i = 0 .. count-1; returns the wall seconds."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - began
