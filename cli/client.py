"""`zoo client`: call a running `zoo serve` from the command line."""

import contextlib
import dataclasses
import functools
import json

import click

from cli.common import ZooGroup, context_text, input_option, read_input, texts_or_input
from zoo.errors import ZooError


@click.group(cls=ZooGroup)
def client():
    """Call a zoo gRPC server: generate, stream, classify, embed, list models, describe a model.

    \b
    Example:
      zoo client models --server 127.0.0.1:8500
      zoo client stream shakespeare --prompt "ROMEO." --max-new-tokens 100 --server 127.0.0.1:8500
    """


@dataclasses.dataclass(frozen=True)
class Server:
    """Where the server is and how to reach it: the address, its bearer token, and TLS settings
    (server.client.channel's keywords)."""

    address: str
    token: str | None
    tls: dict

    def __str__(self):
        return self.address


def server_option(command):
    """--server and the options of a secure connection (TLS, mutual TLS, token), given to the
    command as one `server` argument (a Server)."""
    options = [
        click.option("--server", default="127.0.0.1:8500", show_default=True, envvar="ZOO_SERVER",
                     help="HOST:PORT of the server (or $ZOO_SERVER); replicas as HOST:PORT,HOST:PORT,... or "
                          "a name with several address records, balanced round robin, safe calls retried."),
        click.option("--token", envvar="ZOO_TOKEN", help="Bearer token, for a server with --auth-tokens "
                                                         "(better: $ZOO_TOKEN, which `ps` does not show)."),
        click.option("--tls", is_flag=True, help="Connect with TLS, verifying the server with the system's CAs."),
        click.option("--tls-ca", type=click.Path(dir_okay=False), help="Connect with TLS, verifying the server "
                                                                        "with these PEM CA certificates."),
        click.option("--tls-cert", type=click.Path(dir_okay=False),
                     help="PEM client certificate, for a server with --tls-client-ca (with --tls-key)."),
        click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM private key of --tls-cert."),
        click.option("--tls-server-name", help="Name to check the server's certificate against, if not the host "
                                               "of --server."),
    ]

    @functools.wraps(command)
    def with_server(*args, server, token, tls, tls_ca, tls_cert, tls_key, tls_server_name, **kwargs):
        settings = dict(tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, server_name=tls_server_name)
        return command(*args, server=Server(server, token, settings), **kwargs)

    for option in reversed(options):
        with_server = option(with_server)
    return with_server


def timeout_option(command):
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                        help="Deadline of the call, in seconds.")(command)


def _zoo_error(error, server):
    """A gRPC error as a one-line ZooError."""
    code = error.code()
    if code.name == "UNAVAILABLE":
        return ZooError(f"cannot reach a zoo server at {server} ({error.details()})")
    if code.name == "UNAUTHENTICATED":
        return ZooError(f"{code.name}: {error.details()} (give --token, or set $ZOO_TOKEN)")
    return ZooError(f"{code.name}: {error.details()}")


@contextlib.contextmanager
def connect(server, timeout):
    """A ZooClient for `server` (a Server); gRPC errors become one-line ZooErrors."""
    import grpc

    from server.client import ZooClient

    try:
        with ZooClient(server.address, timeout=timeout, token=server.token, **server.tls) as zoo_client:
            yield zoo_client
    except grpc.RpcError as e:
        raise _zoo_error(e, server) from None


