"""GPT-style decoder-only transformer, in Keras 3 ops and keras-hub layers only.

Read top to bottom: attention, block, model, presets. Like GPT-2 / nanoGPT: token + position
embedding, pre-LayerNorm blocks, causal multi-head self-attention (`keras.ops.dot_product_attention`,
or batched matmuls under XLA on a CPU: zoo.layers.attention), GELU MLP, dropout, and an output
projection tied to the token embedding (keras-hub's `ReversibleEmbedding`).

Decoding uses a static-shape KV cache in the layout of zoo.layers.attention: `init_cache` returns,
per layer, a (keys, values) pair of zeros (in blocks) for `max_length` positions per row, and `call_with_cache`
runs any number of tokens per row starting at any position (one start for all rows, or one per
row), writing their keys/values into the cache at their positions (`cached_attention`, shared with
the seq2seq decoder). Prefill (the whole prompt at position 0, `prefill_with_cache`) and a decode
step (one token per row, each row at its own position) are the same code; `zoo.engine` compiles it.

The attention layer is our own rather than keras-hub's `TransformerDecoder` because that routes
through `keras.layers.MultiHeadAttention`, whose cache layout and masking we cannot pick, and the
fast engine needs one fused QKV projection and a fixed-shape cache it controls.
"""

import math

import keras
import keras_hub
from keras import ops

from zoo.layers.attention import cached_attention, causal_attention, kv_cache, token_at
from zoo.layers.quantized import tied_logits
from zoo.layers.seeding import normal as _normal
from zoo.layers.seeding import seeded_dropout as _dropout
from zoo.families.gpt.presets import PRESETS


@keras.saving.register_keras_serializable(package="zoo")
class CausalSelfAttention(keras.layers.Layer):
    """Multi-head causal self-attention with an optional rotary position encoding and KV cache."""

    def __init__(self, num_heads, hidden_dim, rotary=False, output_stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.hidden_dim, self.rotary = num_heads, hidden_dim, rotary
        self.output_stddev = output_stddev
        self.head_dim = hidden_dim // num_heads
        self.qkv = keras.layers.Dense(3 * hidden_dim, kernel_initializer=_normal(0.02), dtype=self.dtype_policy, name="qkv")
        self.out = keras.layers.Dense(hidden_dim, kernel_initializer=_normal(output_stddev), dtype=self.dtype_policy, name="out")
        self.rotary_embedding = keras_hub.layers.RotaryEmbedding(dtype=self.dtype_policy) if rotary else None

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.out.build(input_shape)

    def call(self, x, length, cache=None, positions=None, reach=None):
        """x: the rows (batch * length, hidden) of sequences of `length` tokens. Without a cache,
        causal attention over x alone. With one (this layer's (keys, values), laid out as
        `GPT.init_cache` says), `positions` (batch, length) gives each token's absolute position:
        its key/value is written there and it attends to the cache up to its own position. `reach`
        (a Python int, at least every position + 1) limits what is read of the cache to its first
        `reach` positions. Returns (output rows, cache)."""
        # (batch, length, 3, heads, head_dim)
        qkv = ops.reshape(self.qkv(x), (-1, length, 3, self.num_heads, self.head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary_embedding is not None:
            q = self.rotary_embedding(q, positions=positions)
            k = self.rotary_embedding(k, positions=positions)
        if cache is None:
            out = causal_attention(q, k, v)
        else:
            out, cache = cached_attention(q, k, v, cache, positions, reach)
        return self.out(ops.reshape(out, (-1, self.hidden_dim))), cache

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "hidden_dim": self.hidden_dim,
                "rotary": self.rotary, "output_stddev": self.output_stddev}


@keras.saving.register_keras_serializable(package="zoo")
class GPTBlock(keras.layers.Layer):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, num_heads, hidden_dim, intermediate_dim, dropout=0.0, rotary=False,
                 output_stddev=0.02, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.hidden_dim, self.intermediate_dim = num_heads, hidden_dim, intermediate_dim
        self.dropout, self.rotary, self.output_stddev = dropout, rotary, output_stddev
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.attn_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name="attn_norm")
        self.attn = CausalSelfAttention(num_heads, hidden_dim, rotary, output_stddev, dtype=policy, name="attn")
        self.mlp_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name="mlp_norm")
        self.mlp_in = keras.layers.Dense(intermediate_dim, kernel_initializer=_normal(0.02), dtype=policy, name="mlp_in")
        self.mlp_out = keras.layers.Dense(hidden_dim, kernel_initializer=_normal(output_stddev), dtype=policy, name="mlp_out")
        self.drop = _dropout(dropout, policy)

    def build(self, input_shape):
        for layer in (self.attn_norm, self.attn, self.mlp_norm, self.mlp_in):
            layer.build(input_shape)
        self.mlp_out.build((*input_shape[:-1], self.intermediate_dim))

    def call(self, x, cache=None, positions=None, reach=None, training=False):
        # The block works on rows (batch * length, hidden): XLA's CPU backward pass of a Dense over
        # a 3-D input took 1.7x the time of the same product over 2-D rows (a GPT's training step on
        # JAX, benchmarks/vs_nanogpt.py); attention alone sees (batch, length).
        shape = ops.shape(x)
        x = ops.reshape(x, (-1, shape[-1]))
        h, cache = self.attn(self.attn_norm(x), length=shape[1], cache=cache, positions=positions, reach=reach)
        x = x + self.drop(h, training=training)
        h = self.mlp_out(ops.gelu(self.mlp_in(self.mlp_norm(x)), approximate=True))
        return ops.reshape(x + self.drop(h, training=training), shape), cache

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "hidden_dim": self.hidden_dim,
                "intermediate_dim": self.intermediate_dim, "dropout": self.dropout, "rotary": self.rotary,
                "output_stddev": self.output_stddev, "layer_norm_epsilon": self.layer_norm_epsilon}


