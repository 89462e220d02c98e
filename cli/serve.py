"""`zoo serve`: the gRPC server (and, with --http-port, the OpenAI-compatible HTTP API)."""

import click

from cli.common import backend_option
from server.limits import Limits


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
@click.option("--http-port", type=click.IntRange(0, 65535),
              help="Also serve the OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/embeddings, "
                   "/v1/classify) on this port (0 picks a free one), in the same process, with the same TLS, tokens "
                   "and caps; default off.")
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
@click.option("--decode-steps", type=click.IntRange(1, 64), default=1, show_default=True,
              help="GPT generation: while every request decoding is greedy and none waits, run up to this many steps "
                   "in one call (a loop on the device: the host's round trip once per chunk; pays where a step is "
                   "short, as on a GPU); new requests wait for the chunk, tokens stream in bursts.")
@click.option("--draft", "drafts", metavar="NAME=RUN_OR_BUNDLE", multiple=True, callback=lambda ctx, param, value:
              _drafts(value), help="Speculative decoding for model NAME (repeatable): a small gpt model with the same "
                                   "tokenizer proposes tokens it checks several at a time; its requests then run one "
                                   "at a time instead of continuously batched (lower latency at low load).")
@click.option("--draft-tokens", type=click.IntRange(1, 16), default=4, show_default=True,
              help="With --draft: tokens a draft proposes per pass of its model.")
@click.option("--torch-threads", type=click.IntRange(1),
              help="Torch backend: threads a model call may use; default all cores but one, left to gRPC.")
@click.option("--warmup/--no-warmup", default=True, show_default=True,
              help="Compile a version's decode engine before it serves, so no request waits for a compile.")
@click.option("--version-policy", default="all", show_default=True, metavar="all|latest:N|specific:V,...",
              help="Versions of each model to serve (as in TF Serving).")
