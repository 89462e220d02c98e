"""Sequence-to-sequence transformer (encoder-decoder), in Keras 3 ops and keras-hub layers only.

Read top to bottom: presets, dropout seeding, the model. As in "Attention Is All You Need" and BART:
the encoder is a stack of bidirectional `keras_hub.layers.TransformerEncoder`s that ignore source
padding; the decoder is a stack of `keras_hub.layers.TransformerDecoder`s with causal
self-attention and cross-attention to the encoder output. Learned position embeddings, GELU MLPs,
pre-LayerNorm blocks with a final LayerNorm on each side (more stable to train than the paper's
post-LayerNorm, as in GPT-2 and our GPT), and the decoder's output projection tied to its input
embedding (keras-hub's `ReversibleEmbedding`). With `shared_embeddings` the source uses that same
embedding too (one vocabulary for both languages).

Decoding, as keras-hub's BART does it: `encode` runs the source once; `init_cache` returns an
empty static-shape self-attention cache and the cross-attention keys/values, computed once per
source; `decode_with_cache` runs any number of target tokens from any position against them.
"""

import keras
import keras_hub
from keras import ops

from zoo.models.gpt import _dropout

PRESETS = {
    # CPU-sized: demos and tests.
    "nano": dict(num_encoder_layers=2, num_decoder_layers=2, num_heads=4, hidden_dim=128, intermediate_dim=512,
                 max_source_length=64, max_target_length=64, dropout=0.0),
    # A GPU-hour model for small parallel corpora.
    "small": dict(num_encoder_layers=4, num_decoder_layers=4, num_heads=4, hidden_dim=256, intermediate_dim=1024,
                  max_source_length=128, max_target_length=128, dropout=0.1),
    # The shape of transformer-base (Vaswani et al., 2017).
    "base": dict(num_encoder_layers=6, num_decoder_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048,
                 max_source_length=256, max_target_length=256, dropout=0.1),
}


def _normal(stddev):
    return keras.initializers.RandomNormal(stddev=stddev)


def _seed_dropouts(layer):
    """Marks every Dropout inside a built keras-hub layer as seeded.

    keras-hub's transformer layers create their Dropouts without a seed, and on the torch backend
    an unseeded Dropout ignores its SeedGenerator and draws from torch's global RNG, which a
    checkpoint cannot restore (see `zoo.models.gpt._dropout`). The generator's state variable was
    already seeded from Python's RNG; recording that seed as the generator's own makes torch use
    the generator, whose state a checkpoint saves. (The layers are locked once built, so the
    generator cannot be replaced; this private field is the only switch.)
    """
    for sublayer in layer._flatten_layers():
        if isinstance(sublayer, keras.layers.Dropout) and sublayer.rate > 0 and sublayer.seed is None:
            generator = sublayer.seed_generator
            sublayer.seed = generator._initial_seed = int(ops.convert_to_numpy(generator.state)[0])


