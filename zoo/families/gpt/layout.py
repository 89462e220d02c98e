"""How --model-parallel shards the GPT's weights (Megatron-style), for `zoo.training.distribution`."""


def gpt_layout_map(device_mesh):
    """Shards the GPT (model.py) over the mesh's "model" axis; keys are regexes that
    must match a whole variable path such as `gpt/block_0/attn/qkv/kernel`. Unlisted variables
    (LayerNorms, the biases of row-parallel layers) are replicated."""
    import keras

    layout = keras.distribution.LayoutMap(device_mesh)
    # Column-parallel: each device computes a slice of the outputs (heads, MLP units).
    layout[r".*/attn/qkv/kernel"] = (None, "model")
    layout[r".*/attn/qkv/bias"] = ("model",)
    layout[r".*/mlp_in/kernel"] = (None, "model")
    layout[r".*/mlp_in/bias"] = ("model",)
    # Row-parallel: each device holds the rows for its slice; XLA sums the partial products.
    layout[r".*/attn/out/kernel"] = ("model", None)
    layout[r".*/mlp_out/kernel"] = ("model", None)
    # Embeddings by width, which divides evenly whatever the vocabulary size.
    layout[r".*/token_embedding/embeddings"] = (None, "model")
    layout[r".*/position_embedding/embeddings"] = (None, "model")
    return layout