@click.option("--poll-seconds", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Re-read the repository this often (new versions load, removed ones unload); 0: only on SIGHUP.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate chain: serve TLS (with --tls-key).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert.")
@click.option("--tls-client-ca", type=click.Path(dir_okay=False),
              help="PEM CA certificates: require client certificates signed by them (mutual TLS).")
@click.option("--auth-tokens", type=click.Path(dir_okay=False),
              help="File of bearer tokens, one per line, each optionally followed by the models it may use; "
                   "re-read on SIGHUP. Every RPC (and /metrics) then needs `authorization: Bearer TOKEN`.")
@click.option("--auth-health", is_flag=True, help="With --auth-tokens: health checks need a token too (default: open).")
@click.option("--max-request-bytes", type=click.IntRange(1024), default=Limits.max_request_bytes, show_default=True,
              help="Largest request message (gRPC drops one over twice this before zoo sees it).")
@click.option("--max-texts", type=click.IntRange(1), default=Limits.max_texts, show_default=True,
              help="Texts per Classify/Embed request.")
@click.option("--max-text-bytes", type=click.IntRange(1), default=Limits.max_text_bytes, show_default=True,
              help="Longest prompt, or text to classify or embed, in UTF-8 bytes.")
@click.option("--max-stop-sequences", type=click.IntRange(0), default=Limits.max_stop_sequences, show_default=True,
              help="Stop sequences per generation request.")
@click.option("--max-stop-bytes", type=click.IntRange(1), default=Limits.max_stop_bytes, show_default=True,
              help="Longest stop sequence, in UTF-8 bytes.")
@click.option("--max-streams-per-connection", type=click.IntRange(1), default=Limits.max_streams_per_connection,
              show_default=True, help="Concurrent RPCs on one connection; a client's further calls wait (HTTP/2).")
@click.option("--keepalive-seconds", type=click.FloatRange(min=1), default=Limits.keepalive_seconds,
              show_default=True, help="Ping a connection idle this long, to find dead clients.")
@click.option("--keepalive-timeout-seconds", type=click.FloatRange(min=1), default=Limits.keepalive_timeout_seconds,
              show_default=True, help="Close a connection whose ping is not answered in this time.")
@click.option("--min-ping-interval-seconds", type=click.FloatRange(min=0), default=Limits.min_ping_interval_seconds,
              show_default=True, help="Close connections of clients that ping more often than this (gRPC's "
                                      "too_many_pings).")
def serve(path, port, host, grace_period, metrics_port, http_port, step_delay, max_batch_size, max_batch_delay_ms,
          dynamic_batching, decode_slots, max_queue, decode_steps, drafts, draft_tokens, torch_threads, warmup, version_policy, poll_seconds, tls_cert,
          tls_key, tls_client_ca, auth_tokens, auth_health, max_request_bytes, max_texts, max_text_bytes,
          max_stop_sequences, max_stop_bytes, max_streams_per_connection, keepalive_seconds,
          keepalive_timeout_seconds, min_ping_interval_seconds):
    """Serve a bundle or a model repository over gRPC (zoo.v1.InferenceService, health, reflection),
    and with --http-port over an OpenAI-compatible HTTP API too.

    BUNDLE_OR_REPO is one bundle (served under its directory name as version 1) or a repository
    REPO/<name>/<version>/ of bundles; a request gets a model's highest version unless it names one.
    The repository is re-read every --poll-seconds and on SIGHUP: a new version is loaded, verified
    and warmed up before it takes requests; a removed one finishes its requests, then unloads; a
    broken one is logged and skipped. Publish a version by writing it elsewhere on the same file
    system and renaming it into place. SIGTERM or Ctrl-C stops accepting requests and lets those in
    flight finish.

    \b
    Example:
      zoo serve bundles/shakespeare --port 8500
      zoo serve models/ --host 0.0.0.0 --backend torch --metrics-port 9100
      zoo serve models/ --http-port 8000      # and OpenAI's API on http://127.0.0.1:8000/v1
      zoo serve bundles/language-id --max-batch-size 64 --max-batch-delay-ms 2
      zoo serve bundles/shakespeare --decode-slots 16 --max-queue 256
      zoo serve bundles/gpt2 --decode-steps 8     # on a GPU: greedy requests step 8 tokens per call
      zoo serve models/ --draft shakespeare=bundles/shakespeare-nano --draft-tokens 4
      zoo serve models/ --host 0.0.0.0 --tls-cert server.pem --tls-key server.key \\
          --auth-tokens tokens.txt --version-policy latest:2
    """
    from server.main import Security, run

    run(path, host=host, port=port, grace_period=grace_period, metrics_port=metrics_port, step_delay=step_delay,
        batching=dict(max_batch_size=max_batch_size, max_delay=max_batch_delay_ms / 1000, enabled=dynamic_batching),
        generation=dict(slots=decode_slots, max_queue=max_queue, decode_steps=decode_steps), drafts=drafts, draft_tokens=draft_tokens, warmup=warmup,
        torch_threads=torch_threads, version_policy=version_policy, poll_seconds=poll_seconds, http_port=http_port,
        security=Security(tls_cert, tls_key, tls_client_ca, auth_tokens, auth_health),
        limits=Limits(max_request_bytes=max_request_bytes, max_texts=max_texts, max_text_bytes=max_text_bytes,
                      max_stop_sequences=max_stop_sequences, max_stop_bytes=max_stop_bytes,
                      max_streams_per_connection=max_streams_per_connection, keepalive_seconds=keepalive_seconds,
                      keepalive_timeout_seconds=keepalive_timeout_seconds,
                      min_ping_interval_seconds=min_ping_interval_seconds))


def _drafts(values):
    """--draft NAME=PATH values as {name: path}."""
    drafts = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{value!r} is not NAME=RUN_OR_BUNDLE", param_hint="--draft")
        if name in drafts:
            raise click.BadParameter(f"model {name!r} is given two drafts", param_hint="--draft")
        drafts[name] = path
    return drafts
