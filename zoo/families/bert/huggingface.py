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

ARCHITECTURE_TASKS = {"BertModel": "mlm", "BertForMaskedLM": "mlm", "BertForSequenceClassification": "classify"}


def model_config(config, source):
    """The BERT task model's constructor arguments for a transformers BertConfig (a dict)."""
    refusals = [
        (config.get("hidden_act", "gelu") != "gelu", f"hidden_act {config.get('hidden_act')!r} (zoo's BERT computes gelu)"),
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
                layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)))


def labels(config, source):
    """A sequence classifier's class names in output order (id2label)."""
    id2label = config.get("id2label") or {}
    count = int(config.get("num_labels", len(id2label) or 2))
    if count < 2 or config.get("problem_type") in ("regression", "multi_label_classification"):
        raise ZooError(f"{source}: a {config.get('problem_type') or 'one-output'} BertForSequenceClassification is "
                       "not supported (zoo classifies into one of two or more labels)")
    return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]


def weight_items(checkpoint, model, prefix):
    """(tensor name, our variable, read) for every weight the checkpoint has for `model`."""
    encoder, hidden = model.encoder, model.hidden_dim
    heads, head_dim = model.num_heads, model.hidden_dim // model.num_heads

    def read(name, transpose=False, shape=None):
        def value():
            array = checkpoint.tensor(name)
            array = array.T if transpose else array
            return array.reshape(shape) if shape is not None else array
        return value

    def linear(name, layer, kernel_shape=None, bias_shape=None):
        return [(name + ".weight", layer.kernel, read(name + ".weight", True, kernel_shape)),
                (name + ".bias", layer.bias, read(name + ".bias", shape=bias_shape))]

    def norm(name, layer):
        return [(name + ".weight", layer.gamma, read(name + ".weight")), (name + ".bias", layer.beta, read(name + ".bias"))]

    e = prefix + "embeddings."
    items = [(e + "word_embeddings.weight", encoder.token_embedding.embeddings, read(e + "word_embeddings.weight")),
             (e + "position_embeddings.weight", encoder.position_embedding.position_embeddings,
              read(e + "position_embeddings.weight")),
             (e + "token_type_embeddings.weight", encoder.segment_embedding.embeddings,
              read(e + "token_type_embeddings.weight"))]
    items += norm(e + "LayerNorm", encoder.embeddings_norm)
    for i, block in enumerate(encoder.blocks):
        layer, attention = f"{prefix}encoder.layer.{i}.", block._self_attention_layer  # keras-hub's/Keras's attributes
        for part, dense in (("query", attention._query_dense), ("key", attention._key_dense),
                            ("value", attention._value_dense)):
            items += linear(f"{layer}attention.self.{part}", dense, (hidden, heads, head_dim), (heads, head_dim))
        items += linear(layer + "attention.output.dense", attention._output_dense, (heads, head_dim, hidden))
        items += norm(layer + "attention.output.LayerNorm", block._self_attention_layer_norm)
        items += linear(layer + "intermediate.dense", block._feedforward_intermediate_dense)
        items += linear(layer + "output.dense", block._feedforward_output_dense)
        items += norm(layer + "output.LayerNorm", block._feedforward_layer_norm)
    if checkpoint.has(prefix + "pooler.dense.weight"):  # BertForMaskedLM has no pooler: ours stays new
        items += linear(prefix + "pooler.dense", encoder.pooler)
    if hasattr(model, "classifier"):
        items += linear("classifier", model.classifier)
    if hasattr(model, "mlm_head") and checkpoint.has("cls.predictions.bias"):
        head = model.mlm_head
        items += linear("cls.predictions.transform.dense", head._intermediate_dense)
        items += norm("cls.predictions.transform.LayerNorm", head._intermediate_layer_norm)
        items.append(("cls.predictions.bias", head._bias, read("cls.predictions.bias")))
    return items


def tokenizer(checkpoint):
    """The checkpoint's WordPiece, exactly: its tokenizer.json as it is, else built from vocab.txt
    with the lower-casing and accent stripping its tokenizer_config.json sets, as transformers'
    BertTokenizerFast converts them."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from zoo.tokenizers.wordpiece import CLS, SEP, SPECIAL_TOKENS, UNK, WordPieceTokenizer

    settings_file = checkpoint.file("tokenizer_config.json")
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
    lowercase = bool(settings.get("do_lower_case", True))
    if checkpoint.file("tokenizer.json").is_file():
        hf_tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
    else:
        vocab = checkpoint.file("vocab.txt", "BERT's WordPiece, when there is no tokenizer.json")
        hf_tokenizer = Tokenizer(models.WordPiece.from_file(str(vocab), unk_token=UNK))
        hf_tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
            strip_accents=settings.get("strip_accents"), lowercase=lowercase)
        hf_tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        hf_tokenizer.decoder = decoders.WordPiece()
        hf_tokenizer.add_special_tokens(SPECIAL_TOKENS)  # already in the vocabulary: marked special, as transformers does
        hf_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
            special_tokens=[(CLS, hf_tokenizer.token_to_id(CLS)), (SEP, hf_tokenizer.token_to_id(SEP))])
    try:
        return WordPieceTokenizer(hf_tokenizer, lowercase)
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