@keras.saving.register_keras_serializable(package="zoo")
class Seq2Seq(keras.Model):
    """Encoder-decoder: {"source_ids", "source_padding_mask", "target_ids"} -> next-token logits
    (batch, target_length, target_vocabulary_size), float32 whatever the compute precision.

    `target_ids` is the decoder input (teacher forcing: the start token, then the target).
    """

    def __init__(self, source_vocabulary_size, target_vocabulary_size, num_encoder_layers, num_decoder_layers,
                 num_heads, hidden_dim, intermediate_dim, max_source_length, max_target_length, dropout=0.0,
                 shared_embeddings=False, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        if shared_embeddings and source_vocabulary_size != target_vocabulary_size:
            raise ValueError("shared_embeddings needs one vocabulary: source_vocabulary_size "
                             f"{source_vocabulary_size} differs from target_vocabulary_size {target_vocabulary_size}")
        self.source_vocabulary_size, self.target_vocabulary_size = source_vocabulary_size, target_vocabulary_size
        self.num_encoder_layers, self.num_decoder_layers = num_encoder_layers, num_decoder_layers
        self.num_heads, self.hidden_dim, self.intermediate_dim = num_heads, hidden_dim, intermediate_dim
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.dropout, self.shared_embeddings, self.layer_norm_epsilon = dropout, shared_embeddings, layer_norm_epsilon
        policy = self.dtype_policy

        def embedding(size, name):
            return keras_hub.layers.ReversibleEmbedding(size, hidden_dim, tie_weights=True,
                                                        embeddings_initializer=_normal(0.02), dtype=policy, name=name)

        def positions(length, name):
            return keras_hub.layers.PositionEmbedding(length, initializer=_normal(0.02), dtype=policy, name=name)

        def norm(name):
            return keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy, name=name)

        block = dict(intermediate_dim=intermediate_dim, num_heads=num_heads, dropout=dropout, activation="gelu",
                     layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=_normal(0.02), normalize_first=True,
                     dtype=policy)
        self.target_embedding = embedding(target_vocabulary_size, "target_embedding")
        self.source_embedding = (self.target_embedding if shared_embeddings
                                 else embedding(source_vocabulary_size, "source_embedding"))
        self.source_positions = positions(max_source_length, "source_position_embedding")
        self.target_positions = positions(max_target_length, "target_position_embedding")
        self.embedding_dropout = _dropout(dropout, policy)
        self.encoder_layers = [keras_hub.layers.TransformerEncoder(**block, name=f"encoder_{i}")
                               for i in range(num_encoder_layers)]
        self.encoder_norm = norm("encoder_norm")
        self.decoder_layers = [keras_hub.layers.TransformerDecoder(**block, name=f"decoder_{i}")
                               for i in range(num_decoder_layers)]
        self.decoder_norm = norm("decoder_norm")

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
        self.encoder_norm.build(hidden_shape)
        self.decoder_norm.build(hidden_shape)
        self.built = True

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, source_ids, source_padding_mask, training=False):
        """The encoder output (batch, source_length, hidden_dim); padded positions are ignored."""
        x = self.source_embedding(source_ids)
        x = self.embedding_dropout(x + self.source_positions(x), training=training)
        for layer in self.encoder_layers:
            x = layer(x, padding_mask=source_padding_mask, training=training)
        return self.encoder_norm(x)

    # -- decoder ---------------------------------------------------------------------------------

    def _embed_target(self, target_ids, start, training=False):
        x = self.target_embedding(target_ids)
        return self.embedding_dropout(x + self.target_positions(x, start_index=start), training=training)

    def _logits(self, x):
        return ops.cast(self.target_embedding(self.decoder_norm(x), reverse=True), "float32")

    def call(self, inputs, training=False):
        mask = inputs["source_padding_mask"]
        encoded = self.encode(inputs["source_ids"], mask, training=training)
        x = self._embed_target(inputs["target_ids"], 0, training)
        for layer in self.decoder_layers:
            x = layer(x, encoded, encoder_padding_mask=mask, training=training)
        return self._logits(x)

    def init_cache(self, batch_size, encoder_output):
        """(self_cache, cross_cache) for decoding `batch_size` sequences against `encoder_output`.

        self_cache: zeros, (batch, decoder_layers, 2, max_target_length, heads, head_dim).
        cross_cache: each decoder layer's cross-attention keys and values of `encoder_output`,
        (batch, decoder_layers, 2, source_length, heads, head_dim), computed here once per source.
        """
        head_dim = self.hidden_dim // self.num_heads
        dtype = self.dtype_policy.compute_dtype
        per_layer = (batch_size, self.num_decoder_layers, 2)
        self_cache = ops.zeros((*per_layer, self.max_target_length, self.num_heads, head_dim), dtype=dtype)
        source_length = ops.shape(encoder_output)[1]
        cross_cache = ops.zeros((*per_layer, source_length, self.num_heads, head_dim), dtype=dtype)
        # keras-hub's decoder fills the cross-attention cache while it runs a step
        # (cross_attention_cache_update_index=0): one throwaway step on a dummy token fills it
        # through the public API rather than through the attention layers' private projections.
        # The step's self-attention keys/values are dropped, so self_cache stays empty.
        x = self._embed_target(ops.zeros((batch_size, 1), dtype="int32"), 0)
        filled = []
        for i, layer in enumerate(self.decoder_layers):
            x, _, layer_cross = layer(x, encoder_output, self_attention_cache=self_cache[:, i],
                                      self_attention_cache_update_index=0, cross_attention_cache=cross_cache[:, i],
                                      cross_attention_cache_update_index=0)
            filled.append(layer_cross)
        return self_cache, ops.stack(filled, axis=1)

    def decode_with_cache(self, target_ids, cache, cross_cache, source_padding_mask, start):
        """Runs `target_ids` at positions start .. start+length-1 of the decoder.

        Returns (logits, cache), the cache holding these tokens' keys and values too. The caller
        keeps start + length <= max_target_length. `cross_cache` is read, never written.
        """
        x = self._embed_target(target_ids, start)
        # With a cross cache the decoder layers read the encoder sequence only for its shape: the
        # first layer's cached keys, (batch, source_length, hidden_dim), stand in for it.
        keys = cross_cache[:, 0, 0]
        stand_in = ops.reshape(keys, (ops.shape(keys)[0], ops.shape(keys)[1], self.hidden_dim))
        caches = []
        for i, layer in enumerate(self.decoder_layers):
            x, layer_cache, _ = layer(x, stand_in, encoder_padding_mask=source_padding_mask,
                                      self_attention_cache=cache[:, i], self_attention_cache_update_index=start,
                                      cross_attention_cache=cross_cache[:, i], cross_attention_cache_update_index=None)
            caches.append(layer_cache)
        return self._logits(x), ops.stack(caches, axis=1)

    def get_config(self):
        return {**super().get_config(), "source_vocabulary_size": self.source_vocabulary_size,
                "target_vocabulary_size": self.target_vocabulary_size,
                "num_encoder_layers": self.num_encoder_layers, "num_decoder_layers": self.num_decoder_layers,
                "num_heads": self.num_heads, "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
                "max_source_length": self.max_source_length, "max_target_length": self.max_target_length,
                "dropout": self.dropout, "shared_embeddings": self.shared_embeddings,
                "layer_norm_epsilon": self.layer_norm_epsilon}


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
