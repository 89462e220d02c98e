"""Sequence-to-sequence transformer (encoder-decoder), in Keras 3 ops and keras-hub layers only.

Read top to bottom: presets, dropout seeding, the model. As in "Attention Is All You Need" and BART:
the encoder is a stack of bidirectional `keras_hub.layers.TransformerEncoder`s that ignore source
padding; the decoder is a stack of `keras_hub.layers.TransformerDecoder`s with causal
self-attention and cross-attention to the encoder output. Learned position embeddings, GELU MLPs,
pre-LayerNorm blocks with a final LayerNorm on each side (more stable to train than the paper's
post-LayerNorm, as in GPT-2 and our GPT), and the decoder's output projection tied to its input
embedding (keras-hub's `ReversibleEmbedding`). With `shared_embeddings` the source uses that same
embedding too (one vocabulary for both languages).

Pretrained checkpoints (zoo/families/seq2seq/huggingface.py) need switches, whose defaults are the
layout above (so bundles from before them load unchanged):
    normalize_first=False   post-LayerNorm blocks and no final LayerNorms (BART, Marian)
    activation              the MLP's: "gelu" (exact), "relu" or "silu" (Marian's "swish")
    position_embedding      "learned", or "sinusoidal" (Marian's fixed table: sines, then cosines)
    position_offset         rows of the position table before position 0 (BART's learned table: 2)
    scale_embedding         token embeddings times sqrt(hidden_dim) (Marian)
    embedding_norm          a LayerNorm after token + position embeddings (BART's layernorm_embedding)
    final_logits_bias       a fixed bias added to the logits (BART's and Marian's buffer)
    decoder_start_token_id  the decoder's first input (default: the target tokenizer's end token)
    forced_bos_token_id     the token decoding always generates first (BART's forced <s>)

Decoding has the cache protocol of `zoo.families.gpt.model.GPT`, which `zoo.engine` compiles for both:
`init_cache` returns an empty static-shape cache (the decoder's self-attention keys/values in the
one layout of zoo.layers.attention, and room for each decoder layer's cross-attention keys/values
of the source and its padding mask); `prefill_with_cache` encodes one source into it and runs the
start token; `call_with_cache` runs target tokens, each row at its own position. The decoder step
is written out over keras-hub's TransformerDecoder's own sublayers and weights, since its cached
call takes one position for all rows (a scalar cache index).
"""

import math

import keras
import keras_hub
import numpy as np
from keras import ops

from zoo.layers.attention import attend, cache_layout, cached_attention, kv_cache, source_cache
from zoo.layers.quantized import tied_logits
from zoo.layers.seeding import normal as _normal
from zoo.layers.seeding import seed_dropouts as _seed_dropouts
from zoo.layers.seeding import seeded_dropout as _dropout
from zoo.families.seq2seq.presets import PRESETS

ACTIVATIONS = ("gelu", "relu", "silu")
POSITION_EMBEDDINGS = ("learned", "sinusoidal")


def sinusoidal_table(length, dim):
    """Marian's (and fairseq's) fixed position table (length, dim): sin(p / 10000^(2i/dim)) in the
    first half of each row, the cosines in the second (not interleaved)."""
    angles = np.arange(length)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None, :]
    return np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="zoo")
