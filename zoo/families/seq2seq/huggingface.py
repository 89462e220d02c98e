"""Hugging Face encoder-decoder checkpoints (`BartForConditionalGeneration`, `MarianMTModel`, and
`BlenderbotForConditionalGeneration`, the layout of zoo's own seq2seq) as this family's Seq2Seq,
and back.

The three are one transformer with different switches (model.py's): BART is post-LayerNorm with
a LayerNorm after the embeddings and learned positions offset by 2; Marian is post-LayerNorm with
sinusoidal positions and scaled embeddings; Blenderbot is pre-LayerNorm with a final LayerNorm on
each side and learned positions, which is zoo's from-scratch seq2seq exactly. All three tie the
output to the decoder's embedding and add a fixed `final_logits_bias`. Their weights carry the
same names, so one map serves them: torch `Linear` weights (outputs, inputs) become Keras kernels,
attention projections reshaped to keras `MultiHeadAttention`'s (hidden, heads, head_dim) and
(heads, head_dim, hidden), as the BERT converter does.

Tokenizers: BART's byte-level BPE (its tokenizer.json, else vocab.json + merges.txt) with <s> to
begin every text; Marian's SentencePiece source and target models with its vocab.json.
"""

import json

from zoo.errors import ZooError
from zoo.pretrained.huggingface import mapped_items, mapped_tensors

# Architecture -> the model.py switches that make Seq2Seq that architecture.
LAYOUTS = {
    "BartForConditionalGeneration": dict(normalize_first=False, position_embedding="learned", position_offset=2,
                                         embedding_norm=True),
    "MarianMTModel": dict(normalize_first=False, position_embedding="sinusoidal", position_offset=0,
                          embedding_norm=False),
    "BlenderbotForConditionalGeneration": dict(normalize_first=True, position_embedding="learned", position_offset=0,
                                               embedding_norm=False),
}
MODEL_TYPES = {"BartForConditionalGeneration": "bart", "MarianMTModel": "marian",
               "BlenderbotForConditionalGeneration": "blenderbot"}
# transformers' activation names -> model.py's.
ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "swish": "silu", "silu": "silu"}


def model_config(config, architecture, source):
    """Seq2Seq's constructor arguments for a transformers BART/Marian/Blenderbot config (a dict)."""
    activation = config.get("activation_function", "gelu")
    refusals = [
        (activation not in ACTIVATIONS, f"activation_function {activation!r} (supported: {', '.join(ACTIVATIONS)})"),
        (config.get("encoder_attention_heads") != config.get("decoder_attention_heads"),
         "different encoder and decoder attention heads"),
        (config.get("encoder_ffn_dim") != config.get("decoder_ffn_dim"), "different encoder and decoder ffn_dim"),
        (not config.get("tie_word_embeddings", True), "tie_word_embeddings false (an untied output layer)"),
        (config.get("add_final_layer_norm") or config.get("normalize_before"), "add_final_layer_norm (mBART's)"),
    ]
    for refused, what in refusals:
        if refused:
            raise ZooError(f"{source}: a {architecture} with {what} is not supported")
    vocabulary = int(config["vocab_size"])
    shared = config.get("share_encoder_decoder_embeddings", True)
    length = int(config["max_position_embeddings"])
    return dict(source_vocabulary_size=vocabulary,
                target_vocabulary_size=int(config.get("decoder_vocab_size") or vocabulary) if not shared else vocabulary,
                num_encoder_layers=int(config["encoder_layers"]), num_decoder_layers=int(config["decoder_layers"]),
                num_heads=int(config["encoder_attention_heads"]), hidden_dim=int(config["d_model"]),
                intermediate_dim=int(config["encoder_ffn_dim"]), max_source_length=length, max_target_length=length,
                dropout=0.0, shared_embeddings=bool(shared), layer_norm_epsilon=1e-5,
                activation=ACTIVATIONS[activation], scale_embedding=bool(config.get("scale_embedding", False)),
                final_logits_bias=True, decoder_start_token_id=config.get("decoder_start_token_id"),
                forced_bos_token_id=config.get("forced_bos_token_id"), **LAYOUTS[architecture])


