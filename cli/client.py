"""`zoo client`: call a running `zoo serve` from the command line."""

import contextlib
import json

import click

from cli.common import ZooGroup
from zoo.errors import ZooError


@click.group(cls=ZooGroup)
def client():
    """Call a zoo gRPC server: generate, stream, classify, embed, list models, describe a model.

    \b
    Example:
      zoo client models --server 127.0.0.1:8500
      zoo client stream shakespeare --prompt "ROMEO." --max-new-tokens 100 --server 127.0.0.1:8500
    """


def server_option(command):
    return click.option("--server", default="127.0.0.1:8500", show_default=True, envvar="ZOO_SERVER",
                        help="HOST:PORT of the server (or $ZOO_SERVER).")(command)


def timeout_option(command):
    return click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
                        help="Deadline of the call, in seconds.")(command)


@contextlib.contextmanager
def connect(server, timeout):
    """A ZooClient; gRPC errors become one-line ZooErrors."""
    import grpc

    from server.client import ZooClient

    try:
        with ZooClient(server, timeout=timeout) as zoo_client:
            yield zoo_client
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ZooError(f"cannot reach a zoo server at {server} ({e.details()})") from None
        raise ZooError(f"{code.name}: {e.details()}") from None


def generation_options(command):
    options = [
        click.argument("model"),
        click.option("--prompt", help="Text to continue."),
        click.option("--token-ids", help="The prompt as comma-separated token ids, instead of --prompt."),
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


@client.command()
@generation_options
def generate(model, server, timeout, as_json, **kwargs):
    """Generate text with a served model and print it when done.

    \b
    Example:
      zoo client generate shakespeare --prompt "To be" --temperature 0 --max-new-tokens 40 --json
    """
    from server.client import response_dict

    with connect(server, timeout) as zoo_client:
        response = zoo_client.generate(model, **_request_kwargs(**kwargs))
    click.echo(json.dumps(response_dict(response)) if as_json else response.text)


@client.command()
@generation_options
def stream(model, server, timeout, as_json, **kwargs):
    """Generate text with a served model, printing it as it is produced.

    With --json, prints one JSON object per line: {"text": ..., "token_ids": [...]} per chunk, then
    the final result (as `zoo client generate --json` prints it) under "final".

    \b
    Example:
      zoo client stream shakespeare --prompt "ROMEO." --temperature 0.8 --top-k 40 --max-new-tokens 200
    """
    from server.client import response_dict

    with connect(server, timeout) as zoo_client:
        for message in zoo_client.stream(model, **_request_kwargs(**kwargs)):
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
@click.argument("texts", nargs=-1, required=True)
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@click.option("--pair", "pairs", multiple=True, help="Second segment of each text, for sentence-pair models "
                                                    "(repeat once per text).")
@click.option("--json", "as_json", is_flag=True, help="Print every class probability as JSON.")
@server_option
@timeout_option
def classify(model, texts, version, pairs, as_json, server, timeout):
    """Classify one or more texts with a served classification model.

    \b
    Example:
      zoo client classify language-id "Mot de passe oublié" "Passwort zurücksetzen" --json
    """
    with connect(server, timeout) as zoo_client:
        response = zoo_client.classify(model, texts, pairs=pairs, version=version)
    for text, result in zip(texts, response.results):
        if as_json:
            click.echo(json.dumps({"text": text, "label": result.label, "probability": result.probability,
                                   "truncated": result.truncated,
                                   "classes": {c.label: c.probability for c in result.classes}}))
        else:
            click.echo(f"{result.label}\t{result.probability:.4f}\t{text}" + ("\t(truncated)" if result.truncated else ""))


@client.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@click.option("--version", type=int, default=0, help="Model version; default the highest.")
@server_option
@timeout_option
def embed(model, texts, version, server, timeout):
    """Print the sentence vector of each text from a served classifier's encoder, one JSON line each.

    \b
    Example:
      zoo client embed language-id "Mot de passe oublié" "Show all results"
    """
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
