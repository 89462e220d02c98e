"""The server process: `zoo serve` calls `run`.

Loads the model repository (server/reload.py: verified, built and warmed up per version), and
serves `zoo.v1.InferenceService` with the standard health and reflection services beside it,
Prometheus metrics on their own port if asked, and the OpenAI-compatible HTTP API
(server/http_api.py) on its own port if asked, on this event loop and over the same servicer;
every RPC passes the gate (server/gate.py: token, size, decoding). The repository is re-read
every `poll_seconds` and on SIGHUP (with the token file). On SIGTERM or SIGINT it drains: health
turns NOT_SERVING, new RPCs (and HTTP requests) get UNAVAILABLE (503), and those in flight may
finish within the grace period.
"""

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server import metrics_http, tls
from server.auth import Tokens
from server.drafts import Drafts
from server.gate import Gate
from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.limits import Limits
from server.reload import Reloader, VersionPolicy
from server.repository import Repository, scan
from server.runtimes import Settings
from server.service import InferenceServicer
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


@dataclasses.dataclass(frozen=True)
class Security:
    """TLS files (`cert` and `key`; `client_ca`: require client certificates signed by it), the
    token file, and whether health needs a token too."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None
    tokens: str | None = None
    auth_health: bool = False

    def check(self):
        if (self.cert is None) != (self.key is None):
            raise ZooError("--tls-cert and --tls-key go together: give both, or neither")
        if self.client_ca is not None and self.cert is None:
            raise ZooError("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")
        if self.auth_health and self.tokens is None:
            raise ZooError("--auth-health needs --auth-tokens")


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(path, host="127.0.0.1", port=8500, grace_period=10.0, metrics_port=None, step_delay=0.0,
                workers=8, batching=None, generation=None, warmup=True, torch_threads=None, security=Security(),
                limits=Limits(), version_policy="all", poll_seconds=0.0, http_port=None, drafts=None, draft_tokens=4):
    """Serves the repository at `path` until SIGTERM or SIGINT; then stops accepting RPCs, lets
    those in flight finish for up to `grace_period` seconds, and returns.

    `batching`: DynamicBatcher settings for Classify/Embed (max_batch_size, max_delay, enabled).
    `generation`: ContinuousBatcher settings for continuously batched generation (slots, max_queue, decode_steps).
    `warmup`: compile every decode engine's functions before a version serves.
    `torch_threads`: torch's intra-op threads (default: all cores but one; see `cpu_threads_for_torch`).
    `security`: Security; `limits`: server.limits.Limits; `version_policy`: all, latest:N or
    specific:V,...; `poll_seconds`: re-read the repository this often (0: only on SIGHUP).
    `http_port`: also serve the OpenAI-compatible HTTP API there (0: a free port; None: off).
    `drafts`: {model name: draft run or bundle} for speculative decoding, `draft_tokens` per pass.
    """
    security.check()  # every setting is checked before the slow imports
    policy = VersionPolicy.parse(version_policy)
    tokens = Tokens(security.tokens) if security.tokens else None
    credentials = tls.server_credentials(security.cert, security.key, security.client_ca) if security.cert else None
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(torch_threads or cpu_threads_for_torch())
        log.info("torch: %d intra-op threads", torch.get_num_threads())
    if credentials is None and not is_loopback(host):
        log.warning("WARNING: serving plain-text gRPC on %s, beyond this machine: anyone on the network can read "
                    "and send requests; use --tls-cert/--tls-key (and --auth-tokens)", host)

    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo-model")
    repository = Repository()
    health = health_aio.HealthServicer()
    statuses = {}

    async def update_health(names):  # a model serves while any version of it does
        for name in names:
            status = health_pb2.HealthCheckResponse.SERVING if repository.versions(name) else \
                health_pb2.HealthCheckResponse.NOT_SERVING
            if statuses.get(name) != status:
                statuses[name] = status
                await health.set(name, status)

    draft_models = None
    if drafts:
        draft_models = Drafts(drafts, draft_tokens)
        draft_models.load()
        draft_models.check_names({found.name for found in scan(path)})
    log.info("loading %s on backend %s (version policy %s)", path, backend, policy)
    reloader = Reloader(path, policy, repository, Settings(executor, step_delay, batching or {}, generation or {},
                                                           draft_models),
                        ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-loader"), warmup, update_health)
    await reloader.reconcile()
    if not repository.names():
        raise ZooError(f"{path}: no model version could be loaded (see the errors above)")

    servicer = InferenceServicer(repository, backend, limits)
    server = grpc.aio.server(interceptors=[Gate(limits, tokens, security.auth_health)],
                             options=[("grpc.so_reuseport", 0), *limits.grpc_options()])
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as e:
        raise ZooError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise ZooError(f"cannot listen on {address} (in use, or not a local address?)")
    ssl_context = tls.server_context(security.cert, security.key, security.client_ca) if security.cert else None
    http = None
    if http_port is not None:  # before gRPC starts: a port that cannot be had stops the server cleanly
        try:  # aiohttp is imported only by servers that serve HTTP
            from server.http_api import HttpApi
        except ModuleNotFoundError as e:
            raise ZooError(f"--http-port needs {e.name} (pip install aiohttp)") from None
        http = HttpApi(servicer, limits, tokens)
        http_bound = await http.start(host, http_port, ssl_context)
    await server.start()
    for status_name in ["", SERVICE_NAME]:
        await health.set(status_name, health_pb2.HealthCheckResponse.SERVING)
    if http is not None:
        log.info("HTTP API on %s://%s:%d/v1 (OpenAI-compatible%s)", "https" if ssl_context else "http", host,
                 http_bound, ", token required" if tokens else "")
    if metrics_port is not None:
        metrics = metrics_http.start(host, metrics_port, tokens, ssl_context)
        log.info("metrics on %s://%s:%d/metrics%s", "https" if ssl_context else "http", host, metrics,
                 " (token required)" if tokens else "")
    for name in repository.names():
        log.info("model %s: versions %s (default %d) on backend %s", name,
                 ", ".join(map(str, repository.versions(name))), max(repository.versions(name)), backend)
    log.info("serving %s on %s:%d (%s%s)", SERVICE_NAME, host, bound,
             ("mutual TLS" if security.client_ca else "TLS") if credentials else "plain text",
             ", token required" if tokens else "")

    stop, reread = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def hangup():
        log.info("SIGHUP: re-reading the repository%s", " and the token file" if tokens else "")
        if tokens is not None:
            try:
                log.info("token file %s: %d tokens", tokens.path, tokens.reload())
            except ZooError as error:
                log.error("%s; the tokens already loaded stay in force", error)
        reread.set()

    loop.add_signal_handler(signal.SIGHUP, hangup)
    watcher = loop.create_task(reloader.watch(poll_seconds, reread))
    await stop.wait()
    log.info("shutting down: no new requests; waiting up to %gs for those in flight", grace_period)
    watcher.cancel()
    servicer.draining = True
    await health.enter_graceful_shutdown()
    await asyncio.gather(server.stop(grace_period), *([http.stop(grace_period)] if http else []))
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")


def cpu_threads_for_torch():
    """All the cores this process may use but one, which is left to gRPC, the event loop and the
    scheduler. With torch's OpenMP team on every core, each of those wakes stalled a whole team:
    on 2 cores, one stream ran at 122 tokens/s with 2 threads and 178 with 1 (16 streams: 580 and 770)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores - 1)


def run(path, host="127.0.0.1", port=8500, **kwargs):
    """Runs `serve` in a new event loop, with start-up and shutdown logged to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s zoo serve: %(message)s"))
    for name in ("zoo.serve", "zoo"):  # the server's log, and the library's warnings
        logger = logging.getLogger(name)
        logger.handlers = [handler]  # not one more per call (tests call `zoo serve` in one process)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    asyncio.run(serve(path, host, port, **kwargs))
