"""The building blocks of the families' plain-torch decode engines (zoo.families.gpt.torch_engine,
zoo.families.seq2seq.torch_step): the torch twins of what the Keras models compute, shared so that
each piece of math has one torch spelling.

Why plain torch at all: PyTorch has no cheap way to run a Keras layer graph without paying for
`Layer.__call__` on every layer at every step (tens of microseconds each, hundreds of calls a
token), and Keras ops return new tensors where torch can write a token's keys/values into the cache
in place. torch.compile (inductor, default mode) measured on the 2-core CPU took 41 s to compile the
GPT's batch-1 step and 21 s for batch 8, per shape, and made the step only 7-12% faster.

The weights they take are read by zoo.layers.torch_weights. Hidden states are (tokens, hidden), one
row per token. A torch engine's KV cache is, per layer, a (keys, values) pair of shape (slots,
heads, length, head_dim) (`kv_cache`), written in place.
"""

import torch
import torch.nn.functional as F


def linear(x, weights):
    """Dense's x @ kernel + bias, in one call (`weights` from zoo.layers.torch_weights' Weights.dense:
    a PackedLinear, or a quantized layer's twin, is called instead)."""
    if weights.__class__ is not tuple:
        return weights(x)
    kernel, bias = weights
    return torch.addmm(bias, x, kernel)


def layer_norm(x, weights):
    """LayerNormalization in float32 as Keras does under mixed precision, then back to x's dtype."""
    gamma, beta, epsilon = weights
    if x.dtype == torch.float32:  # two calls fewer at each of a step's norms
        return F.layer_norm(x, (x.shape[-1],), gamma, beta, epsilon)
    return F.layer_norm(x.float(), (x.shape[-1],), gamma, beta, epsilon).to(x.dtype)


def rotary_tables(rope, head_dim, length, dtype, device):
    """keras_hub's RotaryEmbedding `rope` as (cos, sin) tables (length, head_dim), computed as it
    does (float32 angles, then cast), for every position at once."""
    inverse = rope.max_wavelength ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * (inverse / rope.scaling_factor)
    angles = torch.cat((angles, angles), dim=-1).to(device)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    """keras_hub's RotaryEmbedding: x * cos + rotate_half(x) * sin, halves (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def kv_cache(slots, num_layers, num_heads, length, head_dim, dtype, device):
    """An empty cache: `num_layers` (keys, values) pairs of zeros (slots, heads, length, head_dim)."""
    shape = (slots, num_heads, length, head_dim)
    with torch.inference_mode():
        return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in range(num_layers)]


def leaves(cache):
    """A cache's tensors (a nested structure of lists, tuples and dicts), each with a row per slot."""
    if isinstance(cache, dict):
        return [leaf for key in sorted(cache) for leaf in leaves(cache[key])]
    if isinstance(cache, (list, tuple)):
        return [leaf for part in cache for leaf in leaves(part)]
    return [cache]


def reorder(cache, rows, device):
    """Row i of the cache's first len(rows) becomes what row rows[i] was, in place."""
    with torch.inference_mode():
        rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        for array in leaves(cache):
            array[:len(rows)] = array[rows]
    return cache


class StepRows:
    """The rows of one decode step and their positions (a NumPy int vector, one per row), with
    what every layer's attention needs, computed once a step: attention reads the cache only up
    to the furthest position (`length`), not the whole context (at batch 8 a full 256-position
    GPT cache is 38 MB against 56 MB of weights, and decoding on a CPU is bound by memory traffic:
    batch-8 steps at positions 16-128 went from 12.4 ms to 11.0 ms on the 2-core CPU), and row r
    sees its keys at positions <= positions[r] (`visible`)."""

    def __init__(self, positions, device, key_positions):
        self.length = int(positions.max()) + 1
        self.positions = torch.from_numpy(positions).to(device, torch.long)
        self.rows = torch.arange(len(positions), device=device)
        # (rows, 1, 1, length); None for a single row, which sees every position read
        self.visible = (None if len(positions) == 1
                        else (key_positions[None, :self.length] <= self.positions[:, None])[:, None, None])


