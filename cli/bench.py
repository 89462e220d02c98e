"""`zoo bench`: the backend-switching experiment (the work is in zoo/bench.py)."""

import datetime
import json

import click

from zoo import families
from zoo.bench import BACKENDS, DEFAULT_SEQ_LEN
from zoo.training.options import positive


def _backend_list(ctx, param, value):
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise click.BadParameter(f"expected a comma-separated list of {', '.join(BACKENDS)}, got {value!r}")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"a backend is named twice in {value!r}")
    return names


class _FamilyChoice(click.Choice):
    """The registry's family names, read when first needed rather than when `zoo` starts."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        return tuple(families.names())

    @choices.setter
    def choices(self, value):
        pass


class _PresetOption(click.Option):
    """--preset, whose help lists every family's presets (read from the registry when shown)."""

    def get_help_record(self, ctx):
        self.help = "A preset of the --model family: " + "; ".join(
            f"{name}: {', '.join(families.get(name).presets)}" for name in families.names()) + "."
        return super().get_help_record(ctx)


def _check_preset(ctx, param, value):
    model = ctx.params.get("model", "gpt")
    presets = families.get(model).presets
    if value not in presets:
        raise click.BadParameter(f"{value!r} is not a {model} preset: choose one of {', '.join(presets)}")
    return value


@click.command()
@click.option("--model", type=_FamilyChoice(), default="gpt", show_default=True, is_eager=True,
              help="Model family.")
@click.option("--preset", cls=_PresetOption, default="nano", show_default=True, callback=_check_preset)
@click.option("--backends", default=",".join(BACKENDS), show_default=True, callback=_backend_list,
              help="Comma-separated; the first that runs is the reference for max |Δ|.")
@click.option("--steps", type=int, default=10, show_default=True, callback=positive,
              help="Timed training steps (after the first, compiling, step and one warm-up step).")
@click.option("--batch-size", type=int, default=8, show_default=True, callback=positive, help="Training batch.")
@click.option("--seq-len", type=int, default=None, callback=positive,
              help=f"Training sequence length (seq2seq: of the source and of the target); default {DEFAULT_SEQ_LEN}, "
                   "or the preset's context if shorter.")
@click.option("--new-tokens", type=int, default=64, show_default=True, callback=positive,
              help="Tokens decoded per row at batch 1 and 8 (gpt, seq2seq).")
@click.option("--prompt-tokens", type=int, default=32, show_default=True, callback=positive,
              help="Length of the prompt (gpt; plus --new-tokens, at most the context), the source (seq2seq) or "
                   "each text classified (bert) in the inference measurements.")
@click.option("--vocab-size", type=int, default=8192, show_default=True, callback=positive)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights and tokens.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="cpu hides any GPU; gpu requires that each backend sees one (an error names the one that does not).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for results.json, results.csv, chart.png; default runs/bench-MODEL-PRESET-<time>.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
@click.pass_context
def bench(ctx, model, preset, backends, steps, batch_size, seq_len, new_tokens, prompt_tokens, vocab_size, seed,
          device, out, as_json):
    """Benchmark one model on every backend, each in its own process, on the same random weights.

    Reports per backend: train-step tokens/s and the first (compiling) step's time, an inference
    latency (gpt: prefill of one prompt; bert: classifying a batch of 8 texts; seq2seq: encoding a
    source and the first decoder step), greedy decode tokens/s at batch 1 and 8 on the compiled
    engine and its compile time (gpt, seq2seq), peak memory (the GPU's, else the process's RSS) and
    max |Δ| of the model's outputs against the first backend's on the same weights. A column a
    family does not have shows "-"; a backend that cannot be imported is reported as skipped.
    Prints a table and writes results.json, results.csv and chart.png (needs matplotlib:
    pip install 'zoo[bench]').

    \b
    Example:
      zoo bench --preset nano --steps 20 --out runs/bench-nano
      zoo bench --model bert --preset small --backends jax,torch --json
      zoo bench --preset small --backends jax,torch --device gpu --batch-size 32 --seq-len 256 --json
    """
    from zoo.bench import format_table, run_bench

    if out is None:
        out = f"runs/bench-{model}-{preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    results = run_bench(out, model=model, preset=preset, backends=backends, steps=steps, batch_size=batch_size,
                        seq_len=seq_len, new_tokens=new_tokens, prompt_tokens=prompt_tokens, device=device,
                        vocab_size=vocab_size, seed=seed, log=lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps(results))
    else:
        click.echo(format_table(results["backends"]))
        click.echo(f"wrote {out}/results.json, results.csv, chart.png")
    failed = [row for row in results["backends"] if row["status"] == "failed"]
    if failed:
        click.echo("Error: " + "; ".join(f"{row['backend']} failed: {row['reason']}" for row in failed), err=True)
        ctx.exit(1)
