"""BERT-style bidirectional encoder, in Keras 3 ops and keras-hub layers only.

Read top to bottom: presets, the encoder, the two task models, weight carry-over, the preset
helper. Like BERT (Devlin et al. 2019) and keras-hub's `BertBackbone`: token + position + segment
embeddings, LayerNorm, dropout, post-LayerNorm transformer blocks (keras-hub's
`TransformerEncoder`, attention masked by the padding mask), and a pooled output: a tanh Dense on
the [CLS] position. Heads:

- `BertMaskedLM`: keras-hub's `MaskedLMHead` at the masked positions, its output projection tied
  to the token embedding (no separate vocabulary matrix);
- `BertClassifier`: dropout and a Dense layer on the pooled output;
- `BertTagger`: dropout and a Dense layer on every position (named-entity recognition);
- `BertSpanQA`: a Dense layer of 2 on every position, the answer's start and end (extractive QA).

Both take the encoder's settings as plain constructor arguments (like keras-hub models) so their
config is a flat dict, and both return float32 logits whatever the compute precision.
"""

import keras
import keras_hub
from keras import ops

from zoo.errors import ZooError
from zoo.layers.seeding import normal as _normal
from zoo.layers.seeding import seed_dropout as _seed_dropout
from zoo.layers.seeding import seeded_dropout as _dropout
from zoo.families.bert.presets import PRESETS

TASKS = ("mlm", "classify")  # what bert_from_preset builds


def gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


# The feed-forward's activation: exact GELU (BERT's, transformers' "gelu"), or its tanh
# approximation (KerasHub's BertBackbone; transformers' "gelu_new").
ACTIVATIONS = {"gelu": "gelu", "gelu_approximate": gelu_tanh}


@keras.saving.register_keras_serializable(package="zoo")
class SeededTransformerEncoder(keras_hub.layers.TransformerEncoder):
    """keras-hub's TransformerEncoder whose dropouts are seeded (it builds them without a seed).

    The attribute names are keras-hub 0.32's; should they change, build fails loudly, and
    tests/test_bert.py's replay test catches a seed that no longer takes effect.
    """

    def build(self, inputs_shape):
        super().build(inputs_shape)
        for dropout in (self._self_attention_dropout, self._feedforward_dropout,
                        self._self_attention_layer._dropout_layer):
            _seed_dropout(dropout)


