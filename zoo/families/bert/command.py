"""`zoo train bert`."""

import click

from zoo.families.bert.presets import PRESETS
from zoo.training.options import lora_options, positive, training_command


@click.command()
@click.option("--task", type=click.Choice(["mlm", "classify", "tag", "qa"]), default="mlm", show_default=True,
              help="Masked-LM pretraining, classification fine-tuning, tagging (named-entity recognition) or "
                   "extractive question answering.")
@click.option("--data", type=click.Path(), default=None,
              help="mlm: a .txt file, a directory or a .jsonl corpus (default: the shipped Shakespeare). "
                   "classify: a labelled .csv/.tsv (header row; GLUE layout works) or .jsonl "
                   "(default: the shipped language-identification data). tag: BIO-tagged CoNLL columns "
                   "(TOKEN ... TAG, blank line between sentences) or .jsonl with `tokens` and `tags` "
                   "(default: the shipped WNUT-17 training set). qa: SQuAD v1.1 JSON (default: the shipped XQuAD "
                   "English set).")
@click.option("--init", type=click.Path(), default=None,
              help="classify, tag, qa: start from this pretrained bert run or bundle (its tokenizer and encoder; the "
                   "head is new).")
@click.option("--doc-stride", type=click.IntRange(1), default=None,
              help="qa: word pieces consecutive windows of a long context share; default 128, or half a window's "
                   "context when less.")
@click.option("--tag-column", type=click.IntRange(1), default=None,
              help="tag: the CoNLL field (0-based) holding the tag; default the last (e.g. 3 for CoNLL-2003).")
@click.option("--text-column", default=None, help="classify: the text column/field; default `sentence` or `text`.")
@click.option("--label-column", default="label", show_default=True, help="classify: the label column/field.")
@click.option("--pair-column", default=None, help="classify: a second text column, for sentence-pair tasks.")
@click.option("--text-field", default="text", show_default=True, help="mlm: the text field of .jsonl records.")
@click.option("--class-weighting", type=click.Choice(["none", "balanced"]), default="none", show_default=True,
              help="classify: weigh each class's examples so that every class counts the same in the loss.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Share held out for validation (classify: of each class).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="nano", show_default=True, help="Encoder shape.")
@click.option("--num-layers", type=int, callback=positive, help="Override the preset.")
@click.option("--num-heads", type=int, callback=positive, help="Override the preset.")
@click.option("--hidden-dim", type=int, callback=positive, help="Override the preset.")
@click.option("--intermediate-dim", type=int, callback=positive, help="Override the preset (MLP width).")
@click.option("--max-length", type=int, callback=positive, help="Override the preset (positions).")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Override the preset.")
@click.option("--vocab-size", type=int, default=8192, show_default=True, help="WordPiece vocabulary size.")
@click.option("--cased", is_flag=True, help="Keep case and accents (default: lower-case and strip accents).")
@click.option("--seq-len", type=int, callback=positive,
              help="Sequence length; default 128 for mlm, for classify one that fits 99% of the training texts "
                   "(a power of two, at most the context; longer texts are cut, and counted).")
@lora_options
@training_command("bert")
def bert(task, data, init, doc_stride, tag_column, text_column, label_column, pair_column, text_field, class_weighting,
         val_fraction, preset,
         num_layers, num_heads, hidden_dim, intermediate_dim, max_length, dropout, vocab_size, cased, seq_len, lora,
         **run):
    """Train a BERT-style encoder: masked-LM pretraining, a text classifier or an entity tagger.

    Classification prints accuracy, macro-F1 and the confusion matrix on the validation split at
    the end; tagging, entity-level precision, recall and F1 per entity type; question answering,
    SQuAD's exact match and F1. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.

    \b
    Example:
      zoo train bert --task mlm --max-steps 2000 --out runs/bert-mlm
      zoo train bert --task classify --init runs/bert-mlm --max-steps 300 --out runs/language-id
      zoo train bert --task classify --init bundles/bert-base --lora-rank 8 --lr 1e-3 --out runs/sst2-lora
      zoo train bert --task classify --data glue/SST-2/train.tsv --class-weighting balanced --out runs/sst2
      zoo train bert --task tag --max-steps 1500 --out runs/wnut17 && zoo tag runs/wnut17 "Meet me at the Empire State Building"
      zoo train bert --task tag --init bundles/bert-base --data conll2003/train.txt --tag-column 3 --out runs/conll
      zoo train bert --task qa --init bundles/bert-base --data squad/train-v1.1.json --out runs/squad
    """
    from zoo.families.bert.training import train_bert

    summary = train_bert(
        run["out"], task=task, data=data, preset=preset,
        model_overrides=dict(num_layers=num_layers, num_heads=num_heads, hidden_dim=hidden_dim,
                             intermediate_dim=intermediate_dim, max_length=max_length, dropout=dropout),
        vocabulary_size=vocab_size, lowercase=not cased, seq_len=seq_len, val_fraction=val_fraction,
        text_field=text_field, columns=dict(text_column=text_column, label_column=label_column, pair_column=pair_column),
        init=init, class_weighting=class_weighting, train_config=run["train_config"], resume=run["resume"],
        explicit_train_changes=run["explicit"], command=run["command"], lora=lora, tag_column=tag_column,
        doc_stride=doc_stride)
    if summary.get("report"):
        from zoo.families.bert import FAMILY

        click.echo(FAMILY.format_report(summary["report"]), err=True)
    return summary
