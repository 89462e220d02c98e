"""The PyTorch engine: the GPT forward pass written in plain torch over the model's own weights.

Why not compile the model's `call_with_cache` as on JAX and TensorFlow: PyTorch has no cheap way to
run a Keras layer graph without paying for `Layer.__call__` on every layer at every step (tens of
microseconds each, hundreds of calls a token), and Keras ops return new tensors where torch can
write a token's keys/values into the cache in place. So this module is a twin of
`zoo.models.gpt` (embedding, pre-LayerNorm blocks, rotary or learned positions, tied output) kept
honest by tests that compare its tokens with the model's uncached forward pass.

It reads the weights through the Keras variables' torch tensors (no copy, so in-place updates by
training are seen) and runs under `torch.inference_mode`. The cache is, per layer, a (keys,
values) pair of shape (slots, heads, max_length, head_dim), written in place with index_put_.

Nothing is compiled, so `compile_count` stays 0 and prompts need no padding: torch.compile
(inductor, default mode) measured on the 2-core CPU took 41 s to compile the batch-1 step and 21 s
for batch 8, per shape, and made the step only 7-12% faster.
"""

import torch
import torch.nn.functional as F

from zoo.engine.compiled import DecodeEngine


def _rotate(x, cos, sin):
    """keras_hub's RotaryEmbedding: x * cos + rotate_half(x) * sin, halves (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class TorchEngine(DecodeEngine):
    compiled = False  # eager torch; see the module docstring

    def __init__(self, model):
        super().__init__(model)
        self.dtype = getattr(torch, model.dtype_policy.compute_dtype)
        cast = self._cast
        self.num_heads, self.hidden_dim = model.num_heads, model.hidden_dim
        self.head_dim = model.hidden_dim // model.num_heads
        self.embeddings = cast(model.token_embedding.embeddings.value)
        self.device = self.embeddings.device
        self.positions = None
        if model.learned_positions is not None:
            self.positions = cast(model.learned_positions.position_embeddings.value)
        self.blocks = []
        for block in model.blocks:
            self.blocks.append(dict(
                attn_norm=self._norm(block.attn_norm), mlp_norm=self._norm(block.mlp_norm),
                qkv=self._dense(block.attn.qkv), out=self._dense(block.attn.out),
                mlp_in=self._dense(block.mlp_in), mlp_out=self._dense(block.mlp_out)))
        self.final_norm = self._norm(model.final_norm)
        self.rotary = None
        if model.position_embedding == "rotary":
            rope = model.blocks[0].attn.rotary_embedding
            # Computed as keras_hub does (float32 angles, then cast), for every position at once.
            inverse = rope.max_wavelength ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
            angles = torch.arange(self.max_length, dtype=torch.float32)[:, None] * (inverse / rope.scaling_factor)
            angles = torch.cat((angles, angles), dim=-1).to(self.device)
            self.rotary = (angles.cos().to(self.dtype), angles.sin().to(self.dtype))
        self.key_positions = torch.arange(self.max_length, device=self.device)

    def _cast(self, tensor):
        # Mixed precision keeps float32 variables and computes in the policy's dtype: a cast copy
        # (taken once, so a model trained further needs a new engine). Otherwise, no copy.
        return tensor if tensor.dtype == self.dtype else tensor.detach().to(self.dtype)

    def _dense(self, layer):
        return self._cast(layer.kernel.value), self._cast(layer.bias.value)

    def _norm(self, layer):
        return layer.gamma.value, layer.beta.value, layer.epsilon

    # --- building blocks: hidden states are (tokens, hidden), one row per token ----------------

    @staticmethod
    def _linear(x, weights):
        kernel, bias = weights
        return torch.addmm(bias, x, kernel)  # Dense's x @ kernel + bias, in one call

    def _layer_norm(self, x, weights):
        gamma, beta, epsilon = weights
        # In float32 as Keras does under mixed precision, then back to the compute dtype.
        return F.layer_norm(x.float(), (x.shape[-1],), gamma, beta, epsilon).to(self.dtype)

    def _embed(self, tokens, positions):
        x = self.embeddings[tokens]
        return x if self.positions is None else x + self.positions[positions]

    def _qkv(self, x, block, positions):
        """Queries, keys, values (tokens, heads, head_dim) of normalized x (tokens, hidden)."""
        qkv = self._linear(self._layer_norm(x, block["attn_norm"]), block["qkv"])
        q, k, v = qkv.view(-1, 3, self.num_heads, self.head_dim).unbind(1)
        if self.rotary is not None:
            cos, sin = (table[positions][:, None] for table in self.rotary)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        return q, k, v

    def _finish_block(self, x, attended, block):
        """The residual adds and the MLP, after attention's output (tokens, hidden)."""
        x = x + self._linear(attended, block["out"])
        h = F.gelu(self._linear(self._layer_norm(x, block["mlp_norm"]), block["mlp_in"]), approximate="tanh")
        return x + self._linear(h, block["mlp_out"])

    def _logits(self, x):
        # embeddings @ x.T rather than x @ embeddings.T: the same products, but MKL streams the
        # (vocab, hidden) table row by row: 2.3x faster at batch 8 on the 2-core CPU, the same at 1
        # (batch-8 steps: 11.0 ms -> 8.4 ms).
        rows = self._layer_norm(x, self.final_norm).reshape(-1, self.hidden_dim)
        return (self.embeddings @ rows.T).T.reshape(*x.shape[:-1], -1).float().cpu().numpy()

    # --- the engine interface -------------------------------------------------------------------

    def new_cache(self, slots):
        shape = (slots, self.num_heads, self.max_length, self.head_dim)
        with torch.inference_mode():
            return [(torch.zeros(shape, dtype=self.dtype, device=self.device),
                     torch.zeros(shape, dtype=self.dtype, device=self.device)) for _ in self.blocks]

    def prefill(self, ids):
        return self.prefill_slot(self.new_cache(1), 0, ids)

    @torch.inference_mode()
    def prefill_slot(self, cache, slot, ids):
        length = len(ids)
        self.bucket(length)  # checks the length; eager torch needs no padding
        positions = torch.arange(length, device=self.device)
        x = self._embed(torch.as_tensor(ids, dtype=torch.long, device=self.device), positions)
        for block, (keys, values) in zip(self.blocks, cache):
            q, k, v = (t.transpose(0, 1) for t in self._qkv(x, block, positions))  # (heads, length, head_dim)
            keys[slot, :, :length] = k
            values[slot, :, :length] = v
            # The prompt attends to itself only: nothing before it in this slot is its own.
            attended = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True)[0]
            x = self._finish_block(x, attended.transpose(0, 1).reshape(length, self.hidden_dim), block)
        return self._logits(x[-1]), cache

    def insert(self, cache, slot, row_cache):
        with torch.inference_mode():
            for (keys, values), (row_keys, row_values) in zip(cache, row_cache):
                keys[slot].copy_(row_keys[0])
                values[slot].copy_(row_values[0])
        return cache

    @torch.inference_mode()
    def _decode(self, tokens, cache, positions):
        # Attention reads the cache only up to the furthest position in this step, not the whole
        # context: at batch 8 a full 256-position cache is 38 MB against 56 MB of weights, and
        # decoding on a CPU is bound by memory traffic (batch-8 steps at positions 16-128: 12.4 ms
        # -> 11.0 ms on the 2-core CPU).
        length = int(positions.max()) + 1
        tokens = torch.from_numpy(tokens).to(self.device, torch.long)
        positions = torch.from_numpy(positions).to(self.device, torch.long)
        slots = len(tokens)  # the cache's first `slots` rows step; views, so writes land in the cache
        rows = torch.arange(slots, device=self.device)
        # Row r attends to its keys at positions <= positions[r]: (slots, 1, 1, length). Spelled
        # out rather than scaled_dot_product_attention, whose CPU kernel with a mask was ~10x slower.
        hidden = (self.key_positions[None, :length] > positions[:, None])[:, None, None]
        x = self._embed(tokens, positions)
        for block, (keys, values) in zip(self.blocks, cache):
            keys, values = keys[:slots, :, :length], values[:slots, :, :length]
            q, k, v = self._qkv(x, block, positions)  # (slots, heads, head_dim)
            keys[rows, :, positions] = k  # in place: each row at its own position
            values[rows, :, positions] = v
            scores = (q[:, :, None] @ keys.transpose(2, 3)) * self.head_dim ** -0.5
            attended = torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1) @ values
            x = self._finish_block(x, attended.view(slots, self.hidden_dim), block)
        return self._logits(x), cache