def weight_map(model, architecture):
    """(tensor name, our variable, input axes) for every weight of `model` in a transformers
    checkpoint of `architecture` (see zoo.pretrained.huggingface.mapped_items)."""
    def linear(name, layer, input_axes=1):
        return [(name + ".weight", layer.kernel, input_axes), (name + ".bias", layer.bias, None)]

    def norm(name, layer):
        return [(name + ".weight", layer.gamma, None), (name + ".bias", layer.beta, None)]

    def attention(name, layer):
        return (linear(name + ".q_proj", layer._query_dense) + linear(name + ".k_proj", layer._key_dense)
                + linear(name + ".v_proj", layer._value_dense) + linear(name + ".out_proj", layer._output_dense, 2))

    def side(name, embedding, positions, embedding_norm, layers, final_norm):
        items = [] if embedding is None else [(f"model.{name}.embed_tokens.weight", embedding.embeddings, None)]
        if model.position_embedding == "learned":  # a sinusoidal table is not in the checkpoint
            items.append((f"model.{name}.embed_positions.weight", positions.position_embeddings, None))
        if embedding_norm is not None:
            items += norm(f"model.{name}.layernorm_embedding", embedding_norm)
        for i, layer in enumerate(layers):
            prefix = f"model.{name}.layers.{i}."
            items += attention(prefix + "self_attn", layer._self_attention_layer)
            items += norm(prefix + "self_attn_layer_norm", layer._self_attention_layer_norm)
            if name == "decoder":
                items += attention(prefix + "encoder_attn", layer._cross_attention_layer)
                items += norm(prefix + "encoder_attn_layer_norm", layer._cross_attention_layer_norm)
            items += linear(prefix + "fc1", layer._feedforward_intermediate_dense)
            items += linear(prefix + "fc2", layer._feedforward_output_dense)
            items += norm(prefix + "final_layer_norm", layer._feedforward_layer_norm)
        if final_norm is not None:
            items += norm(f"model.{name}.layer_norm", final_norm)
        return items

    shared = model.shared_embeddings
    items = [("model.shared.weight", model.target_embedding.embeddings, None)] if shared else []
    items += side("encoder", None if shared else model.source_embedding, model.source_positions,
                  model.source_embedding_norm, model.encoder_layers, model.encoder_norm)
    items += side("decoder", None if shared else model.target_embedding, model.target_positions,
                  model.target_embedding_norm, model.decoder_layers, model.decoder_norm)
    if model.logits_bias is not None:
        items.append(("final_logits_bias", model.logits_bias, None))
    return items


# --- tokenizers ------------------------------------------------------------------------------------


