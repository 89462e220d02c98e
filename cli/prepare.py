"""`zoo prepare`: tokenize a corpus once into memory-mappable token files for `zoo train`."""

import json

import click


@click.command()
@click.option("--data", type=click.Path(), default=None,
              help="A .txt file, a directory of .txt/.jsonl files, or a .jsonl file; default: the shipped Shakespeare corpus.")
@click.option("--out", type=click.Path(), required=True, help="The prepared directory to create.")
@click.option("--tokenizer", "tokenizer_kind", type=click.Choice(["bpe", "char"]), default="bpe", show_default=True,
              help="Byte-level BPE or characters (with byte fallback), trained on the training split.")
@click.option("--vocab-size", type=int, default=2048, show_default=True, help="BPE vocabulary size.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True, help="Share of the corpus (its end) held out.")
@click.option("--text-field", default="text", show_default=True, help="The text field of .jsonl records.")
@click.option("--json", "as_json", is_flag=True, help="Print the prepared corpus's meta.json.")
def prepare(data, out, tokenizer_kind, vocab_size, val_fraction, text_field, as_json):
    """Tokenize a corpus once, for any number of training runs.

    Streams the corpus (it need not fit in memory), trains the tokenizer on the training split,
    and writes OUT/train.bin and OUT/val.bin (uint16 token ids, uint32 for vocabularies over
    65536), tokenizer.json and meta.json. `zoo train gpt --data OUT` memory-maps the token files.

    \b
    Example:
      zoo prepare --data corpus/ --out prepared/corpus --vocab-size 8192
      zoo prepare --tokenizer char --out prepared/shakespeare-char
      zoo train gpt --data prepared/corpus --preset small --out runs/corpus
    """
    from zoo.data.prepared import prepare_corpus

    meta = prepare_corpus(out, data, tokenizer_kind, vocab_size, val_fraction, text_field)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
    else:
        click.echo(f"prepared {out}: {meta['train_tokens']:,} training / {meta['val_tokens']:,} validation tokens "
                   f"({meta['dtype']}), {meta['tokenizer']['kind']} tokenizer of "
                   f"{meta['tokenizer']['vocabulary_size']} tokens")
