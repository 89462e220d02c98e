"""`zoo serve`: the gRPC server."""

import click

from cli.common import backend_option


@click.command()
@backend_option
@click.argument("path", metavar="BUNDLE_OR_REPO", type=click.Path())
@click.option("--port", type=click.IntRange(0, 65535), default=8500, show_default=True,
              help="Port to listen on; 0 picks a free one (logged).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; 0.0.0.0 for every interface.")
@click.option("--grace-period", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="On SIGTERM, seconds to let in-flight requests finish.")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics on this port (0 picks a free one); default off.")
@click.option("--step-delay", type=click.FloatRange(min=0), default=0.0, hidden=True,
              help="Sleep this many seconds before each decode step (for tests and demos of cancellation).")
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Classify/Embed: most texts one forward pass takes from concurrent requests.")
@click.option("--max-batch-delay-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Classify/Embed: how long the first request of a batch waits for others to join.")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
              help="Classify/Embed: batch concurrent requests together, or run each alone.")
@click.option("--decode-slots", type=click.IntRange(1, 256), default=8, show_default=True,
              help="GPT generation: requests decoded together (continuous batching); more wait in the queue.")
@click.option("--max-queue", type=click.IntRange(0), default=64, show_default=True,
              help="GPT generation: requests that may wait for a slot; beyond, RESOURCE_EXHAUSTED.")
@click.option("--torch-threads", type=click.IntRange(1),
              help="Torch backend: threads a model call may use; default all cores but one, left to gRPC.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Compile the GPT decode engines before serving, so no request waits for a compile.")
def serve(path, port, host, grace_period, metrics_port, step_delay, max_batch_size, max_batch_delay_ms,
          dynamic_batching, decode_slots, max_queue, torch_threads, warmup):
    """Serve a bundle or a model repository over gRPC (zoo.v1.InferenceService, health, reflection).

    BUNDLE_OR_REPO is one bundle (served under its directory name as version 1) or a repository
    REPO/<name>/<version>/ of bundles; a model's highest version serves unless a request names one.
    SIGTERM or Ctrl-C stops accepting requests and lets those in flight finish.

    \b
    Example:
      zoo serve bundles/shakespeare --port 8500
      zoo serve models/ --host 0.0.0.0 --backend torch --metrics-port 9100
      zoo serve bundles/language-id --max-batch-size 64 --max-batch-delay-ms 2
      zoo serve bundles/shakespeare --decode-slots 16 --max-queue 256
    """
    from server.main import run

    run(path, host=host, port=port, grace_period=grace_period, metrics_port=metrics_port, step_delay=step_delay,
        batching=dict(max_batch_size=max_batch_size, max_delay=max_batch_delay_ms / 1000, enabled=dynamic_batching),
        generation=dict(slots=decode_slots, max_queue=max_queue), warmup=warmup,
        torch_threads=torch_threads)
