"""KerasHub BERT presets (`BertBackbone`, saved by `save_to_preset` or fetched by handle) as this
family's models. keras-hub's BertBackbone is model.py's encoder built from the same keras-hub
layers (embeddings, LayerNorm, `TransformerEncoder`s, tanh pooler), so every tensor is copied as
it is, in the same layout. A preset whose task is a `BertTextClassifier` (logits or softmax)
becomes a classify bundle with its head (labels LABEL_0...: KerasHub keeps no names); any other
becomes an mlm bundle of its encoder, whose MLM head starts new, as for a transformers BertModel.

The tokenizer is the one the Hugging Face import builds, from the preset's vocabulary.txt and the
lower-casing and accent stripping its tokenizer.json sets. KerasHub's BertBackbone computes GELU
with the tanh approximation: the model is built with activation="gelu_approximate".
"""

import json

from zoo.errors import ZooError

CLASSIFIER = "BertTextClassifier"
CLASSIFIER_ACTIVATIONS = (None, "linear", "softmax")  # logits, or their softmax: zoo's classifier as it is


def _task_config(preset):
    """The preset's task.json (what `save_to_preset` of a task writes), or None for a backbone alone."""
    if not preset.has("task.json"):
        return None
    return json.loads(preset.file("task.json").read_text(encoding="utf-8"))


def _model_settings(config, source):
    """The BERT task model's constructor arguments for a BertBackbone's config."""
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and dtype.get("class_name") != "DTypePolicy":
        raise ZooError(f"{source}: a BertBackbone with a {dtype.get('class_name')} dtype (quantized) is not supported")
    return dict(vocabulary_size=int(config["vocabulary_size"]), num_layers=int(config["num_layers"]),
                num_heads=int(config["num_heads"]), hidden_dim=int(config["hidden_dim"]),
                intermediate_dim=int(config["intermediate_dim"]), max_length=int(config["max_sequence_length"]),
                num_segments=int(config.get("num_segments", 2)), dropout=float(config.get("dropout", 0.1)),
                layer_norm_epsilon=1e-12, activation="gelu_approximate")  # keras-hub's BertBackbone fixes both


def _classifier_head(task_config, source):
    """The number of classes of a BertTextClassifier task, or None for any other task."""
    if task_config is None or task_config.get("class_name") != CLASSIFIER:
        return None
    settings = task_config["config"]
    if settings.get("activation") not in CLASSIFIER_ACTIVATIONS or int(settings["num_classes"]) < 2:
        raise ZooError(f"{source}: a BertTextClassifier with activation {settings.get('activation')!r} and "
                       f"{settings['num_classes']} classes is not supported (zoo classifies into one of two or more "
                       "labels); save its backbone alone to import the encoder")
    return int(settings["num_classes"])


def tokenizer(preset, vocabulary_size):
    """The preset's BertTokenizer as zoo's WordPieceTokenizer, built as the Hugging Face import builds
    BERT's from vocab.txt; a ZooError naming the settings it cannot represent."""
    from zoo.tokenizers.wordpiece import UNK, wordpiece_from_vocabulary

    settings = json.loads(preset.file("tokenizer.json", "the BERT tokenizer").read_text(encoding="utf-8"))["config"]
    refused = [f"{name} {settings.get(name)!r}" for name, wanted in (("split", True), ("oov_token", UNK))
               if settings.get(name, wanted) != wanted]
    if refused:
        raise ZooError(f"{preset.source}: a BertTokenizer with {', '.join(refused)} is not supported")
    with open(preset.asset("vocabulary.txt", "the BERT tokenizer"), encoding="utf-8") as file:
        vocabulary = {token: i for i, token in enumerate(line.rstrip() for line in file)}  # as keras-hub reads it
    if len(vocabulary) > vocabulary_size:
        raise ZooError(f"{preset.source}: the tokenizer has {len(vocabulary)} tokens, the backbone embeds "
                       f"{vocabulary_size}")
    try:
        return wordpiece_from_vocabulary(vocabulary, bool(settings.get("lowercase", False)),
                                         bool(settings.get("strip_accents", False)),
                                         bool(settings.get("split_on_cjk", True)), settings.get("suffix_indicator", "##"))
    except ZooError as e:
        raise ZooError(f"{preset.source}: {e}") from None


def _weights(source, backbone, model, head=None):
    """(name, our variable, read) for every weight of the backbone (and the classifier's `head`):
    read() gives the KerasHub tensor, already in our layout. A weight of theirs left unmapped (a
    keras-hub whose BertBackbone grew one) is a ZooError, not a silently new weight."""
    import keras

    encoder = model.encoder
    layers = [(encoder.token_embedding, backbone.token_embedding, ("embeddings",)),
              (encoder.position_embedding, backbone.position_embedding, ("position_embeddings",)),
              (encoder.segment_embedding, backbone.segment_embedding, ("embeddings",)),
              (encoder.embeddings_norm, backbone.embeddings_layer_norm, ("gamma", "beta"))]
    for ours, theirs in zip(encoder.blocks, backbone.transformer_layers, strict=True):
        # keras-hub's TransformerEncoder and keras' MultiHeadAttention's own attributes, in both models
        for part in ("_self_attention_layer_norm", "_feedforward_layer_norm"):
            layers.append((getattr(ours, part), getattr(theirs, part), ("gamma", "beta")))
        for part in ("_feedforward_intermediate_dense", "_feedforward_output_dense"):
            layers.append((getattr(ours, part), getattr(theirs, part), ("kernel", "bias")))
        for part in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
            layers.append((getattr(ours._self_attention_layer, part), getattr(theirs._self_attention_layer, part),
                           ("kernel", "bias")))
    layers.append((encoder.pooler, backbone.pooled_dense, ("kernel", "bias")))
    if head is not None:
        layers.append((model.classifier, head, ("kernel", "bias")))
    items = [(getattr(theirs, name).path, getattr(ours, name), getattr(theirs, name))
             for ours, theirs, names in layers for name in names]
    unmapped = {w.path for w in backbone.weights + (head.weights if head else [])} - {name for name, _, _ in items}
    if unmapped:
        raise ZooError(f"{source}: weights this converter does not know: {', '.join(sorted(unmapped))}")
    return [(name, ours, lambda theirs=theirs: keras.ops.convert_to_numpy(theirs.value)) for name, ours, theirs in items]


def import_preset(preset, progress):
    """(model, WordPieceTokenizer, task, labels) of a KerasHub BertBackbone preset (a KerasHubPreset)."""
    from zoo.families.bert.model import BertClassifier, BertMaskedLM
    from zoo.pretrained.huggingface import assign_arrays

    settings = _model_settings(preset.config["config"], preset.source)
    num_classes = _classifier_head(_task_config(preset), preset.source)
    word_pieces = tokenizer(preset, settings["vocabulary_size"])  # a missing file fails before the weights load
    if num_classes is None:
        model, backbone, head = BertMaskedLM(**settings, dtype="float32"), preset.backbone(), None
    else:
        import keras_hub

        model = BertClassifier(num_classes=num_classes, **settings, dtype="float32")
        task = keras_hub.models.TextClassifier.from_preset(preset.preset, preprocessor=None)  # no tensorflow-text
        backbone, head = task.backbone, task.output_dense
    model.build()
    assign_arrays(preset.source, _weights(preset.source, backbone, model, head), progress)
    labels = None if num_classes is None else [f"LABEL_{i}" for i in range(num_classes)]
    return model, word_pieces, "mlm" if num_classes is None else "classify", labels