class Seq2Seq(keras.Model):
    """Encoder-decoder: {"source_ids", "source_padding_mask", "target_ids"} -> next-token logits
    (batch, target_length, target_vocabulary_size), float32 whatever the compute precision.

    `target_ids` is the decoder input (teacher forcing: the start token, then the target).
    """

    def __init__(self, source_vocabulary_size, target_vocabulary_size, num_encoder_layers, num_decoder_layers,
                 num_heads, hidden_dim, intermediate_dim, max_source_length, max_target_length, dropout=0.0,
                 shared_embeddings=False, layer_norm_epsilon=1e-5, normalize_first=True, activation="gelu",
                 position_embedding="learned", position_offset=0, scale_embedding=False, embedding_norm=False,
                 final_logits_bias=False, decoder_start_token_id=None, forced_bos_token_id=None, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding {position_embedding!r}: choose one of {', '.join(POSITION_EMBEDDINGS)}")
        if shared_embeddings and source_vocabulary_size != target_vocabulary_size:
            raise ValueError("shared_embeddings needs one vocabulary: source_vocabulary_size "
                             f"{source_vocabulary_size} differs from target_vocabulary_size {target_vocabulary_size}")
        self.source_vocabulary_size, self.target_vocabulary_size = source_vocabulary_size, target_vocabulary_size
        self.num_encoder_layers, self.num_decoder_layers = num_encoder_layers, num_decoder_layers
        self.num_heads, self.hidden_dim, self.intermediate_dim = num_heads, hidden_dim, intermediate_dim
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.dropout, self.shared_embeddings, self.layer_norm_epsilon = dropout, shared_embeddings, layer_norm_epsilon
        self.normalize_first, self.activation, self.position_embedding = normalize_first, activation, position_embedding
        self.position_offset, self.scale_embedding, self.embedding_norm = position_offset, scale_embedding, embedding_norm
        self.final_logits_bias = final_logits_bias
        self.decoder_start_token_id, self.forced_bos_token_id = decoder_start_token_id, forced_bos_token_id
        self.embedding_scale = math.sqrt(hidden_dim) if scale_embedding else 1.0
        policy = self.dtype_policy

        def embedding(size, name):
            return keras_hub.layers.ReversibleEmbedding(size, hidden_dim, tie_weights=True,
                                                        embeddings_initializer=_normal(0.02), dtype=policy, name=name)

        def positions(length, name):
            return keras_hub.layers.PositionEmbedding(length + position_offset, initializer=_normal(0.02),
                                                      trainable=position_embedding == "learned", dtype=policy,
                                                      name=name)

        def norm(name):
            return keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name=name)

        block = dict(intermediate_dim=intermediate_dim, num_heads=num_heads, dropout=dropout, activation=activation,
                     layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=_normal(0.02),
                     normalize_first=normalize_first, dtype=policy)
        self.target_embedding = embedding(target_vocabulary_size, "target_embedding")
        self.source_embedding = (self.target_embedding if shared_embeddings
                                 else embedding(source_vocabulary_size, "source_embedding"))
        self.source_positions = positions(max_source_length, "source_position_embedding")
        self.target_positions = positions(max_target_length, "target_position_embedding")
        self.embedding_dropout = _dropout(dropout, policy)
        self.encoder_layers = [keras_hub.layers.TransformerEncoder(**block, name=f"encoder_{i}")
                               for i in range(num_encoder_layers)]
        self.decoder_layers = [keras_hub.layers.TransformerDecoder(**block, name=f"decoder_{i}")
                               for i in range(num_decoder_layers)]
        # Pre-LayerNorm blocks leave their sum unnormalized: a final LayerNorm on each side.
        self.encoder_norm = norm("encoder_norm") if normalize_first else None
        self.decoder_norm = norm("decoder_norm") if normalize_first else None
        self.source_embedding_norm = norm("source_embedding_norm") if embedding_norm else None
        self.target_embedding_norm = norm("target_embedding_norm") if embedding_norm else None

    def build(self, input_shape=None):
        if self.built:
            return
        hidden_shape = (None, None, self.hidden_dim)
        self.source_embedding.build()
        if not self.shared_embeddings:
            self.target_embedding.build()
        self.source_positions.build(hidden_shape)
        self.target_positions.build(hidden_shape)
        for layer in self.encoder_layers:
            layer.build(hidden_shape)
            _seed_dropouts(layer)
        for layer in self.decoder_layers:
            layer.build(hidden_shape, hidden_shape)
            _seed_dropouts(layer)
        for norm in (self.encoder_norm, self.decoder_norm, self.source_embedding_norm, self.target_embedding_norm):
            if norm is not None:
                norm.build(hidden_shape)
        if self.position_embedding == "sinusoidal":
            table = sinusoidal_table(self.max_source_length + self.position_offset, self.hidden_dim)
            self.source_positions.position_embeddings.assign(table)
            table = sinusoidal_table(self.max_target_length + self.position_offset, self.hidden_dim)
            self.target_positions.position_embeddings.assign(table)
        # A fixed bias (a buffer in transformers: fine-tuning leaves it as it is).
        self.logits_bias = (self.add_weight(shape=(self.target_vocabulary_size,), initializer="zeros",
                                            trainable=False, name="final_logits_bias")
                            if self.final_logits_bias else None)
        self.built = True

    # -- encoder ---------------------------------------------------------------------------------

    @staticmethod
    def _normed(norm, x):
        return x if norm is None else norm(x)

    def _embed(self, embedding, positions, norm, ids, training, start=0, at=None):
        """Token embeddings (scaled) + position embeddings (at `start`.., or at `at`, (batch, length)),
        LayerNorm'd when the model has embedding_norm, then dropout."""
        x = embedding(ids)
        if self.scale_embedding:
            x = x * ops.cast(self.embedding_scale, x.dtype)
        if at is None:
            x = x + positions(x, start_index=start + self.position_offset)
        else:
            x = x + positions(x, positions=at + self.position_offset)
        return self.embedding_dropout(self._normed(norm, x), training=training)

    def encode(self, source_ids, source_padding_mask, training=False):
        """The encoder output (batch, source_length, hidden_dim); padded positions are ignored."""
        x = self._embed(self.source_embedding, self.source_positions, self.source_embedding_norm, source_ids, training)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=source_padding_mask, training=training)
        return self._normed(self.encoder_norm, x)

    # -- decoder ---------------------------------------------------------------------------------

    def _embed_target(self, target_ids, training=False, start=0, at=None):
        return self._embed(self.target_embedding, self.target_positions, self.target_embedding_norm, target_ids,
                           training, start, at)

    def _logits(self, x):
        logits = ops.cast(self.target_embedding(self._normed(self.decoder_norm, x), reverse=True), "float32")
        return logits if self.logits_bias is None else logits + ops.cast(self.logits_bias, "float32")

    def call(self, inputs, training=False):
        mask = inputs["source_padding_mask"]
        encoded = self.encode(inputs["source_ids"], mask, training=training)
        x = self._embed_target(inputs["target_ids"], training)
        for layer in self.decoder_layers:
            x = layer(x, encoded, encoder_padding_mask=mask, training=training)
        return self._logits(x)

    # -- decoding: the cache protocol zoo.engine compiles -----------------------------------------

    # Every target position has its own keys and values in the decoder's self-attention cache (the
    # source's cross-attention ones are only read), as in a GPT's: see DecodeEngine.verify. (The
    # JAX engine's int8 single-row step relies on it too.)
    positional_cache = True

    @staticmethod
    def torch_engine():
        """The decode engine `zoo.engine.backends` runs this model with on torch: a plain-torch twin."""
        from zoo.families.seq2seq.torch_step import TorchSeq2SeqEngine

        return TorchSeq2SeqEngine

    @property
    def max_length(self):
        """The positions a decode step can be at: the decoder's."""
        return self.max_target_length

    @property
    def max_prompt_length(self):
        """The longest prompt `prefill_with_cache` takes: the start token and a whole source."""
        return self.max_source_length + 1

    @staticmethod
    def first_position(prompt_length):
        """Where the first generated token goes in the cache: after the start token, at position 0."""
        return 1

    def init_cache(self, batch_size):
        """An empty cache for decoding `batch_size` sequences, each against its own source:

        "self": the decoder's self-attention cache, per layer a (keys, values) pair in the one
            layout of zoo.layers.attention (in blocks of positions) for max_target_length positions;
        "cross": each decoder layer's cross-attention keys and values of the encoded source, in
            the same layout, one array each for max_source_length positions, computed once per source;
        "source_mask": (batch, max_source_length), True at the source's real tokens.
        """
        head_dim, dtype = self.hidden_dim // self.num_heads, self.dtype_policy.compute_dtype
        layers, heads = self.num_decoder_layers, self.num_heads
        return {"self": kv_cache(batch_size, layers, heads, head_dim, self.max_target_length, dtype),
                "cross": source_cache(batch_size, layers, heads, head_dim, self.max_source_length, dtype),
                "source_mask": ops.zeros((batch_size, self.max_source_length), dtype="bool")}

    def prefill_with_cache(self, token_ids, length):
        """A prompt, (1, padded length) with its `length` real tokens first: the decoder's start
        token, then the source's ids. Encodes the source, puts each decoder layer's cross-attention
        keys/values of it and its padding mask in a fresh 1-row cache, then runs the start token at
        target position 0. Returns (logits (1, vocab) of the first target token, cache).
        (Several prompts at once work too: (rows, padded length), `length` one per row.)"""
        rows, source = token_ids.shape[0], token_ids[:, 1:]
        width = source.shape[1]  # static: the prompt's padded length less the start token
        lengths = ops.reshape(ops.convert_to_tensor(length, "int32"), (-1, 1))
        mask = ops.arange(self.max_source_length, dtype="int32")[None, :] < lengths - 1
        mask = ops.broadcast_to(mask, (rows, self.max_source_length))
        encoded = self.encode(source, mask[:, :width])
        cache = self.init_cache(rows)
        padding = self.max_source_length - width
        cross = []
        for layer in self.decoder_layers:
            attention = layer._cross_attention_layer
            keys, values = cache_layout(attention._key_dense(encoded), attention._value_dense(encoded))
            if padding:
                keys = ops.pad(keys, ((0, 0), (0, 0), (0, 0), (0, padding)))
                values = ops.pad(values, ((0, 0), (0, 0), (0, padding), (0, 0)))
            cross.append((keys, values))
        cache = {**cache, "cross": cross, "source_mask": mask}
        logits, cache = self.call_with_cache(token_ids[:, :1], cache, 0, logits_at=0, reach=1)
        return self.force_first_token(logits), cache

    def force_first_token(self, logits):
        """The first target token's logits (rows, vocab), with forced_bos_token_id the only token
        possible (0, every other -inf), as transformers' ForcedBOSTokenLogitsProcessor: every way
        of decoding (greedy, sampling, beams) then starts with it."""
        if self.forced_bos_token_id is None:
            return logits
        forced = ops.arange(ops.shape(logits)[-1]) == self.forced_bos_token_id
        return ops.where(forced[None, :], ops.zeros_like(logits), ops.full_like(logits, -float("inf")))

    def call_with_cache(self, target_ids, cache, start, logits_at=None, reach=None):
        """Runs `target_ids` (batch, length) through the decoder against `cache` (`init_cache`'s,
        its sources already in place), row r at target positions start[r] .. start[r]+length-1;
        `start` is an int (or scalar tensor) for all rows, or a (batch,) vector. The cache may have
        more rows than `batch`: the rest are left as they are. `reach`, a Python int above every
        position, limits self-attention's reading of the cache to its first `reach` positions.

        keras-hub's TransformerDecoder step by step over its own weights (pre- or post-LayerNorm):
        its cached call takes one position for all rows, and a server's rows are each at their own.
        Returns (logits, cache): logits (batch, length, vocab), or (batch, vocab) for the token at
        index `logits_at` alone; the cache holds these tokens' self-attention keys and values too.
        """
        batch, length = ops.shape(target_ids)[0], ops.shape(target_ids)[1]
        start = ops.convert_to_tensor(start, dtype="int32")
        if len(start.shape) == 0:
            start = ops.broadcast_to(start, (batch,))
        positions = start[:, None] + ops.arange(length, dtype="int32")[None, :]
        x = self._embed_target(target_ids, at=positions)
        rows = target_ids.shape[0]
        source_visible = cache["source_mask"]
        if source_visible.shape[0] != rows:
            source_visible = source_visible[:rows]
        source_visible = source_visible[:, None, None, :]  # (batch, heads, length, source length)
        self_cache = []
        def residual(x, norm, sublayer):  # keras-hub's block order, pre- or post-LayerNorm
            if self.normalize_first:
                return x + sublayer(norm(x))
            return norm(x + sublayer(x))

        for layer, layer_cache, (cross_keys, cross_values) in zip(self.decoder_layers, cache["self"], cache["cross"]):
            attention, cross = layer._self_attention_layer, layer._cross_attention_layer
            if cross_keys.shape[0] != rows:
                cross_keys, cross_values = cross_keys[:rows], cross_values[:rows]

            def self_attend(h):
                out, kv = cached_attention(attention._query_dense(h), attention._key_dense(h),
                                           attention._value_dense(h), layer_cache, positions, reach)
                self_cache.append(kv)
                return attention._output_dense(out)

            x = residual(x, layer._self_attention_layer_norm, self_attend)
            x = residual(x, layer._cross_attention_layer_norm, lambda h: cross._output_dense(
                attend(cross._query_dense(h), cross_keys, cross_values, source_visible)))
            x = residual(x, layer._feedforward_layer_norm, lambda h: layer._feedforward_output_dense(
                layer._feedforward_intermediate_dense(h)))  # the intermediate Dense applies the activation
        cache = {**cache, "self": self_cache}
        if logits_at is not None:  # one row of logits per sequence
            x = ops.take(x, logits_at, axis=1)
        # As E·x for a float embedding, and int8's integer sums on the table as it lies: see `tied_logits`.
        logits = ops.cast(tied_logits(self.target_embedding, self._normed(self.decoder_norm, x)), "float32")
        return (logits if self.logits_bias is None else logits + ops.cast(self.logits_bias, "float32")), cache

    def get_config(self):
        return {**super().get_config(), "source_vocabulary_size": self.source_vocabulary_size,
                "target_vocabulary_size": self.target_vocabulary_size,
                "num_encoder_layers": self.num_encoder_layers, "num_decoder_layers": self.num_decoder_layers,
                "num_heads": self.num_heads, "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
                "max_source_length": self.max_source_length, "max_target_length": self.max_target_length,
                "dropout": self.dropout, "shared_embeddings": self.shared_embeddings,
                "layer_norm_epsilon": self.layer_norm_epsilon, "normalize_first": self.normalize_first,
                "activation": self.activation, "position_embedding": self.position_embedding,
                "position_offset": self.position_offset, "scale_embedding": self.scale_embedding,
                "embedding_norm": self.embedding_norm, "final_logits_bias": self.final_logits_bias,
                "decoder_start_token_id": self.decoder_start_token_id,
                "forced_bos_token_id": self.forced_bos_token_id}


def seq2seq_from_preset(preset, source_vocabulary_size, target_vocabulary_size=None, **overrides):
    """A Seq2Seq built from a named preset, with any field overridden (None values are ignored).

    `target_vocabulary_size` defaults to the source's (one shared vocabulary).
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    config = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    model = Seq2Seq(source_vocabulary_size=source_vocabulary_size,
                    target_vocabulary_size=target_vocabulary_size or source_vocabulary_size, **config)
    model.build()
    return model
