"""`zoo export` and `zoo generate`."""

import json

import click

from cli.common import backend_option


@click.command()
@backend_option
@click.argument("run", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(run, out, force):
    """Export a run's newest checkpoint as a self-contained bundle.

    \b
    Example:
      zoo export runs/shakespeare --out bundles/shakespeare
    """
    from zoo.bundle import export_bundle

    click.echo(f"wrote {export_bundle(run, out, force=force)}")


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--prompt", default="", help="Text to continue; empty samples from scratch.")
@click.option("--max-new-tokens", type=int, help="Default: up to the end of the context.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k likeliest; 0 is off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass; 1 is off.")
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable).")
@click.option("--truncate-prompt", is_flag=True, help="Drop the prompt's oldest tokens if it does not fit the context.")
@click.option("--json", "as_json", is_flag=True, help="Print text, token ids and finish reason as JSON.")
def generate(model_path, prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, truncate_prompt, as_json):
    """Generate text from a run directory or a bundle, streaming it as it is produced.

    \b
    Example:
      zoo generate bundles/shakespeare --prompt "ROMEO." --max-new-tokens 200 --temperature 0.8 --top-k 40
      zoo generate runs/shakespeare --prompt "To be" --temperature 0 --stop "." --json
    """
    from zoo.bundle import load_model
    from zoo.engine import Generator, SamplingConfig

    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop=tuple(stop), truncate_prompt=truncate_prompt)
    config.validate()  # before the model loads: bad flags fail fast
    model, tokenizer, info = load_model(model_path)
    generator = Generator(model, tokenizer)
    if as_json:
        result = generator.generate(prompt, config)
        click.echo(json.dumps({"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
                               "prompt_tokens": result.prompt_tokens}))
        return
    click.echo(prompt, nl=False)
    generator.generate(prompt, config, on_text=lambda text: click.echo(text, nl=False))
    click.echo()