@keras.saving.register_keras_serializable(package="zoo")
class BertEncoder(keras.layers.Layer):
    """{"token_ids", "segment_ids", "padding_mask"} (batch, length) -> {"sequence_output", "pooled_output"}.

    `padding_mask` is true (or 1) for real tokens: attention never looks at padded positions, so
    what stands there does not change the other positions' outputs. `pooled_output` is
    tanh(Dense(sequence_output[:, 0])), the [CLS] position.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, max_length,
                 num_segments=2, dropout=0.1, layer_norm_epsilon=1e-12, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        self.vocabulary_size, self.num_layers, self.num_heads = vocabulary_size, num_layers, num_heads
        self.hidden_dim, self.intermediate_dim, self.max_length = hidden_dim, intermediate_dim, max_length
        self.num_segments, self.dropout, self.layer_norm_epsilon = num_segments, dropout, layer_norm_epsilon
        self.activation = activation
        policy = self.dtype_policy
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            vocabulary_size, hidden_dim, tie_weights=True, embeddings_initializer=_normal(0.02),
            dtype=policy, name="token_embedding")
        self.position_embedding = keras_hub.layers.PositionEmbedding(
            max_length, initializer=_normal(0.02), dtype=policy, name="position_embedding")
        self.segment_embedding = keras.layers.Embedding(
            num_segments, hidden_dim, embeddings_initializer=_normal(0.02), dtype=policy, name="segment_embedding")
        self.embeddings_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy,
                                                               name="embeddings_norm")
        self.embeddings_dropout = _dropout(dropout, policy)
        self.blocks = [
            SeededTransformerEncoder(
                num_heads=num_heads, intermediate_dim=intermediate_dim, activation=ACTIVATIONS[activation],
                dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon, kernel_initializer=_normal(0.02), dtype=policy,
                name=f"block_{i}")
            for i in range(num_layers)
        ]
        self.pooler = keras.layers.Dense(hidden_dim, activation="tanh", kernel_initializer=_normal(0.02),
                                         dtype=policy, name="pooler")

    def build(self, input_shape=None):
        if self.built:
            return
        hidden_shape = (None, None, self.hidden_dim)
        self.token_embedding.build()
        self.position_embedding.build(hidden_shape)
        self.segment_embedding.build((None, None))
        self.embeddings_norm.build(hidden_shape)
        for block in self.blocks:
            block.build(hidden_shape)
        self.pooler.build((None, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=False):
        x = self.token_embedding(inputs["token_ids"])
        x = x + self.position_embedding(x) + self.segment_embedding(inputs["segment_ids"])
        x = self.embeddings_dropout(self.embeddings_norm(x), training=training)
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        for block in self.blocks:
            x = block(x, padding_mask=padding_mask, training=training)
        return {"sequence_output": x, "pooled_output": self.pooler(x[:, 0, :])}

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
                "max_length": self.max_length, "num_segments": self.num_segments, "dropout": self.dropout,
                "layer_norm_epsilon": self.layer_norm_epsilon, "activation": self.activation}


_ENCODER_ARGS = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "max_length",
                 "num_segments", "dropout", "layer_norm_epsilon", "activation")


@keras.saving.register_keras_serializable(package="zoo")
class BertTaskModel(keras.Model):
    """What the task models share: a `BertEncoder` built from the plain constructor arguments."""

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, max_length,
                 num_segments=2, dropout=0.1, layer_norm_epsilon=1e-12, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.encoder = BertEncoder(vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim, max_length,
                                   num_segments, dropout, layer_norm_epsilon, activation, dtype=self.dtype_policy,
                                   name="encoder")
        for name in _ENCODER_ARGS:
            setattr(self, name, getattr(self.encoder, name))

    def get_config(self):
        return {**super().get_config(), **{name: getattr(self, name) for name in _ENCODER_ARGS}}


@keras.saving.register_keras_serializable(package="zoo")
class BertMaskedLM(BertTaskModel):
    """The encoder and a masked-LM head: inputs as `BertEncoder`'s plus "mask_positions" (batch,
    max_predictions) -> float32 logits (batch, max_predictions, vocabulary_size) at those positions."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Tied: the head's output projection is the token embedding matrix, transposed. The head
        # runs in float32: keras-hub's adds its float32 output bias to logits in the head's compute
        # dtype, which TensorFlow refuses for bfloat16 (the logits matmul stays in the embedding's).
        self.mlm_head = keras_hub.layers.MaskedLMHead(
            token_embedding=self.encoder.token_embedding, intermediate_activation=ACTIVATIONS[self.activation],
            layer_norm_epsilon=self.layer_norm_epsilon, kernel_initializer=_normal(0.02),
            dtype="float32", name="mlm_head")
        # Nothing here trains the pooler (there is no next-sentence task); frozen, it is not handed
        # to the optimizer without a gradient. It is carried over to a classifier like the rest.
        self.encoder.pooler.trainable = False

    def build(self, input_shape=None):
        if self.built:
            return
        self.encoder.build()
        self.mlm_head.build((None, None, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=False):
        sequence = ops.cast(self.encoder(inputs, training=training)["sequence_output"], "float32")
        return self.mlm_head(sequence, mask_positions=inputs["mask_positions"])


@keras.saving.register_keras_serializable(package="zoo")
class BertClassifier(BertTaskModel):
    """The encoder, dropout and a Dense layer on the pooled output -> float32 logits (batch, num_classes)."""

    def __init__(self, vocabulary_size, num_classes, *args, **kwargs):
        super().__init__(vocabulary_size, *args, **kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, not {num_classes}")
        self.num_classes = num_classes
        self.classifier_dropout = _dropout(self.dropout, self.dtype_policy)
        self.classifier = keras.layers.Dense(num_classes, kernel_initializer=_normal(0.02), dtype=self.dtype_policy,
                                             name="classifier")

    def build(self, input_shape=None):
        if self.built:
            return
        self.encoder.build()
        self.classifier.build((None, self.hidden_dim))
        self.built = True

    def embed(self, inputs):
        """The pooled [CLS] vector (batch, hidden_dim), float32: a sentence embedding."""
        return ops.cast(self.encoder(inputs)["pooled_output"], "float32")

    def call(self, inputs, training=False):
        pooled = self.encoder(inputs, training=training)["pooled_output"]
        return ops.cast(self.classifier(self.classifier_dropout(pooled, training=training)), "float32")

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package="zoo")
class BertTagger(BertTaskModel):
    """The encoder, dropout and a Dense layer on every position's output -> float32 logits
    (batch, length, num_tags): a tag per word piece (named-entity recognition). Training and
    decoding read the tag of a word's first piece only."""

    def __init__(self, vocabulary_size, num_tags, *args, **kwargs):
        super().__init__(vocabulary_size, *args, **kwargs)
        if num_tags < 2:
            raise ValueError(f"num_tags must be at least 2, not {num_tags}")
        self.num_tags = num_tags
        self.tagger_dropout = _dropout(self.dropout, self.dtype_policy)
        self.tagger = keras.layers.Dense(num_tags, kernel_initializer=_normal(0.02), dtype=self.dtype_policy,
                                         name="tagger")
        # Nothing here reads the pooled [CLS] vector: frozen, it is not handed to the optimizer
        # without a gradient (it is still carried over from, and to, the other task models).
        self.encoder.pooler.trainable = False

    def build(self, input_shape=None):
        if self.built:
            return
        self.encoder.build()
        self.tagger.build((None, None, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=False):
        sequence = self.encoder(inputs, training=training)["sequence_output"]  # (batch, length, hidden)
        return ops.cast(self.tagger(self.tagger_dropout(sequence, training=training)), "float32")

    def get_config(self):
        return {**super().get_config(), "num_tags": self.num_tags}


@keras.saving.register_keras_serializable(package="zoo")
class BertSpanQA(BertTaskModel):
    """The encoder and a Dense layer of 2 on every position -> float32 logits (batch, 2, length):
    each position's score as the answer's first (row 0) and last (row 1) word piece (extractive
    question answering). Padded positions score -1e9."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.span = keras.layers.Dense(2, kernel_initializer=_normal(0.02), dtype=self.dtype_policy, name="span")
        self.encoder.pooler.trainable = False  # unused here, as for the tagger

    def build(self, input_shape=None):
        if self.built:
            return
        self.encoder.build()
        self.span.build((None, None, self.hidden_dim))
        self.built = True

    def call(self, inputs, training=False):
        sequence = self.encoder(inputs, training=training)["sequence_output"]  # (batch, length, hidden)
        logits = ops.transpose(ops.cast(self.span(sequence), "float32"), (0, 2, 1))  # (batch, 2, length)
        padding = ops.expand_dims(ops.cast(inputs["padding_mask"], "bool"), 1)
        return ops.where(padding, logits, -1e9)


def _encoder_names(model):
    """The encoder's weights' paths inside it ("block_0/.../kernel"): the same in both task models."""
    prefix = model.encoder.path + "/"
    return [w.path[len(prefix):] if w.path.startswith(prefix) else w.path for w in model.encoder.weights]


def copy_encoder_weights(source_model, target_model):
    """Copies every encoder weight of `source_model` into `target_model` (heads are left alone).

    For fine-tuning from a pretrained masked-LM run: both are BERT task models (any mix). Checks
    every shape before assigning anything, and raises ZooError naming the first mismatch.
    """
    for model in (source_model, target_model):
        model.build()
    source, target = source_model.encoder.weights, target_model.encoder.weights
    if len(source) != len(target):
        raise ZooError(f"cannot carry the encoder over: the pretrained encoder has {len(source)} weights "
                       f"({source_model.num_layers} layers), the new one {len(target)} "
                       f"({target_model.num_layers} layers)")
    for s, t, s_name, t_name in zip(source, target, _encoder_names(source_model), _encoder_names(target_model)):
        if s_name != t_name or tuple(s.shape) != tuple(t.shape):
            raise ZooError(f"cannot carry the encoder over: the pretrained encoder's {s_name} has shape "
                           f"{tuple(s.shape)}, the new encoder's {t_name} has shape {tuple(t.shape)}")
    for s, t in zip(source, target):
        t.assign(s.value)


def bert_from_preset(preset, vocabulary_size, task="mlm", num_classes=None, **overrides):
    """A built BertMaskedLM (task "mlm") or BertClassifier (task "classify", with `num_classes`)
    from a named preset, any field overridden (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    config = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    if task == "mlm":
        model = BertMaskedLM(vocabulary_size=vocabulary_size, **config)
    else:
        if num_classes is None:
            raise ValueError("task 'classify' needs num_classes")
        model = BertClassifier(vocabulary_size=vocabulary_size, num_classes=num_classes, **config)
    model.build()
    return model
