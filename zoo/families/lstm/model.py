"""An LSTM language model, in Keras 3 layers and ops only.

Read top to bottom: the model (embedding, stacked LSTMs, output projection), then its recurrent
state (what generation caches). Shapes, for a batch of token ids (batch, length):

    token_embedding          (batch, length)             -> (batch, length, embedding_dim)
    dropout
    lstm_i, i < num_layers   (batch, length, in_width)   -> (batch, length, hidden_dim), and its last (h, c)
    dropout after each
    output projection        (batch, length, hidden_dim) -> (batch, length, vocabulary_size), float32

The LSTMs are `keras.layers.LSTM` with the defaults a fused kernel needs (tanh and sigmoid, no
recurrent dropout, not unrolled, biases), so a backend that has one (cuDNN on a GPU) runs it.
Dropout is between layers, on the non-recurrent connections only (Zaremba et al., 2014). The
output projection is the token embedding transposed when `tie_embeddings` (Press & Wolf, 2017;
then `hidden_dim` must equal `embedding_dim`), else a Dense layer with a bias.

Generation caches the recurrent state instead of keys and values: one (h, c) pair per layer,
each (batch, hidden_dim), whatever the length so far. The model has the cache protocol zoo.engine's
decode engines compile (as a GPT has): `init_cache`, `prefill_with_cache` (a whole prompt through
the LSTM layers, its padding masked) and `call_with_cache` (a decode step: one token per row
through each layer's cell, the same weights and equations as the layer). Nothing here limits the
length: `max_length` is the context the model is served with (see zoo/families/lstm/__init__.py),
and no weight depends on it.
"""

import math

import keras
from keras import ops

from zoo.layers.attention import token_at
from zoo.layers.seeding import seeded_dropout as _dropout
from zoo.layers.quantized import embedding_table