def _tokenizer_settings(checkpoint):
    path = checkpoint.file("tokenizer_config.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token(config, id_key, settings, name, default, hf_tokenizer):
    """A special token by name: the tokenizer config's, else the model config's id's, else `default`."""
    token = settings.get(name)
    if isinstance(token, dict):  # an AddedToken, as transformers saves it
        token = token.get("content")
    if token is None and config.get(id_key) is not None and hf_tokenizer is not None:
        token = hf_tokenizer.id_to_token(int(config[id_key]))
    return token or default


def bart_tokenizer(checkpoint):
    """BART's byte-level BPE: every text begins with <s> and the source ends with </s>."""
    from tokenizers import Tokenizer

    from zoo.tokenizers import TextTokenizer, byte_level_bpe

    if checkpoint.file("tokenizer.json").is_file():
        hf_tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
    else:
        needs = "BART's byte-level BPE, when there is no tokenizer.json"
        hf_tokenizer = byte_level_bpe(checkpoint.file("vocab.json", needs), checkpoint.file("merges.txt", needs))
    settings, config = _tokenizer_settings(checkpoint), checkpoint.config
    end = _token(config, "eos_token_id", settings, "eos_token", "</s>", hf_tokenizer)
    begin = _token(config, "bos_token_id", settings, "bos_token", "<s>", hf_tokenizer)
    for token in (end, begin):
        if hf_tokenizer.token_to_id(token) is None:
            raise ZooError(f"{checkpoint.source}: the tokenizer has no {token!r} token")
    tokenizer = TextTokenizer(hf_tokenizer, "bpe", end, begin)
    return tokenizer, tokenizer


def marian_tokenizers(checkpoint):
    """(source, target) SentencePiece tokenizers of a Marian checkpoint: source.spm and
    target.spm with vocab.json (the target's own target_vocab.json when the vocabularies are
    separate), as transformers' MarianTokenizer reads them."""
    from zoo.tokenizers import SentencePieceTokenizer

    settings = _tokenizer_settings(checkpoint)
    needs = "Marian's tokenizer"
    vocab_file = checkpoint.file("vocab.json", needs)
    target_vocab_file = (checkpoint.file(settings.get("target_vocab_file") or "target_vocab.json", needs)
                         if settings.get("separate_vocabs") else vocab_file)
    special = {name: _token({}, None, settings, f"{name}_token", default, None)
               for name, default in (("eos", "</s>"), ("unk", "<unk>"), ("pad", "<pad>"))}

    def tokenizer(spm, vocab):
        try:
            vocab = json.loads(vocab.read_text(encoding="utf-8"))
            return SentencePieceTokenizer(checkpoint.file(spm, needs).read_bytes(), vocab, special["eos"],
                                          special["unk"], special["pad"])
        except ZooError as e:
            raise ZooError(f"{checkpoint.source}: {e}") from None

    return tokenizer("source.spm", vocab_file), tokenizer("target.spm", target_vocab_file)


# --- in and out ------------------------------------------------------------------------------------


def import_checkpoint(checkpoint, progress):
    """(Seq2Seq, source tokenizer, target tokenizer) of a Hugging Face checkpoint (an HFCheckpoint)."""
    from zoo.families.seq2seq.model import Seq2Seq

    architecture = checkpoint.architecture
    model = Seq2Seq(**model_config(checkpoint.config, architecture, checkpoint.source), dtype="float32")
    tokenizers = (marian_tokenizers if architecture == "MarianMTModel" else bart_tokenizer)(checkpoint)
    model.build()
    items = mapped_items(checkpoint, weight_map(model, architecture))
    if not checkpoint.has("final_logits_bias"):  # some checkpoints leave the (zero) buffer out
        items = [item for item in items if item[0] != "final_logits_bias"]
    checkpoint.assign_items(items, progress)
    return (model, *tokenizers)


def layout_of(model):
    """The transformers architecture whose switches `model` has; a ZooError naming the mismatch."""
    switches = {key: getattr(model, key) for key in LAYOUTS["MarianMTModel"]}
    for architecture, layout in LAYOUTS.items():
        if switches == layout:
            return architecture
    raise ZooError(f"this seq2seq model ({switches}) matches none of {', '.join(LAYOUTS)}")


def export_checkpoint(model, tokenizer, source_tokenizer, directory):
    """Writes `model` and its tokenizers into `directory` as the transformers architecture its
    layout is (`layout_of`): config.json, model.safetensors and the tokenizer files, which
    `AutoModelForSeq2SeqLM.from_pretrained` and `AutoTokenizer.from_pretrained` load."""
    from safetensors.numpy import save_file

    from zoo.tokenizers import SentencePieceTokenizer

    architecture = layout_of(model)
    marian = isinstance(tokenizer, SentencePieceTokenizer)
    if marian != (architecture == "MarianMTModel"):
        raise ZooError(f"a {architecture} layout with a {tokenizer.kind} tokenizer has no transformers equivalent")
    if not model.shared_embeddings and architecture != "MarianMTModel":
        raise ZooError(f"{architecture} has one vocabulary for both sides: a model trained with "
                       "--separate-vocabularies exports only as Marian")
    import numpy as np

    tensors = mapped_tensors(weight_map(model, architecture))
    # transformers always has the (1, vocabulary) buffer: zeros for a model without one are the same logits.
    bias = tensors.get("final_logits_bias", np.zeros(model.target_vocabulary_size, "float32"))
    tensors["final_logits_bias"] = bias.reshape(1, -1)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    end = tokenizer.end_token_id
    start = end if model.decoder_start_token_id is None else model.decoder_start_token_id
    pad = tokenizer.vocab[tokenizer.pad_token] if marian else end
    activation = {v: k for k, v in ACTIVATIONS.items()}[model.activation]
    config = {"architectures": [architecture], "model_type": MODEL_TYPES[architecture],
              "vocab_size": model.source_vocabulary_size, "d_model": model.hidden_dim,
              "encoder_layers": model.num_encoder_layers, "decoder_layers": model.num_decoder_layers,
              "encoder_attention_heads": model.num_heads, "decoder_attention_heads": model.num_heads,
              "encoder_ffn_dim": model.intermediate_dim, "decoder_ffn_dim": model.intermediate_dim,
              "max_position_embeddings": max(model.max_source_length, model.max_target_length),
              "activation_function": activation, "scale_embedding": model.scale_embedding,
              "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "tie_word_embeddings": True,
              "eos_token_id": end, "pad_token_id": pad, "decoder_start_token_id": start,
              "bos_token_id": end if getattr(tokenizer, "begin_token_id", None) is None else tokenizer.begin_token_id,
              "forced_bos_token_id": model.forced_bos_token_id, "forced_eos_token_id": None,
              "encoder_no_repeat_ngram_size": 0, "is_encoder_decoder": True, "torch_dtype": "float32"}
    if architecture == "MarianMTModel":
        config.update(decoder_vocab_size=model.target_vocabulary_size,
                      share_encoder_decoder_embeddings=model.shared_embeddings)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if marian:
        _write_marian_tokenizer(source_tokenizer, tokenizer, directory)
    else:
        _write_bpe_tokenizer(tokenizer, directory, max(model.max_source_length, model.max_target_length))


def _write_bpe_tokenizer(tokenizer, directory, max_length):
    """tokenizer.json with a post-processor that adds what zoo adds to a source (the end token; <s>
    before it when the tokenizer has one), so that transformers' tokenizer gives zoo's ids."""
    from tokenizers import Tokenizer, processors

    exported = Tokenizer.from_str(tokenizer.tokenizer.to_str())
    ends = [(tokenizer.end_token, tokenizer.end_token_id)]
    begins = [] if tokenizer.begin_token is None else [(tokenizer.begin_token, tokenizer.begin_token_id)]
    template = " ".join([token for token, _ in begins] + ["$A", tokenizer.end_token])
    exported.post_processor = processors.TemplateProcessing(single=template, special_tokens=begins + ends)
    (directory / "tokenizer.json").write_text(exported.to_str(), encoding="utf-8")
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                "eos_token": tokenizer.end_token, "pad_token": tokenizer.end_token, "unk_token": tokenizer.end_token,
                "bos_token": tokenizer.begin_token or tokenizer.end_token}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))


def _write_marian_tokenizer(source, target, directory):
    (directory / "source.spm").write_bytes(source.model_proto)
    (directory / "target.spm").write_bytes(target.model_proto)
    (directory / "vocab.json").write_text(json.dumps(source.vocab, ensure_ascii=False), encoding="utf-8")
    settings = {"tokenizer_class": "MarianTokenizer", "eos_token": target.end_token, "unk_token": target.unk_token,
                "pad_token": target.pad_token, "model_max_length": 512}
    if target.vocab != source.vocab:
        (directory / "target_vocab.json").write_text(json.dumps(target.vocab, ensure_ascii=False), encoding="utf-8")
        settings.update(separate_vocabs=True, target_vocab_file="target_vocab.json")
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
