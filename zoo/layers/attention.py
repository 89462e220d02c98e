"""Attention over a KV cache, and the one cache layout every family decodes with, in keras ops.

The layout: per layer, a (keys, values) pair of shapes (batch, heads, head_dim, length) and
(batch, heads, length, head_dim), `length` the most positions a row holds (`kv_cache`). It is laid
out as attention's two matmuls read it, so that XLA does not copy the whole cache into another
layout at every step, and kept as separate arrays per layer, so that a compiled step updates each
in place. A decoder's self-attention cache (GPT's, the seq2seq decoder's) is written one token per
row at that row's own position (`cached_attention`); a seq2seq decoder's cross-attention cache holds
the encoder's keys and values in the same layout (`cache_layout`), read with a padding mask
(`attend`).

Used by zoo.families.gpt.model and zoo.families.seq2seq.model; their plain-torch twins use
zoo.layers.torch_blocks instead.
"""

from keras import ops

from zoo.backend import jax_or_tensorflow_on_cpu


def kv_cache(batch_size, num_layers, num_heads, head_dim, length, dtype):
    """An empty cache: `num_layers` (keys, values) pairs of zeros for `length` positions a row."""
    keys = (batch_size, num_heads, head_dim, length)
    values = (batch_size, num_heads, length, head_dim)
    return [(ops.zeros(keys, dtype=dtype), ops.zeros(values, dtype=dtype)) for _ in range(num_layers)]


def cache_layout(k, v):
    """Keys and values (batch, length, heads, head_dim), as a projection makes them, in the
    cache's layout: ((batch, heads, head_dim, length), (batch, heads, length, head_dim))."""
    return ops.transpose(k, (0, 2, 3, 1)), ops.transpose(v, (0, 2, 1, 3))


def attend(q, keys, values, visible):
    """Softmax attention of q (batch, length, heads, head_dim) over keys and values in the cache
    layout, `visible` a boolean broadcastable to (batch, heads, length, keys' length), True where a
    query may look. Returns (batch, length, heads, head_dim). Scores and softmax in float32."""
    head_dim = q.shape[-1]
    q = ops.transpose(q, (0, 2, 1, 3))  # (batch, heads, length, head_dim)
    scores = ops.matmul(q, ops.cast(keys, q.dtype)) * ops.cast(head_dim ** -0.5, q.dtype)
    scores = ops.where(visible, ops.cast(scores, "float32"), float("-inf"))
    out = ops.matmul(ops.cast(ops.softmax(scores, axis=-1), q.dtype), ops.cast(values, q.dtype))
    return ops.transpose(out, (0, 2, 1, 3))


def causal_attention(q, k, v):
    """Causal self-attention of q, k, v (batch, length, heads, head_dim) over themselves; returns
    (batch, length, heads, head_dim).

    `ops.dot_product_attention` where it may be a fused kernel (torch's SDPA, cuDNN or Splash on a
    GPU or TPU); under XLA on a CPU, where it is generic einsums, the same maths as `attend`'s
    batched matrix products, whose backward pass XLA compiles to about half the time (a GPT's
    training step on JAX: 5-7% faster at nanoGPT's CPU size, benchmarks/RESULTS.md)."""
    if not jax_or_tensorflow_on_cpu():
        return ops.dot_product_attention(q, k, v, is_causal=True)
    length = q.shape[1]
    keys, values = cache_layout(k, v)
    return attend(q, keys, values, ops.tril(ops.ones((length, length), dtype="bool")))


def _index_grid(shape, *indices):
    """Scatter indices (n, len(indices)): the index arrays broadcast to `shape`, flattened."""
    return ops.reshape(ops.stack([ops.broadcast_to(i, shape) for i in indices], axis=-1), (-1, len(indices)))


def write(cache, k, v, positions):
    """The layer's cache (keys, values) with k and v (batch, length, heads, head_dim) written at
    `positions` (batch, length): each token at its own (row, position), since the rows of a decode
    batch sit at different positions. The cache may have more rows than k; the rest are left as
    they are. Keys are stored transposed, so they are written element by element."""
    keys, values = cache
    shape = ops.shape(k)
    row = ops.arange(shape[0], dtype="int32")[:, None, None, None]
    head = ops.arange(shape[2], dtype="int32")[None, None, :, None]
    dim = ops.arange(shape[3], dtype="int32")[None, None, None, :]
    position = positions[:, :, None, None]
    keys = ops.scatter_update(keys, _index_grid(shape, row, head, dim, position),
                              ops.reshape(ops.cast(k, keys.dtype), (-1,)))
    values = ops.scatter_update(values, _index_grid(shape[:3], row[..., 0], head[..., 0], position[..., 0]),
                                ops.reshape(ops.cast(v, values.dtype), (-1, shape[3])))
    return keys, values


def cached_attention(q, k, v, cache, positions, reach=None):
    """Causal self-attention of tokens at `positions` (batch, length) over a layer's cache: their
    keys/values k, v are written there first (`write`), then each query q attends to its row's
    cache up to its own position. q, k, v: (batch, length, heads, head_dim). `reach` (a Python
    int above every position) limits what is read of the cache to its first `reach` positions
    (default: all). Returns (output (batch, length, heads, head_dim), the updated cache)."""
    keys, values = write(cache, k, v, positions)
    # A cache may have more rows than there are sequences (a server's decode slots, of which only
    # the first few are busy): those rows are neither written above nor read below, and the whole
    # cache is returned, so that compiled code updates it in place. Likewise only the first
    # `reach` positions are read: decoding on a CPU is bound by memory traffic, and a full cache
    # can be as many bytes as the weights.
    batch, reach = k.shape[0], reach or keys.shape[-1]
    read_keys, read_values = keys, values
    if keys.shape[0] != batch or reach != keys.shape[-1]:
        read_keys, read_values = keys[:batch, :, :, :reach], values[:batch, :, :reach]
    # Each query sees the keys at or before its own position; later ones may hold another
    # request's (or a padded prompt's) leftovers and are never read.
    visible = ops.arange(reach, dtype="int32")[None, None, :] <= positions[:, :, None]
    return attend(q, read_keys, read_values, visible[:, None]), (keys, values)