def generation_options(command):
    options = [
        click.argument("model"),
        click.option("--prompt", help="Text to continue."),
        click.option("--token-ids", help="The prompt as comma-separated token ids, instead of --prompt."),
        click.option("--input", "input_path", metavar="FILE|-", default=None,
                     help='Generate for each prompt of FILE in turn: one per line (a .jsonl file: a "text" field '
                          "per line), or standard input with -; instead of --prompt."),
        click.option("--version", type=int, default=0, help="Model version; default the highest."),
        click.option("--max-new-tokens", type=int, help="Default: up to the end of the context."),
        click.option("--temperature", type=float, help="0 is greedy; default 1."),
        click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k likeliest; 0 is off."),
        click.option("--top-p", type=float, help="Nucleus sampling mass; default 1 (off)."),
        click.option("--seed", type=click.IntRange(min=0), help="Random seed for sampling."),
        click.option("--stop", multiple=True, help="Stop before this text (repeatable)."),
        click.option("--truncate-prompt", is_flag=True, help="Drop the prompt's oldest tokens if it does not fit."),
        click.option("--logprobs", is_flag=True, help="Also return each token's log-probability (with --json)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
        server_option, timeout_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _request_kwargs(prompt, token_ids, version, max_new_tokens, temperature, top_k, top_p, seed, stop,
                    truncate_prompt, logprobs):
    if token_ids is not None:
        try:
            ids = [int(t) for t in token_ids.split(",") if t.strip()]
        except ValueError:
            raise click.BadParameter("expected comma-separated integers", param_hint="--token-ids") from None
        prompt_kwargs = {"token_ids": ids}
    else:
        prompt_kwargs = {"prompt": prompt or ""}
    return dict(prompt_kwargs, version=version, max_new_tokens=max_new_tokens, temperature=temperature,
                top_k=top_k, top_p=top_p, seed=seed, stop=stop, truncate_prompt=truncate_prompt,
                return_logprobs=logprobs)


def _requests(input_path, **kwargs):
    """(where, request kwargs) per prompt: the one of --prompt or --token-ids, or one per prompt of
    --input ("FILE, line N" as `where`, for errors), each read before any is sent."""
    given = [flag for flag, value in (("--prompt", kwargs["prompt"]), ("--token-ids", kwargs["token_ids"]),
                                      ("--input", input_path)) if value is not None]
    if len(given) > 1:
        raise click.UsageError(f"give the prompt with one of --prompt, --token-ids or --input, not {' and '.join(given)}")
    if input_path is None:
        return [(None, _request_kwargs(**kwargs))]
    inputs = read_input(input_path)
    return [(inputs.where(i), _request_kwargs(**dict(kwargs, prompt=text))) for i, text in enumerate(inputs.texts)]


@contextlib.contextmanager
def _naming(where, server):
    """Prefixes the error of a request with `where` (its prompt's file and line), if any."""
    import grpc

    try:
        yield
    except grpc.RpcError as e:
        error = _zoo_error(e, server)
        if where is None or e.code() == grpc.StatusCode.UNAVAILABLE:
            raise error from None
        raise ZooError(f"{where}: {error}") from None


@client.command()
@generation_options
def generate(model, server, timeout, as_json, input_path, **kwargs):
    """Generate text with a served model and print it when done; with --input, one result per
    prompt (--json: one object per line).

    \b
    Example:
      zoo client generate shakespeare --prompt "To be" --temperature 0 --max-new-tokens 40 --json
      zoo client generate shakespeare --input prompts.txt --max-new-tokens 40 --json
    """
    from server.client import response_dict

    requests = _requests(input_path, **kwargs)
    with connect(server, timeout) as zoo_client:
        for where, request in requests:
            with _naming(where, server):
                response = zoo_client.generate(model, **request)
            click.echo(json.dumps(response_dict(response)) if as_json else response.text)


@client.command()
@generation_options
def stream(model, server, timeout, as_json, input_path, **kwargs):
    """Generate text with a served model, printing it as it is produced.

    With --json, prints one JSON object per line: {"text": ..., "token_ids": [...]} per chunk, then
    the final result (as `zoo client generate --json` prints it) under "final". With --input, each
    prompt is streamed in turn.

    \b
    Example:
      zoo client stream shakespeare --prompt "ROMEO." --temperature 0.8 --top-k 40 --max-new-tokens 200
    """
    from server.client import response_dict

    requests = _requests(input_path, **kwargs)
    with connect(server, timeout) as zoo_client:
        for where, request in requests:
            with _naming(where, server):
                for message in zoo_client.stream(model, **request):
                    if message.HasField("chunk"):
                        if as_json:
                            chunk = {"text": message.chunk.text, "token_ids": list(message.chunk.token_ids)}
                            if message.chunk.logprobs:
                                chunk["logprobs"] = [p.logprob for p in message.chunk.logprobs]
                            click.echo(json.dumps(chunk))
                        else:
                            click.echo(message.chunk.text, nl=False)
                    elif as_json:
                        click.echo(json.dumps({"final": response_dict(message.final)}))
                    else:
                        click.echo()


@client.command()
@click.argument("model")
@click.argument("texts", nargs=-1)
@input_option(pairs=True)
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@click.option("--pair", "pairs", multiple=True, help="Second segment of each text, for sentence-pair models "
                                                    "(repeat once per text).")
@click.option("--json", "as_json", is_flag=True, help="Print every class probability as JSON.")
@server_option
@timeout_option
def classify(model, texts, input_path, version, pairs, as_json, server, timeout):
    """Classify one or more texts with a served classification model: the TEXTS arguments, or the
    lines of --input FILE (- reads standard input).

    \b
    Example:
      zoo client classify language-id "Mot de passe oublié" "Passwort zurücksetzen" --json
      zoo client classify language-id --input messages.txt
    """
    texts, pairs = texts_or_input(texts, input_path, pairs, takes_pairs=True)
    with connect(server, timeout) as zoo_client:
        response = zoo_client.classify(model, texts, pairs=pairs or (), version=version)
    for i, (text, result) in enumerate(zip(texts, response.results)):
        if as_json:
            click.echo(json.dumps({"text": text, **({"pair": pairs[i]} if pairs else {}), "label": result.label,
                                   "probability": result.probability, "truncated": result.truncated,
                                   "classes": {c.label: c.probability for c in result.classes}}))
        else:
            click.echo(f"{result.label}\t{result.probability:.4f}\t{text}" + ("\t(truncated)" if result.truncated else ""))


@client.command()
@click.argument("model")
@click.argument("texts", nargs=-1)
@input_option()
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text, with its entities.")
@server_option
@timeout_option
def tag(model, texts, input_path, version, as_json, server, timeout):
    """Find the named entities in texts with a served tagger: the TEXTS arguments, or the lines of
    --input FILE (- reads standard input). One line per entity: the text's number, the entity's
    type, its start and end character offsets, its score and its text.

    \b
    Example:
      zoo client tag wnut17 "Meet me at the Empire State Building with Taylor Swift"
      zoo client tag wnut17 --input tweets.txt --json
    """
    texts, _ = texts_or_input(texts, input_path)
    with connect(server, timeout) as zoo_client:
        response = zoo_client.tag(model, texts, version=version)
    for i, (text, result) in enumerate(zip(texts, response.results)):
        if as_json:
            click.echo(json.dumps({"text": text, "truncated": result.truncated, "entities": [
                {"label": e.label, "text": e.text, "start": e.start, "end": e.end, "score": e.score}
                for e in result.entities]}))
            continue
        for e in result.entities:
            click.echo(f"{i}\t{e.label}\t{e.start}\t{e.end}\t{e.score:.4f}\t{e.text}")


@client.command()
@click.argument("model")
@click.option("--question", "questions", multiple=True, required=True, help="A question (repeatable).")
@click.option("--context", required=True, metavar="FILE_OR_TEXT",
              help="The text the answers are taken from: a file's path (its UTF-8 text), or the text itself.")
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per question.")
@server_option
@timeout_option
def answer(model, questions, context, version, as_json, server, timeout):
    """Answer questions from a context with a served question-answering model: one line per
    question, the answer's score, start and end character offsets, and text.

    \b
    Example:
      zoo client answer squad --question "Who won Super Bowl 50?" --context article.txt
      zoo client answer squad --question "Where?" --context "We met in Oslo in 2019." --json
    """
    context = context_text(context)
    with connect(server, timeout) as zoo_client:
        response = zoo_client.answer(model, questions, context, version=version)
    for question, result in zip(questions, response.answers):
        if as_json:
            click.echo(json.dumps({"question": question, "text": result.text, "start": result.start,
                                   "end": result.end, "score": result.score}))
        else:
            click.echo(f"{result.score:.4f}\t{result.start}\t{result.end}\t{result.text}")


@client.command()
@click.argument("model")
@click.argument("texts", nargs=-1)
@input_option()
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@server_option
@timeout_option
def embed(model, texts, input_path, version, server, timeout):
    """Print the sentence vector of each text from a served classifier's encoder, one JSON line each:
    the TEXTS arguments, or the lines of --input FILE (- reads standard input).

    \b
    Example:
      zoo client embed language-id "Mot de passe oublié" "Show all results"
      zoo client embed language-id --input messages.txt > vectors.jsonl
    """
    texts, _ = texts_or_input(texts, input_path)
    with connect(server, timeout) as zoo_client:
        response = zoo_client.embed(model, texts, version=version)
    for text, embedding in zip(texts, response.embeddings):
        click.echo(json.dumps({"text": text, "embedding": list(embedding.values), "truncated": embedding.truncated}))


@client.command()
@click.option("--json", "as_json", is_flag=True, help="Print every model's details as JSON.")
@server_option
@timeout_option
def models(as_json, server, timeout):
    """List the models a server serves, with their versions.

    \b
    Example:
      zoo client models --server 127.0.0.1:8500 --json
    """
    from server.client import model_info_dict

    with connect(server, timeout) as zoo_client:
        infos = [model_info_dict(info) for info in zoo_client.list_models()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for info in infos:
        click.echo(f"{info['name']}\tversions {','.join(map(str, info['versions']))}\t{info['kind']}\t{info['task']}"
                   f"\tcontext {info['context_length']}\ton {info['serving_backend']}")


@client.command()
@click.argument("model")
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@server_option
@timeout_option
def info(model, version, as_json, server, timeout):
    """Describe a served model: kind, task, versions, tokenizer, backend and training provenance.

    \b
    Example:
      zoo client info shakespeare --version 2 --json
    """
    from server.client import model_info_dict

    with connect(server, timeout) as zoo_client:
        details = model_info_dict(zoo_client.model_info(model, version=version))
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    provenance = details.pop("provenance")
    for key, value in details.items():
        click.echo(f"{key:>22}: {value}")
    for key in ("backend", "steps", "final_metrics", "data"):
        click.echo(f"{'trained ' + key:>22}: {provenance[key]}")
