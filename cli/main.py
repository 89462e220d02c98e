"""`zoo`: train, export, sample and serve transformer models on any Keras backend."""

import json

import click

import zoo
from zoo.backend import quiet_tensorflow_startup

# TensorFlow (which keras-hub imports when it is installed) logs start-up noise to stderr: before
# anything below can import it.
quiet_tensorflow_startup()

from cli.bench import bench  # noqa: E402 (after the line above)
from cli.client import client
from cli.common import ZooGroup, backend_option
from cli.evaluate import answer, classify, evaluate, tag
from cli.generate import export, generate, summarize, translate
from cli.prepare import prepare
from cli.pretrained import import_
from cli.quantize import quantize
from cli.serve import serve
from cli.train import train


@click.group(cls=ZooGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(zoo.__version__, prog_name="zoo")
@backend_option
def cli():
    """Train GPT, BERT and seq2seq transformers on JAX, TensorFlow or PyTorch, and serve them.

    \b
    Example:
      zoo train gpt --preset nano --max-steps 500 --out runs/shakespeare
      zoo export runs/shakespeare --out bundles/shakespeare
      zoo generate bundles/shakespeare --prompt "ROMEO." --temperature 0.8
    """


@cli.command()
@backend_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json):
    """Show the backend, library versions and visible devices.

    \b
    Example:
      zoo info --backend torch --json
    """
    from zoo.backend import describe

    details = describe()
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        click.echo(f"{key:>12}: {', '.join(value) if isinstance(value, list) else value}")


cli.add_command(train)
cli.add_command(prepare)
cli.add_command(import_)
cli.add_command(export)
cli.add_command(quantize)
cli.add_command(generate)
cli.add_command(translate)
cli.add_command(summarize)
cli.add_command(classify)
cli.add_command(tag)
cli.add_command(answer)
cli.add_command(evaluate)
cli.add_command(serve)
cli.add_command(client)
cli.add_command(bench)


def main():
    cli(prog_name="zoo")


if __name__ == "__main__":
    main()