def attend(q, keys, values, visible=None):
    """Softmax attention of one query a row, q (rows, heads, head_dim), over keys and values
    (rows, heads, length, head_dim), `visible` (rows, 1, 1, length) True where a key is seen.
    Returns (rows, heads * head_dim). One fused call: on the 2-core Xeon it took 9-14 us against
    18-23 spelled out (matmul, scale, softmax, matmul) for one row, 25-91 against 32-104 for 4-8
    rows with a mask (GPT-2's 6 x 64 heads, 40-200 positions)."""
    return F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=visible).view(len(q), -1)


def cached_attention(q, k, v, cache, step):
    """A decode step's self-attention: each row's key/value k, v (rows, heads, head_dim) is written
    into the layer's cache at its own position, in place (the cache's first len(rows) rows step;
    views, so the writes land in the cache), then its query attends to its cache up to there."""
    slots = len(step.rows)
    keys, values = cache[0][:slots, :, :step.length], cache[1][:slots, :, :step.length]
    if slots == 1:  # its position is the last one read: two plain copies, not two indexed writes
        keys[:, :, -1], values[:, :, -1] = k, v
    else:
        keys[step.rows, :, step.positions] = k
        values[step.rows, :, step.positions] = v
    return attend(q, keys, values, step.visible)


def causal_prefill_attention(q, k, v, cache, slots):
    """Prompts' self-attention from position 0, q, k, v (rows, length, heads, head_dim), prompts
    padded after their end to one length: their keys and values written into rows `slots` (an
    int for one prompt, else a (rows,) tensor) of the layer's cache, and each attends to itself
    only, causally (nothing before it in its slot is its own; its padding comes after it).
    Returns (rows * length, heads * head_dim)."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (rows, heads, length, head_dim)
    rows, length = q.shape[0], q.shape[2]
    if isinstance(slots, int):  # a plain copy into the row, not an indexed write
        cache[0][slots, :, :length], cache[1][slots, :, :length] = k[0], v[0]
    else:
        cache[0][slots, :, :length], cache[1][slots, :, :length] = k, v
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attended.transpose(1, 2).reshape(rows * length, -1)


def span_attention(q, k, v, cache, slot, visible):
    """Self-attention of consecutive tokens of one slot, q, k, v (length, heads, head_dim), the
    first at position start = end - length (speculative decoding's check of a draft's proposals):
    their keys and values are written into row `slot` of the layer's cache, in place, and each
    query attends to the row up to its own position. `visible` (length, end): `span_visible`'s, made
    once for every layer. Returns (length, heads * head_dim)."""
    length, end = visible.shape
    keys, values = cache[0][slot, :, :end], cache[1][slot, :, :end]  # (heads, end, head_dim) views
    keys[:, end - length:], values[:, end - length:] = k.transpose(0, 1), v.transpose(0, 1)
    # With a batch axis: on 3-D inputs torch's CPU attention takes its unfused path (2-3x slower here)
    attended = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None], attn_mask=visible)
    return attended[0].transpose(0, 1).reshape(length, -1)  # (heads, length, head_dim) -> (length, hidden)


def span_visible(start, length, key_positions):
    """For `span_attention`: (length, start + length), True where a key's position is at or before
    the query's (the span's tokens at start, start + 1, ...). key_positions: 0, 1, ... past the span."""
    end = start + length
    return key_positions[None, :end] <= key_positions[start:end, None]


def tied_logits(x, embeddings):
    """Float32 NumPy logits (rows, vocab) of final hidden states x (rows, hidden) through a tied
    embedding (vocab, hidden), computed as embeddings @ x.T rather than x @ embeddings.T: the same
    products, but MKL streams the table row by row: 2.3x faster at batch 8 on the 2-core CPU, the
    same at 1 (GPT batch-8 steps: 11.0 ms -> 8.4 ms). A packed or quantized table
    (Weights.tied_output) computes its own."""
    if not isinstance(embeddings, torch.Tensor):
        return embeddings.logits(x)
    return (embeddings @ x.T).T.float().cpu().numpy()
