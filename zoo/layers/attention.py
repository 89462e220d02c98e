"""Attention over a KV cache, and the one cache layout every family decodes with, in keras ops.

The layout: per layer, a (keys, values) pair laid out as attention's two matmuls read them, keys
(batch, heads, head_dim, positions) and values (batch, heads, positions, head_dim), so that XLA
does not copy the whole cache into another layout at every step, and kept as separate arrays per
layer, so that a compiled step updates each in place.

A decoder's self-attention cache (GPT's, the seq2seq decoder's; `kv_cache`) is written one token
per row at that row's own position (`cached_attention`), and split along the positions into
blocks, each its own array: positions 0-63, 64-127, 128-255, ..., each block as long as all before
it (`block_bounds`), so that a decode step that reads the cache up to a reach (the engines'
`reach_buckets`: 64, 128, 256, ...) reads whole blocks. With one array, reading its first
positions took a copy of them at every step and layer (XLA's products do not read a slice in
place): at batch 8 on a 2-core CPU, 2.0 of JAX's 7.5 ms step, and a GPT-2-shaped model decoded
1.27x faster at batch 8 with a cache exactly as long as the reach (benchmarks/RESULTS.md). Each
block has one more position at its end that no query sees, its spare slot: a token whose position
is not in the block writes there (scatter indices must be in range on every backend).

A seq2seq decoder's cross-attention cache holds the encoder's keys and values as one array each
(`cache_layout`), read whole with a padding mask (`attend`).

Used by zoo.families.gpt.model and zoo.families.seq2seq.model (and `token_at` by the LSTM's);
their plain-torch twins use zoo.layers.torch_blocks instead.
"""

import numpy as np
from keras import ops

from zoo.backend import jax_or_tensorflow_on_cpu

FIRST_BLOCK = 64  # positions in a self-attention cache's first block; the engines' smallest reach
_UNSEEN = 2 ** 31 - 1  # the position of a block's spare slot: after every query's


def block_bounds(length):
    """The (start, end) positions of a self-attention cache's blocks for `length` positions: 0-64,
    64-128, 128-256, ..., the last ending at `length`."""
    bounds, start = [], 0
    while start < length:
        end = min(max(FIRST_BLOCK, 2 * start), length)
        bounds.append((start, end))
        start = end
    return bounds


def _spans(key_blocks):
    """(start, span) of each block of a self-attention cache's keys: its first position and how
    many positions it holds (its length less its spare slot, which is at index `span`)."""
    spans, start = [], 0
    for keys in key_blocks:
        spans.append((start, keys.shape[-1] - 1))
        start += spans[-1][1]
    return spans


def kv_cache(batch_size, num_layers, num_heads, head_dim, length, dtype):
    """An empty self-attention cache: `num_layers` (keys, values) pairs, each a tuple of blocks
    (`block_bounds`) of zeros, each block one position longer than its span (its spare slot)."""
    def blocks(shape_of):
        return tuple(ops.zeros(shape_of(end - start + 1), dtype=dtype) for start, end in block_bounds(length))

    return [(blocks(lambda n: (batch_size, num_heads, head_dim, n)),
             blocks(lambda n: (batch_size, num_heads, n, head_dim))) for _ in range(num_layers)]


def source_cache(batch_size, num_layers, num_heads, head_dim, length, dtype):
    """An empty cross-attention cache: `num_layers` (keys, values) pairs of zeros, one array each
    for `length` source positions (`cache_layout`'s)."""
    return [(ops.zeros((batch_size, num_heads, head_dim, length), dtype=dtype),
             ops.zeros((batch_size, num_heads, length, head_dim), dtype=dtype)) for _ in range(num_layers)]


def cache_layout(k, v):
    """Keys and values (batch, length, heads, head_dim), as a projection makes them, in the
    cache's layout: ((batch, heads, head_dim, length), (batch, heads, length, head_dim))."""
    return ops.transpose(k, (0, 2, 3, 1)), ops.transpose(v, (0, 2, 1, 3))


def attend(q, keys, values, visible):
    """Softmax attention of q (batch, length, heads, head_dim) over keys and values in the cache
    layout, each an array or a sequence of blocks whose positions follow one another, `visible` a
    boolean broadcastable to (batch, heads, length, all the keys' positions), True where a query
    may look. Returns (batch, length, heads, head_dim). Scores and softmax in float32."""
    if not isinstance(keys, (list, tuple)):
        keys, values = [keys], [values]
    head_dim = q.shape[-1]
    q = ops.transpose(q, (0, 2, 1, 3))  # (batch, heads, length, head_dim)
    scale = ops.cast(head_dim ** -0.5, q.dtype)
    scores = [ops.matmul(q, ops.cast(block, q.dtype)) * scale for block in keys]
    scores = scores[0] if len(scores) == 1 else ops.concatenate(scores, axis=-1)
    scores = ops.where(visible, ops.cast(scores, "float32"), float("-inf"))
    weights = ops.cast(ops.softmax(scores, axis=-1), q.dtype)
    out, start = None, 0
    for block in values:  # each block's share of the weighted sum
        end = start + block.shape[2]
        part = ops.matmul(weights if len(values) == 1 else weights[..., start:end], ops.cast(block, q.dtype))
        out, start = part if out is None else out + part, end
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


