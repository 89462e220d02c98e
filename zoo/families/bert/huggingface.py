"""Hugging Face BERT checkpoints (`BertModel`, `BertForMaskedLM`, `BertForSequenceClassification`;
cased and uncased; BERT-architecture encoders such as MiniLM and sentence-transformers' BERT
models) as this family's models.

model.py is BERT's architecture already (token + position + segment embeddings, LayerNorm,
post-LayerNorm blocks with exact GELU, a tanh pooler on [CLS]; keras-hub's `MaskedLMHead` is BERT's
transform + tied decoder + bias), so a checkpoint maps onto it weight for weight: torch `Linear`
weights (outputs, inputs) are transposed into Keras kernels (inputs, outputs), and the attention's
query/key/value/output kernels are reshaped into keras `MultiHeadAttention`'s (hidden, heads,
head_dim) and (heads, head_dim, hidden). A classifier's labels come from the config's id2label.
`BertModel` and `BertForMaskedLM` become masked-LM bundles (`--init` them to fine-tune a
classifier); a `BertModel` has no MLM head, so that head starts new.
"""

from zoo.errors import ZooError
from zoo.pretrained.huggingface import mapped_items, mapped_tensors

# transformers' hidden_act names -> model.py's activation.
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}
ARCHITECTURE_TASKS = {"BertModel": "mlm", "BertForMaskedLM": "mlm", "BertForSequenceClassification": "classify"}


def model_config(config, source):
    """The BERT task model's constructor arguments for a transformers BertConfig (a dict)."""
    refusals = [
        (config.get("hidden_act", "gelu") not in ACTIVATIONS,
         f"hidden_act {config.get('hidden_act')!r} (supported: {', '.join(ACTIVATIONS)})"),
        (config.get("position_embedding_type", "absolute") != "absolute",
         f"position_embedding_type {config.get('position_embedding_type')!r}"),
        (config.get("is_decoder", False), "is_decoder true"),
    ]
    for refused, what in refusals:
        if refused:
            raise ZooError(f"{source}: a BERT with {what} is not supported")
    return dict(vocabulary_size=int(config["vocab_size"]), num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]), hidden_dim=int(config["hidden_size"]),
                intermediate_dim=int(config["intermediate_size"]), max_length=int(config["max_position_embeddings"]),
                num_segments=int(config.get("type_vocab_size", 2)),
                dropout=float(config.get("hidden_dropout_prob", 0.1)),
                layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)),
                activation=ACTIVATIONS[config.get("hidden_act", "gelu")])


def labels(config, source):
    """A sequence classifier's class names in output order (id2label)."""
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels", len(id2label) or 2))
    if count < 2 or config.get("problem_type") in ("regression", "multi_label_classification"):
        raise ZooError(f"{source}: a {config.get('problem_type') or 'one-output'} BertForSequenceClassification is "
                       "not supported (zoo classifies into one of two or more labels)")
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def weight_map(model, prefix, pooler=True, mlm_head=True):
    """(tensor name, our variable, input axes) for every weight of `model` in a transformers BERT:
    a torch Linear weight (outputs, inputs) is our kernel with its `input axes` first, flattened
    and transposed; None for every other tensor (the same numbers, reshaped)."""
    encoder = model.encoder

    def linear(name, layer, input_axes=1):
        return [(name + ".weight", layer.kernel, input_axes), (name + ".bias", layer.bias, None)]

    def norm(name, layer):
        return [(name + ".weight", layer.gamma, None), (name + ".bias", layer.beta, None)]

    e = prefix + "embeddings."
    items = [(e + "word_embeddings.weight", encoder.token_embedding.embeddings, None),
             (e + "position_embeddings.weight", encoder.position_embedding.position_embeddings, None),
             (e + "token_type_embeddings.weight", encoder.segment_embedding.embeddings, None)]
    items += norm(e + "LayerNorm", encoder.embeddings_norm)
    for i, block in enumerate(encoder.blocks):
        layer, attention = f"{prefix}encoder.layer.{i}.", block._self_attention_layer  # keras-hub's/Keras's attributes
        for part, dense in (("query", attention._query_dense), ("key", attention._key_dense),
                            ("value", attention._value_dense)):
            items += linear(f"{layer}attention.self.{part}", dense)
        items += linear(layer + "attention.output.dense", attention._output_dense, input_axes=2)
        items += norm(layer + "attention.output.LayerNorm", block._self_attention_layer_norm)
        items += linear(layer + "intermediate.dense", block._feedforward_intermediate_dense)
        items += linear(layer + "output.dense", block._feedforward_output_dense)
        items += norm(layer + "output.LayerNorm", block._feedforward_layer_norm)
    if pooler:
        items += linear(prefix + "pooler.dense", encoder.pooler)
    if hasattr(model, "classifier"):
        items += linear("classifier", model.classifier)
    if hasattr(model, "mlm_head") and mlm_head:
        head = model.mlm_head
        items += linear("cls.predictions.transform.dense", head._intermediate_dense)
        items += norm("cls.predictions.transform.LayerNorm", head._intermediate_layer_norm)
        items.append(("cls.predictions.bias", head._bias, None))
    return items


