"""KerasHub GPT-2 presets (`GPT2Backbone`, saved by `save_to_preset` or fetched by handle) as this
family's GPT. keras-hub's GPT2Backbone is GPT-2 in Keras (pre-LayerNorm `TransformerDecoder`s,
tanh GELU, learned positions, a tied `ReversibleEmbedding`); its attention keeps separate query,
key and value projections of shape (hidden, heads, head_dim), which are laid side by side into
our fused (hidden, 3 * hidden) `qkv` in that order, as GPT-2's c_attn is.
"""

from zoo.errors import ZooError
from zoo.tokenizers import byte_level_bpe

END_TOKEN = "<|endoftext|>"  # keras-hub's GPT2Tokenizer requires it in the vocabulary


def _weights(backbone, model):
    """(name, our variable, read) for every weight: read() gives the KerasHub value in our layout."""
    import keras
    import numpy as np

    def value(variable, shape=None):
        array = keras.ops.convert_to_numpy(variable.value)
        return array if shape is None else array.reshape(shape)

    hidden = model.hidden_dim
    items = [("token_embedding", model.token_embedding.embeddings,
              lambda: value(backbone.get_layer("token_embedding").embeddings)),
             ("position_embedding", model.learned_positions.position_embeddings,
              lambda: value(backbone.get_layer("position_embedding").position_embeddings))]

    def norm(name, ours, theirs):
        return [(name + ".gamma", ours.gamma, lambda: value(theirs.gamma)),
                (name + ".beta", ours.beta, lambda: value(theirs.beta))]

    def dense(name, ours, theirs, kernel_shape=None, bias_shape=None):
        return [(name + ".kernel", ours.kernel, lambda: value(theirs.kernel, kernel_shape)),
                (name + ".bias", ours.bias, lambda: value(theirs.bias, bias_shape))]

    for i, block in enumerate(model.blocks):
        decoder = backbone.get_layer(f"transformer_layer_{i}")
        attention = decoder._self_attention_layer  # keras.layers.MultiHeadAttention's own attributes
        projections = (attention._query_dense, attention._key_dense, attention._value_dense)
        prefix = f"transformer_layer_{i}"
        items += norm(prefix + ".self_attention_layer_norm", block.attn_norm, decoder._self_attention_layer_norm)
        items += [(prefix + ".self_attention.qkv.kernel", block.attn.qkv.kernel,
                   lambda p=projections: np.concatenate([value(d.kernel, (hidden, hidden)) for d in p], axis=1)),
                  (prefix + ".self_attention.qkv.bias", block.attn.qkv.bias,
                   lambda p=projections: np.concatenate([value(d.bias, (hidden,)) for d in p]))]
        items += dense(prefix + ".self_attention.output", block.attn.out, attention._output_dense, (hidden, hidden))
        items += norm(prefix + ".feedforward_layer_norm", block.mlp_norm, decoder._feedforward_layer_norm)
        items += dense(prefix + ".feedforward_intermediate_dense", block.mlp_in, decoder._feedforward_intermediate_dense)
        items += dense(prefix + ".feedforward_output_dense", block.mlp_out, decoder._feedforward_output_dense)
    return items + norm("layer_norm", model.final_norm, backbone.get_layer("layer_norm"))


def import_preset(preset, progress):
    """(GPT, TextTokenizer) of a KerasHub GPT2Backbone preset (a zoo.pretrained.KerasHubPreset)."""
    from zoo.families.gpt.model import GPT
    from zoo.pretrained.huggingface import assign_arrays
    from zoo.tokenizers import TextTokenizer

    needs = "the GPT-2 tokenizer"
    hf_tokenizer = byte_level_bpe(preset.asset("vocabulary.json", needs), preset.asset("merges.txt", needs))
    if hf_tokenizer.token_to_id(END_TOKEN) is None:
        raise ZooError(f"{preset.source}: the tokenizer's vocabulary has no {END_TOKEN}")
    config = preset.config["config"]
    model = GPT(vocabulary_size=int(config["vocabulary_size"]), num_layers=int(config["num_layers"]),
                num_heads=int(config["num_heads"]), hidden_dim=int(config["hidden_dim"]),
                intermediate_dim=int(config["intermediate_dim"]), max_length=int(config["max_sequence_length"]),
                dropout=0.0, layer_norm_epsilon=1e-5, dtype="float32")
    model.build()
    assign_arrays(preset.source, _weights(preset.backbone(), model), progress)
    return model, TextTokenizer(hf_tokenizer, "bpe", END_TOKEN)
