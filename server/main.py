"""The server process: `zoo serve` calls `run`.

Loads the model repository, builds a runtime per model version (server/runtimes.py), compiles
the decode engines before serving (warm-up), and serves `zoo.v1.InferenceService` with the
standard health and reflection services beside it, and Prometheus metrics on their own port if
asked. On SIGTERM or SIGINT it drains: health turns NOT_SERVING, new RPCs get UNAVAILABLE, and
those in flight may finish within the grace period.
"""

import asyncio
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.repository import Repository
from server.runtimes import Settings, build
from server.service import InferenceServicer
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


async def serve(path, host="127.0.0.1", port=8500, grace_period=10.0, metrics_port=None, step_delay=0.0,
                workers=8, batching=None, generation=None, warmup=True, torch_threads=None):
    """Loads the repository at `path` and serves it until SIGTERM or SIGINT; then stops accepting
    RPCs, lets those in flight finish for up to `grace_period` seconds, and returns.

    `batching`: DynamicBatcher settings for Classify/Embed (max_batch_size, max_delay, enabled).
    `generation`: ContinuousBatcher settings for continuously batched generation (slots, max_queue).
    `warmup`: compile every decode engine's functions before serving (no compile on a first request).
    `torch_threads`: torch's intra-op threads (default: all cores but one; see `cpu_threads_for_torch`).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(torch_threads or cpu_threads_for_torch())
        log.info("torch: %d intra-op threads", torch.get_num_threads())
    Repository.scan(path)  # a bad path fails before anything loads
    log.info("loading %s on backend %s", path, backend)
    repository = Repository.load(path, log=log.info)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo-model")
    runtimes = build(repository, Settings(executor, step_delay, batching or {}, generation or {}))
    if warmup:
        for (name, version), runtime in runtimes.items():
            compiled = runtime.warmup()
            if compiled is not None:
                log.info("model %s version %d: decode engine compiled in %.1fs (%d functions)", name, version,
                         *compiled)
    servicer = InferenceServicer(repository, runtimes, backend)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ZooError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise ZooError(f"cannot listen on {address} (in use, or not a local address?)")
    await server.start()
    for status_name in ["", SERVICE_NAME, *repository.names()]:
        await health.set(status_name, health_pb2.HealthCheckResponse.SERVING)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics_server, _ = start_http_server(metrics_port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, metrics_server.server_port)
    for name in repository.names():
        log.info("model %s: versions %s (serving %d) on backend %s", name,
                 ", ".join(map(str, repository.versions(name))), max(repository.versions(name)), backend)
    log.info("serving %s on %s:%d", SERVICE_NAME, host, bound)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new requests; waiting up to %gs for those in flight", grace_period)
    servicer.draining = True
    await health.enter_graceful_shutdown()
    await server.stop(grace_period)
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
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    asyncio.run(serve(path, host, port, **kwargs))
