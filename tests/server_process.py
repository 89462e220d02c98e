"""`zoo serve` in a subprocess on a loopback port, for the server tests."""

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

from conftest import ROOT


class ServerProcess:
    """`zoo serve PATH --port 0` in a subprocess; the address, the metrics port and (with
    `--http-port` among `args`) the HTTP API's port are read from its log (`http_port`: None without)."""

    def __init__(self, path, *args, backend, timeout=180):
        env = {**os.environ, "KERAS_BACKEND": backend}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", str(path), "--port", "0", "--metrics-port", "0", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        self.address = self.metrics_port = self.http_port = None
        while self.address is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("zoo serve did not start:\n" + self.log[-5000:])
            for line in list(self.lines):
                if m := re.search(r"HTTP API on https?://127\.0\.0\.1:(\d+)/v1", line):
                    self.http_port = int(m.group(1))
                if m := re.search(r"metrics on https?://127\.0\.0\.1:(\d+)/", line):
                    self.metrics_port = int(m.group(1))
                if m := re.search(r"serving zoo\.v1\.InferenceService on (127\.0\.0\.1:\d+)", line):
                    self.address = m.group(1)
            time.sleep(0.1)

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def log(self):
        return "".join(self.lines)

    def metric(self, name, **labels):
        """The value of a Prometheus sample from the server's /metrics (0 if absent)."""
        text = self.metrics_text()
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def metrics_text(self, headers=None, context=None):
        """The /metrics page (https with an ssl `context`)."""
        scheme = "https" if context is not None else "http"
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{self.metrics_port}/metrics", headers=headers or {})
        return urllib.request.urlopen(request, timeout=10, context=context).read().decode()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