@keras.saving.register_keras_serializable(package="zoo")
class GPT(keras.Model):
    """Decoder-only language model: token ids (batch, length) -> next-token logits (batch, length, vocab).

    Logits are float32 whatever the compute precision, so that losses and sampling are stable.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, max_length,
                 dropout=0.0, position_embedding="learned", layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if position_embedding not in ("learned", "rotary"):
            raise ValueError(f"position_embedding must be 'learned' or 'rotary', not {position_embedding!r}")
        self.vocabulary_size, self.num_layers, self.num_heads = vocabulary_size, num_layers, num_heads
        self.hidden_dim, self.intermediate_dim, self.max_length = hidden_dim, intermediate_dim, max_length
        self.dropout, self.position_embedding = dropout, position_embedding
        self.layer_norm_epsilon = layer_norm_epsilon
        policy = self.dtype_policy
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size, hidden_dim, tie_weights=True, embeddings_initializer=_normal(0.02),
            dtype=policy, name="token_embedding")
        self.learned_positions = None
        if position_embedding == "learned":
            self.learned_positions = keras_hub.layers.PositionEmbedding(
                max_length, initializer=_normal(0.02), dtype=policy, name="position_embedding")
        self.embedding_dropout = _dropout(dropout, policy)
        # GPT-2's scaled init for the projections that write into the residual stream.
        output_stddev = 0.02 / math.sqrt(2 * num_layers)
        self.blocks = [
            GPTBlock(num_heads, hidden_dim, intermediate_dim, dropout, position_embedding == "rotary",
                     output_stddev, layer_norm_epsilon, dtype=policy, name=f"block_{i}")
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name="final_norm")

    def build(self, input_shape=None):
        if self.built:
            return
        hidden_shape = (None, None, self.hidden_dim)
        self.token_embedding.build()
        if self.learned_positions is not None:
            self.learned_positions.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.final_norm.build(hidden_shape)
        self.built = True

    def _embed(self, token_ids, positions=None, training=False):
        x = self.token_embedding(token_ids)
        if self.learned_positions is not None:
            x = x + (self.learned_positions(x) if positions is None else self.learned_positions(x, positions=positions))
        return self.embedding_dropout(x, training=training)

    def _logits(self, x):
        return ops.cast(self.token_embedding(self.final_norm(x), reverse=True), "float32")

    def call(self, token_ids, training=False):
        x = self._embed(token_ids, training=training)
        for block in self.blocks:
            x, _ = block(x, training=training)
        return self._logits(x)

    # -- decoding: the cache protocol zoo.engine compiles -----------------------------------------

    # Every position has its own keys and values in the cache, so decoding may resume from an
    # earlier position (speculative decoding drops rejected proposals so): see DecodeEngine.verify.
    positional_cache = True

    @staticmethod
    def torch_engine():
        """The decode engine `zoo.engine.backends` runs this model with on torch: a plain-torch twin."""
        from zoo.families.gpt.torch_engine import TorchEngine

        return TorchEngine

    @property
    def max_prompt_length(self):
        """The longest prompt `prefill_with_cache` takes: the whole context."""
        return self.max_length

    @staticmethod
    def first_position(prompt_length):
        """Where the first generated token goes in the cache: right after the prompt."""
        return prompt_length

    def init_cache(self, batch_size):
        """An empty KV cache for `batch_size` sequences of up to `max_length` tokens, in the one
        layout of zoo.layers.attention: per layer, a (keys, values) pair, each a tuple of blocks of
        positions, of shapes (batch, heads, head_dim, positions) and (batch, heads, positions,
        head_dim)."""
        return kv_cache(batch_size, self.num_layers, self.num_heads, self.hidden_dim // self.num_heads,
                        self.max_length, self.dtype_policy.compute_dtype)

    def prefill_with_cache(self, token_ids, length):
        """Runs prompts, (rows, padded length) each with its `length` real tokens first (`length`
        one int for all rows, or one per row), into a fresh cache of `rows` rows from position 0:
        (logits (rows, vocab) of each prompt's last real token, cache). The padding's keys and
        values land beyond the prompt, where no query looks and decoding overwrites them.
        Attention reads the cache's blocks up to the padded length only (a GPT-2-shaped prompt of
        16: 5.8 -> 3.2 ms on TensorFlow, 4.5 -> 3.3 on JAX)."""
        return self.call_with_cache(token_ids, self.init_cache(token_ids.shape[0]), 0, logits_at=length - 1,
                                    reach=token_ids.shape[1])

    def call_with_cache(self, token_ids, cache, start, logits_at=None, reach=None):
        """Runs `token_ids` (batch, length) against `cache`, row r at positions start[r] ..
        start[r]+length-1; `start` is an int (or scalar tensor) for all rows, or a (batch,) vector.
        The cache may have more rows than `batch`: the rest are left as they are. `reach`, a
        Python int above every position, limits attention's reading of the cache to its first
        `reach` positions (default: all max_length).

        Returns (logits, cache), the cache holding these tokens' keys and values too; logits are
        (batch, length, vocab), or (batch, vocab) for the token at index `logits_at` alone, one
        index for all rows or one per row (a prefill padded to a fixed length wants only each
        prompt's last real token's). The caller keeps every position below max_length.
        """
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        start = ops.convert_to_tensor(start, dtype="int32")
        if len(start.shape) == 0:
            start = ops.broadcast_to(start, (batch,))
        positions = start[:, None] + ops.arange(length, dtype="int32")[None, :]
        x = self._embed(token_ids, positions)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, cache=layer_cache, positions=positions, reach=reach)
            new_cache.append(layer_cache)
        if logits_at is not None:  # one row of logits per sequence
            x = token_at(x, logits_at)
        # As E·x for a float embedding, and int8's integer sums on the table as it lies: see `tied_logits`.
        return ops.cast(tied_logits(self.token_embedding, self.final_norm(x)), "float32"), new_cache

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
                "max_length": self.max_length, "dropout": self.dropout,
                "position_embedding": self.position_embedding, "layer_norm_epsilon": self.layer_norm_epsilon}


def gpt_from_preset(preset, vocabulary_size, **overrides):
    """A GPT built from a named preset, with any field overridden (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    model = GPT(vocabulary_size=vocabulary_size, **config)
    model.build()
    return model
