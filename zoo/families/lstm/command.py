"""`zoo train lstm`."""

import click

from zoo.families.lstm.presets import PRESETS
from zoo.training.options import corpus_options, positive, training_command


@click.command()
@click.option("--preset", type=click.Choice(list(PRESETS)), default="nano", show_default=True, help="Model shape.")
@click.option("--num-layers", type=int, callback=positive, help="Override the preset (stacked LSTM layers).")
@click.option("--hidden-dim", type=int, callback=positive, help="Override the preset (LSTM units per layer).")
@click.option("--embedding-dim", type=int, callback=positive, help="Override the preset (token embedding width).")
@click.option("--max-length", type=int, callback=positive,
              help="Override the preset: the context it is served with (prompt and output tokens); no weight "
                   "depends on it.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Override the preset (between layers).")
@click.option("--tie-embeddings/--no-tie-embeddings", default=None,
              help="Override the preset: the output projection is the token embedding transposed (needs "
                   "--hidden-dim equal to --embedding-dim), or a Dense layer of its own.")
@corpus_options
@training_command("lstm")
def lstm(data, text_field, val_fraction, preset, num_layers, hidden_dim, embedding_dim, max_length, dropout,
         tie_embeddings, tokenizer_kind, vocab_size, seq_len, **run):
    """Train an LSTM language model: stacked Keras LSTM layers between a token embedding and an
    output projection (tied to the embedding by default).

    The same data, tokenizers, training loop, checkpoints and resume as `zoo train gpt`; `zoo
    export` and `zoo generate` work on its runs, generation carrying the LSTM's (h, c) state
    from token to token. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped.

    \b
    Example:
      zoo train lstm --preset nano --max-steps 500 --out runs/lstm
      zoo train lstm --data my_corpus/ --tokenizer char --preset small --out runs/lstm-char
      zoo train lstm --num-layers 3 --hidden-dim 512 --embedding-dim 512 --dropout 0.3 --out runs/lstm3
      zoo train lstm --hidden-dim 512 --embedding-dim 128 --no-tie-embeddings --out runs/lstm-untied
      zoo train lstm --out runs/lstm --resume --max-steps 1000
      zoo export runs/lstm --out bundles/lstm && zoo generate bundles/lstm --prompt "ROMEO." --temperature 0.8
    """
    from zoo.families.lstm.training import train_lstm

    return train_lstm(
        run["out"], data=data, preset=preset,
        model_overrides=dict(num_layers=num_layers, hidden_dim=hidden_dim, embedding_dim=embedding_dim,
                             max_length=max_length, dropout=dropout, tie_embeddings=tie_embeddings),
        tokenizer_kind=tokenizer_kind, vocabulary_size=vocab_size, seq_len=seq_len, val_fraction=val_fraction,
        text_field=text_field, train_config=run["train_config"], resume=run["resume"],
        explicit_train_changes=run["explicit"], command=run["command"])
