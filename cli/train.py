"""`zoo train gpt`."""

import json
import sys

import click

from cli.common import ZooGroup, backend_option

PRESET_NAMES = ("nano", "small", "gpt2")  # zoo.models.gpt.PRESETS, named here so --help needs no keras


@click.group(cls=ZooGroup)
def train():
    """Train a model; see `zoo train gpt --help`."""


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


@train.command()
@backend_option
@click.option("--data", type=click.Path(), default=None,
              help="A .txt file, a directory of .txt/.jsonl files, or a .jsonl file; default: the shipped Shakespeare corpus.")
@click.option("--text-field", default="text", show_default=True, help="The text field of .jsonl records.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of the corpus (its end) held out.")
@click.option("--out", type=click.Path(), default=None, help="Run directory; default runs/gpt-<time>.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="nano", show_default=True, help="Model shape.")
@click.option("--num-layers", type=int, callback=_positive, help="Override the preset.")
@click.option("--num-heads", type=int, callback=_positive, help="Override the preset.")
@click.option("--hidden-dim", type=int, callback=_positive, help="Override the preset.")
@click.option("--intermediate-dim", type=int, callback=_positive, help="Override the preset (MLP width).")
@click.option("--max-length", type=int, callback=_positive, help="Override the preset (context length).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Override the preset.")
@click.option("--position-embedding", type=click.Choice(["learned", "rotary"]), help="Override the preset (default learned).")
@click.option("--tokenizer", "tokenizer_kind", type=click.Choice(["bpe", "char"]), default="bpe", show_default=True,
              help="Byte-level BPE or characters (with byte fallback).")
@click.option("--vocab-size", type=int, default=2048, show_default=True, help="BPE vocabulary size.")
@click.option("--seq-len", type=int, callback=_positive, help="Training block length; default the context length.")
@click.option("--max-steps", type=int, default=1000, show_default=True, callback=_positive)
@click.option("--batch-size", type=int, default=32, show_default=True, callback=_positive)
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--warmup-steps", type=click.IntRange(0), help="Linear warmup; default 10% of --max-steps, at most 100.")
@click.option("--weight-decay", type=click.FloatRange(0), default=0.1, show_default=True)
@click.option("--grad-clip", type=click.FloatRange(0), default=1.0, show_default=True, help="Global norm; 0 is off.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--eval-every", type=int, default=250, show_default=True, callback=_positive)
@click.option("--eval-blocks", type=int, default=64, show_default=True, callback=_positive, help="Validation blocks per evaluation.")
@click.option("--save-every", type=int, default=500, show_default=True, callback=_positive)
@click.option("--log-every", type=int, default=10, show_default=True, callback=_positive)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.pass_context
def gpt(ctx, data, text_field, val_fraction, out, resume, preset, num_layers, num_heads, hidden_dim, intermediate_dim,
        max_length, dropout, position_embedding, tokenizer_kind, vocab_size, seq_len, as_json, **train_options):
    """Train a GPT-style language model.

    Progress (loss, tokens/s, ETA) goes to stderr; checkpoints, metrics.jsonl and config.json to
    the run directory. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.

    \b
    Example:
      zoo train gpt --preset nano --max-steps 500 --out runs/shakespeare
      zoo train gpt --data my_corpus/ --tokenizer char --preset small --out runs/mine --precision bf16
      zoo train gpt --out runs/shakespeare --resume --max-steps 1000
    """
    import datetime

    from zoo.training.gpt import train_gpt
    from zoo.training.config import TrainConfig

    if out is None:
        if resume:
            raise click.UsageError("--resume needs --out RUN")
        out = f"runs/gpt-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    explicit = {name: value for name, value in train_options.items()
                if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
    summary = train_gpt(
        out, data=data, preset=preset,
        model_overrides=dict(num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                             intermediate_dim=intermediate_dim, max_length=max_length, dropout=dropout,
                             position_embedding=position_embedding),
        tokenizer_kind=tokenizer_kind, vocabulary_size=vocab_size, seq_len=seq_len, val_fraction=val_fraction,
        text_field=text_field, train_config=TrainConfig(**train_options), resume=resume,
        explicit_train_changes=explicit, command=["zoo", *sys.argv[1:]])
    summary["run"] = str(out)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        metrics = ", ".join(f"{k} {summary[k]:.4f}" for k in ("loss", "val_loss", "val_perplexity") if k in summary)
        click.echo(f"run {out}: step {summary['step']}, {metrics}, {summary['wall_s']}s")
    if summary["stopped"]:
        ctx.exit(130)
