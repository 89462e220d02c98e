"""Building blocks every model family shares: seeded dropout and initializers (`seeding`), attention
over a KV cache in the one cache layout (`attention`, keras ops), and the torch engines' twins of
both (`torch_blocks`, plain torch, over the weights `torch_weights` reads and `torch_quantized` for
quantized layers; imported only by torch engines)."""
