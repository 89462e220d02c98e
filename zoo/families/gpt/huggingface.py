"""Hugging Face GPT-2 checkpoints (`GPT2LMHeadModel`, `GPT2Model`; any size, distilgpt2 included)
as this family's GPT.

GPT-2 is the architecture model.py already is (pre-LayerNorm blocks, learned positions, tanh
GELU, one fused QKV projection, the output tied to the token embedding), so a checkpoint maps
onto it weight for weight: GPT-2's `Conv1D` stores its kernel (inputs, outputs), as a Keras
`Dense` does, and its `c_attn` output is laid out (q | k | v), each (heads, head_dim), as our
`qkv` is. Settings that would change the math (another activation, unscaled or layer-scaled
attention, an untied head) are refused by name rather than imported into something else.
"""

from zoo.errors import ZooError

# transformers' names for the tanh approximation of GELU, which model.py computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


def model_config(config, source):
    """GPT's constructor arguments for a transformers GPT2Config (as a dict)."""
    activation = config.get("activation_function", "gelu_new")
    refusals = [
        (activation not in TANH_GELU, f"activation_function {activation!r} (zoo's GPT computes {TANH_GELU[0]})"),
        (not config.get("scale_attn_weights", True), "scale_attn_weights false"),
        (config.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx true"),
        (not config.get("tie_word_embeddings", True), "tie_word_embeddings false"),
    ]
    for refused, what in refusals:
        if refused:
            raise ZooError(f"{source}: a GPT-2 with {what} is not supported")
    hidden = int(config["n_embd"])
    return dict(vocabulary_size=int(config["vocab_size"]), num_layers=int(config["n_layer"]),
                num_heads=int(config["n_head"]), hidden_dim=hidden,
                intermediate_dim=int(config.get("n_inner") or 4 * hidden), max_length=int(config["n_positions"]),
                dropout=0.0, position_embedding="learned",
                layer_norm_epsilon=float(config.get("layer_norm_epsilon", 1e-5)))


def weight_pairs(model):
    """(GPT-2 tensor name, the GPT's Keras variable) for every weight, in the model's order."""
    def norm(prefix, layer):
        return [(prefix + ".weight", layer.gamma), (prefix + ".bias", layer.beta)]

    def dense(prefix, layer):
        return [(prefix + ".weight", layer.kernel), (prefix + ".bias", layer.bias)]

    pairs = [("wte.weight", model.token_embedding.embeddings),
             ("wpe.weight", model.learned_positions.position_embeddings)]
    for i, block in enumerate(model.blocks):
        pairs += norm(f"h.{i}.ln_1", block.attn_norm) + dense(f"h.{i}.attn.c_attn", block.attn.qkv)
        pairs += dense(f"h.{i}.attn.c_proj", block.attn.out) + norm(f"h.{i}.ln_2", block.mlp_norm)
        pairs += dense(f"h.{i}.mlp.c_fc", block.mlp_in) + dense(f"h.{i}.mlp.c_proj", block.mlp_out)
    return pairs + norm("ln_f", model.final_norm)


def tokenizer(checkpoint, end_token_id):
    """GPT-2's byte-level BPE, exactly: its tokenizer.json as it is, else built from vocab.json
    and merges.txt the way transformers' GPT2TokenizerFast converts them."""
    from tokenizers import Tokenizer

    from zoo.tokenizers import TextTokenizer, byte_level_bpe

    if checkpoint.file("tokenizer.json").is_file():
        hf_tokenizer = Tokenizer.from_file(str(checkpoint.file("tokenizer.json")))
    else:
        needs = "GPT-2's byte-level BPE, when there is no tokenizer.json"
        hf_tokenizer = byte_level_bpe(checkpoint.file("vocab.json", needs), checkpoint.file("merges.txt", needs))
    end_token = hf_tokenizer.id_to_token(end_token_id)
    if end_token is None:
        raise ZooError(f"{checkpoint.source}: the tokenizer has no token {end_token_id} (the config's eos_token_id)")
    return TextTokenizer(hf_tokenizer, "bpe", end_token)


def import_checkpoint(checkpoint, progress):
    """(GPT, TextTokenizer) of a Hugging Face GPT-2 checkpoint (an HFCheckpoint)."""
    from zoo.families.gpt.model import GPT

    config = checkpoint.config
    model = GPT(**model_config(config, checkpoint.source), dtype="float32")
    text_tokenizer = tokenizer(checkpoint, int(config.get("eos_token_id", 50256)))  # a missing file fails fast
    model.build()
    prefix = "transformer." if checkpoint.has("transformer.wte.weight") else ""
    checkpoint.assign(model, [(prefix + name, variable) for name, variable in weight_pairs(model)], progress)
    return model, text_tokenizer


def export_checkpoint(model, tokenizer, directory):
    """Writes `model` (a GPT with learned positions) and `tokenizer` into `directory` as a Hugging
    Face GPT2LMHeadModel: config.json, model.safetensors, tokenizer.json, tokenizer_config.json.
    transformers loads it with `AutoModelForCausalLM.from_pretrained`; the head stays tied to the
    token embedding, so no lm_head.weight is written (GPT-2's own checkpoints have none either)."""
    import json

    import keras
    import numpy as np
    from safetensors.numpy import save_file

    if model.position_embedding != "learned":
        raise ZooError("a GPT with rotary positions has no GPT-2 equivalent (GPT-2 learns its positions); "
                       "only GPTs trained with --position-embedding learned export as GPT-2")
    tensors = {"transformer." + name: np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value), "float32")
               for name, variable in weight_pairs(model)}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    end = tokenizer.end_token_id
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": model.vocabulary_size,
              "n_positions": model.max_length, "n_embd": model.hidden_dim, "n_layer": model.num_layers,
              "n_head": model.num_heads, "n_inner": model.intermediate_dim, "activation_function": TANH_GELU[0],
              "layer_norm_epsilon": model.layer_norm_epsilon, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0, "scale_attn_weights": True, "tie_word_embeddings": True,
              "bos_token_id": end, "eos_token_id": end, "torch_dtype": "float32"}
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer.json").write_text(tokenizer.tokenizer.to_str(), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.max_length,
        "bos_token": tokenizer.end_token, "eos_token": tokenizer.end_token, "unk_token": tokenizer.end_token}, indent=2))
