"""`zoo train lstm`: a next-token language model run (zoo.training.language_model: the corpus or a
prepared one, the tokenizer, blocks of --seq-len tokens, validation loss and perplexity, resume,
checkpoints), with an LSTM language model from a preset.

Each training block starts from zero state (truncated backpropagation through time over one
block), as a prompt does at generation.
"""

from zoo.errors import ZooError
from zoo.families.lstm.presets import PRESETS
from zoo.training import language_model


def check_model_settings(settings):
    """Refuses settings the model cannot have, before anything slow happens."""
    if settings["tie_embeddings"] and settings["hidden_dim"] != settings["embedding_dim"]:
        raise ZooError(f"--tie-embeddings needs --hidden-dim equal to --embedding-dim (the output projection is the "
                       f"embedding transposed), got {settings['hidden_dim']} and {settings['embedding_dim']}; "
                       "set both, or --no-tie-embeddings")


def train_lstm(out, data=None, preset="nano", model_overrides=None, tokenizer_kind="bpe", vocabulary_size=2048,
               seq_len=None, val_fraction=0.1, text_field="text", train_config=None, resume=False,
               explicit_train_changes=None, command=None):
    """Trains (or with `resume`, continues) an LSTM language model run in `out`. Returns the loop's
    summary dict. With a prepared corpus as `data`, the tokenizer settings and `val_fraction` /
    `text_field` are those it was prepared with."""
    overrides = model_overrides or {}

    def start(train_config):
        check_model_settings(language_model.model_settings(PRESETS, preset, overrides, seq_len)[0])  # before the data
        return language_model.new_run("lstm", data, PRESETS, preset, overrides, seq_len, tokenizer_kind,
                                      vocabulary_size, val_fraction, text_field, train_config)

    def build_model(config):
        from zoo.families.lstm.model import LSTMLanguageModel

        model = LSTMLanguageModel(**config["model"])
        model.build()
        return model

    return language_model.train_language_model(
        out, "lstm", start, build_model, data=data, train_config=train_config, resume=resume,
        explicit_train_changes=explicit_train_changes, command=command)