def write(cache, k, v, positions, blocks=None):
    """The layer's self-attention cache (keys, values) with k and v (batch, length, heads,
    head_dim) written at `positions` (batch, length): each token at its own (row, position), since
    the rows of a decode batch sit at different positions, into the first `blocks` blocks (default:
    all; a position past them is not written). The cache may have more rows than k; the rest are
    left as they are. Keys are stored transposed, so they are written element by element."""
    key_blocks, value_blocks = cache
    shape = ops.shape(k)
    row = ops.arange(shape[0], dtype="int32")[:, None, None, None]
    head = ops.arange(shape[2], dtype="int32")[None, None, :, None]
    dim = ops.arange(shape[3], dtype="int32")[None, None, None, :]
    # A token past every block (the JAX engine's two-token step's copy at the context's end, whose
    # position lookup JAX fills with NaN) writes zeros: a query gives a spare slot no weight, but a
    # weight of 0 times NaN is NaN. Every other token is finite wherever it lands.
    spans = _spans(key_blocks)
    past = (positions >= sum(span for _, span in spans))[:, :, None, None]
    k = ops.reshape(ops.where(past, 0, k), (-1,))
    v = ops.reshape(ops.where(past, 0, v), (-1, shape[3]))
    written_keys, written_values = [], []
    for index, (keys, values, (start, spare)) in enumerate(zip(key_blocks, value_blocks, spans)):
        if blocks is None or index < blocks:  # a token of another block goes to the spare slot
            inside = (positions >= start) & (positions < start + spare)
            position = ops.where(inside, positions - start, spare)[:, :, None, None]
            keys = ops.scatter_update(keys, _index_grid(shape, row, head, dim, position), ops.cast(k, keys.dtype))
            values = ops.scatter_update(values, _index_grid(shape[:3], row[..., 0], head[..., 0], position[..., 0]),
                                        ops.cast(v, values.dtype))
        written_keys.append(keys)
        written_values.append(values)
    return tuple(written_keys), tuple(written_values)


def token_at(x, index):
    """Each sequence's vector at `index` along the length axis: x (batch, length, ...) -> (batch, ...).
    `index` is one int (or scalar tensor) for every row, or a (batch,) vector, one per row: a
    batched prefill's prompts are padded to one length and end each at its own."""
    index = ops.convert_to_tensor(index, dtype="int32")
    if len(index.shape) == 0:
        return ops.take(x, index, axis=1)
    shape = ops.shape(x)
    index = ops.broadcast_to(ops.reshape(index, (-1, 1) + (1,) * (len(shape) - 2)), (shape[0], 1, *shape[2:]))
    return ops.take_along_axis(x, index, axis=1)[:, 0]


def cached_attention(q, k, v, cache, positions, reach=None):
    """Causal self-attention of tokens at `positions` (batch, length) over a layer's cache: their
    keys/values k, v are written there first (`write`), then each query q attends to its row's
    cache up to its own position. q, k, v: (batch, length, heads, head_dim). `reach` (a Python
    int above every position) limits what is read of the cache to the blocks that start below it
    (default: all). Returns (output (batch, length, heads, head_dim), the updated cache)."""
    spans = _spans(cache[0])
    # Only the first blocks up to `reach` are read (and written: every position is below it):
    # decoding on a CPU is bound by memory traffic, and a full cache can be as many bytes as the
    # weights.
    read = len(spans) if reach is None else sum(start < reach for start, _ in spans)
    keys, values = write(cache, k, v, positions, read)
    # A cache may have more rows than there are sequences (a server's decode slots, of which only
    # the first few are busy): those rows are neither written above nor read below, and the whole
    # cache is returned, so that compiled code updates it in place.
    batch = k.shape[0]
    read_keys, read_values = keys[:read], values[:read]
    if keys[0].shape[0] != batch:
        read_keys, read_values = [block[:batch] for block in read_keys], [block[:batch] for block in read_values]
    # Each query sees the keys at or before its own position; later ones may hold another
    # request's (or a padded prompt's) leftovers and are never read, nor is a block's spare slot.
    key_positions = np.concatenate([np.append(np.arange(start, start + span), _UNSEEN)
                                    for start, span in spans[:read]]).astype("int32")
    visible = ops.convert_to_tensor(key_positions)[None, None, :] <= positions[:, :, None]
    return attend(q, read_keys, read_values, visible[:, None]), (keys, values)