@keras.saving.register_keras_serializable(package="zoo")
class LSTMLanguageModel(keras.Model):
    """Token ids (batch, length) -> next-token logits (batch, length, vocab), float32 whatever the
    compute precision, so that losses and sampling are stable."""

    def __init__(self, vocabulary_size, num_layers, hidden_dim, embedding_dim, max_length, dropout=0.0,
                 tie_embeddings=True, **kwargs):
        super().__init__(**kwargs)
        if tie_embeddings and hidden_dim != embedding_dim:
            raise ValueError(f"tie_embeddings needs hidden_dim equal to embedding_dim (the output projection is the "
                             f"embedding transposed), got hidden_dim {hidden_dim} and embedding_dim {embedding_dim}")
        self.vocabulary_size, self.num_layers, self.hidden_dim = vocabulary_size, num_layers, hidden_dim
        self.embedding_dim, self.max_length, self.dropout = embedding_dim, max_length, dropout
        self.tie_embeddings = tie_embeddings
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, dtype=policy,
                                                      name="token_embedding")
        self.drop = _dropout(dropout, policy)
        self.lstms = [keras.layers.LSTM(hidden_dim, return_sequences=True, return_state=True, dtype=policy,
                                        name=f"lstm_{i}")
                      for i in range(num_layers)]
        self.output_projection = None
        if not tie_embeddings:
            self.output_projection = keras.layers.Dense(vocabulary_size, dtype=policy, name="output_projection")

    def build(self, input_shape=None):
        if self.built:
            return
        self.token_embedding.build((None, None))
        width = self.embedding_dim
        for lstm in self.lstms:
            lstm.build((None, None, width))
            width = self.hidden_dim
        if self.output_projection is not None:
            self.output_projection.build((None, None, self.hidden_dim))
        self.built = True

    def _run(self, token_ids, state=None, mask=None, training=False):
        """The LSTM stack over token_ids (batch, length), from `state` (None: zeros), steps where
        `mask` (batch, length) is False skipped (the state carried over them): (outputs of the last
        layer (batch, length, hidden_dim), the state after the last token)."""
        x = self.drop(self.token_embedding(token_ids), training=training)  # (batch, length, embedding_dim)
        new_state = []
        for i, lstm in enumerate(self.lstms):
            initial = None if state is None else list(state[i])
            # (batch, length, hidden_dim), and the last h and c, each (batch, hidden_dim)
            x, h, c = lstm(x, initial_state=initial, mask=mask, training=training)
            x = self.drop(x, training=training)
            new_state.append((h, c))
        return x, new_state

    def _logits(self, x):
        """(..., hidden_dim) -> (..., vocabulary_size) float32 logits."""
        if self.output_projection is not None:
            return ops.cast(self.output_projection(x), "float32")
        embeddings = embedding_table(self.token_embedding, x.dtype)  # (vocab, embedding_dim = hidden_dim)
        return ops.cast(ops.matmul(x, ops.transpose(embeddings)), "float32")

    def call(self, token_ids, training=False):
        x, _ = self._run(token_ids, training=training)
        return self._logits(x)

    # -- decoding: the cache protocol zoo.engine compiles, the recurrent state as the cache ------

    @property
    def max_prompt_length(self):
        """The longest prompt `prefill_with_cache` takes: the whole context."""
        return self.max_length

    @staticmethod
    def first_position(prompt_length):
        """The position of the first generated token: right after the prompt. Positions only count
        tokens here (against the context): the state is wherever its sequence has got to."""
        return prompt_length

    def init_cache(self, batch_size):
        """The state of `batch_size` sequences before any token: per layer, a (h, c) pair of zeros,
        each (batch_size, hidden_dim)."""
        dtype = self.dtype_policy.compute_dtype
        return [(ops.zeros((batch_size, self.hidden_dim), dtype), ops.zeros((batch_size, self.hidden_dim), dtype))
                for _ in self.lstms]

    def prefill_with_cache(self, token_ids, length):
        """Runs prompts, (rows, padded length) each with its `length` real tokens first (`length`
        one int for all rows, or one per row), from zero state: (logits (rows, vocab) of each
        prompt's last real token, their state). The padding is masked, so each row's state is
        the one after its last real token."""
        length = ops.reshape(ops.convert_to_tensor(length, "int32"), (-1, 1))
        mask = ops.arange(ops.shape(token_ids)[1], dtype="int32")[None, :] < length  # (rows, padded length)
        x, state = self._run(token_ids, mask=ops.broadcast_to(mask, ops.shape(token_ids)))
        return self._logits(token_at(x, length[:, 0] - 1)), state

    def call_with_cache(self, token_ids, cache, start=None, logits_at=None, reach=None):
        """Runs token_ids (batch, length) from the state in the first `batch` rows of `cache` (it may
        have more rows: the rest are left as they are). `start` (positions) and `reach` are the
        KV-cache protocol's, unused: a state needs neither. Returns (logits, cache): logits
        (batch, length, vocab), or (batch, vocab) of the token at index `logits_at`; the cache
        holds the state after the last token. One token per row is one step of each layer's cell:
        the computation its LSTM layer repeats, on the same weights."""
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        state = [(h[:batch], c[:batch]) for h, c in cache]
        if length == 1:  # a decode step: the cells, without the layers' loop
            x, new_state = self.token_embedding(token_ids[:, 0]), []  # (batch, embedding_dim)
            for lstm, (h, c) in zip(self.lstms, state):
                x, (h, c) = lstm.cell(x, [h, c])  # (batch, hidden_dim), and the new (h, c)
                new_state.append((h, c))
            x = x[:, None]  # (batch, 1, hidden_dim)
        else:
            x, new_state = self._run(token_ids, state)
        cache = [(ops.slice_update(h, (0, 0), new_h), ops.slice_update(c, (0, 0), new_c))
                 for (h, c), (new_h, new_c) in zip(cache, new_state)]
        return self._logits(x if logits_at is None else token_at(x, logits_at)), cache

    # -- bookkeeping ----------------------------------------------------------------------------

    def training_flops_per_token(self, seq_len):
        """Training FLOPs per token, 6N (zoo.training.flops): N the weights multiplied per token, the
        embedding only as the tied output projection (as a lookup it multiplies nothing). No
        attention term: a recurrent step costs the same at any position."""
        weights = sum(math.prod(w.shape) for w in self.trainable_weights)
        if not self.tie_embeddings:
            weights -= self.vocabulary_size * self.embedding_dim
        return 6 * weights

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
                "hidden_dim": self.hidden_dim, "embedding_dim": self.embedding_dim, "max_length": self.max_length,
                "dropout": self.dropout, "tie_embeddings": self.tie_embeddings}