def weight_items(checkpoint, model, prefix):
    """(tensor name, our variable, read) for every weight the checkpoint has for `model`: read()
    gives the tensor in our layout. A BertForMaskedLM has no pooler, a BertModel no MLM head:
    those of ours stay new."""
    mapped = weight_map(model, prefix, pooler=checkpoint.has(prefix + "pooler.dense.weight"),
                        mlm_head=checkpoint.has("cls.predictions.bias"))
    return mapped_items(checkpoint, mapped)


def export_checkpoint(model, tokenizer, labels, directory):
    """Writes `model` (a BERT classifier or masked LM) and its WordPiece into `directory` as a
    transformers BertForSequenceClassification or BertForMaskedLM (config.json, model.safetensors,
    tokenizer.json, tokenizer_config.json)."""
    import json

    from safetensors.numpy import save_file

    classify = hasattr(model, "classifier")
    tensors = mapped_tensors(weight_map(model, "bert.", pooler=classify))
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["BertForSequenceClassification" if classify else "BertForMaskedLM"],
              "model_type": "bert", "vocab_size": model.vocabulary_size, "hidden_size": model.hidden_dim,
              "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_heads,
              "intermediate_size": model.intermediate_dim, "max_position_embeddings": model.max_length,
              "type_vocab_size": model.num_segments, "layer_norm_eps": model.layer_norm_epsilon,
              "hidden_dropout_prob": model.dropout, "attention_probs_dropout_prob": model.dropout,
              "position_embedding_type": "absolute",
              "hidden_act": {"gelu": "gelu", "gelu_approximate": "gelu_new"}[model.activation],
              "pad_token_id": tokenizer.pad_token_id, "torch_dtype": "float32"}
    if classify:
        config.update(id2label={str(i): label for i, label in enumerate(labels)},
                      label2id={label: i for i, label in enumerate(labels)}, problem_type="single_label_classification")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer.json").write_text(tokenizer.tokenizer.to_str(), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": tokenizer.lowercase,
        "model_max_length": model.max_length, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]"}, indent=2))


def tokenizer(checkpoint):
    """The checkpoint's WordPiece, exactly: its tokenizer.json as it is, else built from vocab.txt
    with the lower-casing and accent stripping its tokenizer_config.json sets, as transformers'
    BertTokenizerFast converts them."""
    import json

    from tokenizers import Tokenizer

    from zoo.tokenizers.wordpiece import WordPieceTokenizer, wordpiece_from_vocabulary

    settings_file = checkpoint.file("tokenizer_config.json")
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    lowercase = bool(settings.get("do_lower_case", True))
    try:
        if checkpoint.file("tokenizer.json").is_file():
            return WordPieceTokenizer(Tokenizer.from_file(str(checkpoint.file("tokenizer.json"))), lowercase)
        vocab = checkpoint.file("vocab.txt", "BERT's WordPiece, when there is no tokenizer.json")
        return wordpiece_from_vocabulary(vocab, lowercase, settings.get("strip_accents"),
                                         settings.get("tokenize_chinese_chars", True))
    except ZooError as e:
        raise ZooError(f"{checkpoint.source}: {e}") from None


def import_checkpoint(checkpoint, progress):
    """(model, WordPieceTokenizer, task, labels) of a Hugging Face BERT checkpoint (an HFCheckpoint)."""
    from zoo.families.bert.model import BertClassifier, BertMaskedLM

    config, source = checkpoint.config, checkpoint.source
    task = ARCHITECTURE_TASKS[checkpoint.architecture]
    model_settings = model_config(config, source)
    word_pieces = tokenizer(checkpoint)  # a missing file fails before the weights are read
    names = labels(config, source) if task == "classify" else None
    if task == "classify":
        model = BertClassifier(num_classes=len(names), **model_settings, dtype="float32")
    else:
        model = BertMaskedLM(**model_settings, dtype="float32")
    model.build()
    prefix = "bert." if checkpoint.has("bert.embeddings.word_embeddings.weight") else ""
    checkpoint.assign_items(weight_items(checkpoint, model, prefix), progress)
    return model, word_pieces, task, names
