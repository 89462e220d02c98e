"""`zoo train seq2seq`."""

import click

from zoo.families.seq2seq.metrics import METRICS
from zoo.families.seq2seq.presets import PRESETS
from zoo.training.options import lora_options, positive, training_command


@click.command()
@click.option("--data", type=click.Path(), default=None,
              help="Pairs: a .tsv/.csv with two columns (header optional) or a .jsonl with source/target fields; "
                   "default: the shipped English-French UI messages.")
@click.option("--source-column", default=None, help="Source column: a header name or 0-based index (default "
                                                    "`source`, else column 0); for .jsonl a field name.")
@click.option("--target-column", default=None, help="Target column, likewise (default `target`, else column 1).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of the pairs (the file's end) held out.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="nano", show_default=True, help="Model shape.")
@click.option("--init", type=click.Path(), default=None,
              help="Fine-tune a seq2seq run or bundle (e.g. Marian or BART from `zoo import`): its shape, tokenizers "
                   "and weights; instead of --preset and the vocabulary flags.")
@click.option("--num-encoder-layers", type=int, callback=positive, help="Override the preset.")
@click.option("--num-decoder-layers", type=int, callback=positive, help="Override the preset.")
@click.option("--num-heads", type=int, callback=positive, help="Override the preset.")
@click.option("--hidden-dim", type=int, callback=positive, help="Override the preset.")
@click.option("--intermediate-dim", type=int, callback=positive, help="Override the preset (MLP width).")
@click.option("--max-source-length", type=int, callback=positive, help="Override the preset (longer pairs are dropped, and counted).")
@click.option("--max-target-length", type=int, callback=positive, help="Override the preset (longer pairs are dropped, and counted).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Override the preset.")
@click.option("--vocab-size", type=int, default=4000, show_default=True, help="BPE vocabulary size (each, if separate).")
@click.option("--shared-vocabulary/--separate-vocabularies", default=True, show_default=True,
              help="One BPE vocabulary and embedding for both sides, or one per side.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True)
@click.option("--bleu-pairs", type=click.IntRange(0), default=None,
              help="Validation pairs scored with BLEU, chrF and ROUGE at the end (greedy and beam); default all, 0 skips.")
@click.option("--metric", "metrics", type=click.Choice(METRICS), multiple=True,
              help="Print only this score of the final evaluation (repeatable); default all. --json has them all.")
@click.option("--beam-width", type=click.IntRange(1), default=4, show_default=True, help="For the final beam-search scores.")
@lora_options
@training_command("seq2seq")
def seq2seq(data, source_column, target_column, val_fraction, preset, init, num_encoder_layers, num_decoder_layers,
            num_heads, hidden_dim, intermediate_dim, max_source_length, max_target_length, dropout, vocab_size,
            shared_vocabulary, label_smoothing, bleu_pairs, metrics, beam_width, lora, **run):
    """Train an encoder-decoder transformer on source/target pairs (translation, summarization).

    At the end, prints BLEU and chrF (sacrebleu) and ROUGE-1/2/L (rouge-score) of greedy and
    beam-search decoding on the validation pairs, with examples. Ctrl-C saves a checkpoint; --resume continues exactly.

    \b
    Example:
      zoo train seq2seq --max-steps 2000 --out runs/en-fr
      zoo train seq2seq --data pairs.tsv --source-column en --target-column de --preset small --out runs/en-de
      zoo translate runs/en-fr "Forgot your password?" --beam-width 4
      zoo import hf://Helsinki-NLP/opus-mt-en-fr --out bundles/en-fr
      zoo train seq2seq --init bundles/en-fr --data pairs.tsv --lora-rank 8 --out runs/en-fr-tuned
      zoo train seq2seq --data articles.tsv --source-column article --target-column summary --metric rougeL
    """
    from zoo.families.seq2seq.training import format_scores, train_seq2seq

    ctx = click.get_current_context()
    given = [name for name in ("preset", "vocab_size", "shared_vocabulary")
             if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if init is not None and given:
        raise click.UsageError(f"--{given[0].replace('_', '-')} cannot be combined with --init: the model's shape and "
                               "tokenizers come from it")

    summary = train_seq2seq(
        run["out"], data=data, preset=preset, init=init, lora=lora,
        model_overrides=dict(num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
                             num_heads=num_heads, hidden_dim=hidden_dim, intermediate_dim=intermediate_dim,
                             max_source_length=max_source_length, max_target_length=max_target_length, dropout=dropout),
        vocabulary_size=vocab_size, shared_vocabulary=shared_vocabulary,
        columns=dict(source_column=source_column, target_column=target_column), val_fraction=val_fraction,
        label_smoothing=label_smoothing, bleu_pairs=bleu_pairs, beam_width=beam_width,
        train_config=run["train_config"], resume=run["resume"], explicit_train_changes=run["explicit"],
        command=run["command"])
    if summary.get("translation"):
        click.echo(format_scores(summary["translation"], metrics), err=True)
    return summary
