"""The PyTorch engine: the GPT forward pass written in plain torch over the model's own weights.

Why not compile the model's `call_with_cache` as on JAX and TensorFlow: see zoo.layers.torch_blocks,
whose building blocks (linear, float32 layer norm, rotary, attention over the cache, the one way to
read weights) this engine is assembled from, as the seq2seq one is. So this module is a twin of
`zoo.families.gpt.model` (embedding, pre-LayerNorm blocks, rotary or learned positions, tied output)
kept honest by tests that compare its logits and tokens with the model's uncached forward pass.

It runs under `torch.inference_mode`. The cache is torch_blocks' layout, written in place.
Nothing is compiled, so `compile_count` stays 0 and prompts need no padding.
"""

import numpy as np
import torch
import torch.nn.functional as F

from zoo.engine.interface import DecodeEngine
from zoo.layers import torch_blocks as blocks
from zoo.layers.torch_weights import Weights


class TorchEngine(DecodeEngine):
    compiled = False  # eager torch; see the module docstring
    prefills_together = True  # prompts arriving together run as one pass (`prefill_slots`), unpadded

    def __init__(self, model):
        super().__init__(model)
        self.num_heads, self.hidden_dim = model.num_heads, model.hidden_dim
        self.head_dim = model.hidden_dim // model.num_heads
        self._read_weights()
        self.device = self.embeddings.device
        self.dtype = self.embeddings.dtype
        self.rotary = None
        if model.position_embedding == "rotary":
            self.rotary = blocks.rotary_tables(model.blocks[0].attn.rotary_embedding, self.head_dim, self.max_length,
                                               self.embeddings.dtype, self.device)
        self.key_positions = torch.arange(self.max_length, device=self.device)

    def _read_weights(self):
        model, weights = self.model, Weights(self.model)
        self.weights = weights
        self.embeddings = weights.embedding(model.token_embedding)
        self.positions = None
        if model.learned_positions is not None:
            self.positions = weights.tensor(model.learned_positions.position_embeddings)
        self.blocks = [dict(attn_norm=weights.norm(block.attn_norm), mlp_norm=weights.norm(block.mlp_norm),
                            qkv=weights.dense(block.attn.qkv), out=weights.dense(block.attn.out),
                            mlp_in=weights.dense(block.mlp_in), mlp_out=weights.dense(block.mlp_out))
                       for block in model.blocks]
        self.final_norm = weights.norm(model.final_norm)
        self.output = weights.tied_output(model.token_embedding)
        weights.settle()  # packs the large float32 products where that is faster on this CPU

    # --- the model, token by token: hidden states are (tokens, hidden) --------------------------

    def _embed(self, tokens, positions):
        x = self.embeddings[tokens]
        return x if self.positions is None else x + self.positions[positions]

    def _qkv(self, x, block, positions):
        """Queries, keys, values (tokens, heads, head_dim) of normalized x (tokens, hidden)."""
        qkv = blocks.linear(blocks.layer_norm(x, block["attn_norm"]), block["qkv"])
        q, k, v = qkv.view(-1, 3, self.num_heads, self.head_dim).unbind(1)
        if self.rotary is not None:
            cos, sin = (table[positions][:, None] for table in self.rotary)
            q, k = blocks.rotate(q, cos, sin), blocks.rotate(k, cos, sin)
        return q, k, v

    def _finish_block(self, x, attended, block):
        """The residual adds and the MLP, after attention's output (tokens, hidden)."""
        x = x + blocks.linear(attended, block["out"])
        h = F.gelu(blocks.linear(blocks.layer_norm(x, block["mlp_norm"]), block["mlp_in"]), approximate="tanh")
        return x + blocks.linear(h, block["mlp_out"])

    def _logits(self, x):
        return blocks.tied_logits(blocks.layer_norm(x, self.final_norm), self.output)

    # --- the engine interface -------------------------------------------------------------------

    def new_cache(self, slots):
        return blocks.kv_cache(slots, len(self.blocks), self.num_heads, self.max_length, self.head_dim,
                               self.dtype, self.device)

    def prefill(self, ids):
        return self.prefill_slot(self.new_cache(1), 0, ids)

    def prefill_slot(self, cache, slot, ids):
        self.bucket(len(ids))  # checks the length; eager torch needs no padding
        logits, cache = self._prefill_group(cache, [slot], [ids], [len(ids)])
        return logits[0], cache

    @torch.inference_mode()
    def _prefill_group(self, cache, slots, ids, lengths):
        """Prompts `ids` (rows, length), padded after their `lengths` to one length, into rows
        `slots`, all in one pass: (logits (rows, vocab), cache)."""
        if self.weights.stale():  # mixed precision, and the model was trained since
            self._read_weights()
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        rows, length = ids.shape
        if rows == 1:
            slots = int(slots[0])
        else:
            slots = torch.as_tensor(np.asarray(slots), dtype=torch.long, device=self.device)
        positions = torch.arange(length, device=self.device)
        x = self._embed(ids, positions).view(rows * length, -1)  # (tokens, hidden), row after row
        for block, layer_cache in zip(self.blocks, cache):
            q, k, v = (t.view(rows, length, self.num_heads, self.head_dim)
                       for t in self._qkv(x, block, positions.repeat(rows)))
            x = self._finish_block(x, blocks.causal_prefill_attention(q, k, v, layer_cache, slots), block)
        last = torch.arange(rows, device=self.device) * length + torch.as_tensor(lengths, device=self.device) - 1
        return self._logits(x[last]), cache

    @torch.inference_mode()
    def _verify(self, tokens, cache, position):
        if self.weights.stale():
            self._read_weights()
        positions = self.key_positions[position:position + len(tokens)]
        visible = blocks.span_visible(position, len(tokens), self.key_positions)
        x = self._embed(torch.from_numpy(tokens).to(self.device, torch.long), positions)
        for block, layer_cache in zip(self.blocks, cache):
            x = self._finish_block(x, blocks.span_attention(*self._qkv(x, block, positions), layer_cache, 0, visible),
                                   block)
        return self._logits(x), cache

    def reorder(self, cache, rows):
        return blocks.reorder(cache, rows, self.device)

    @torch.inference_mode()
    def _decode(self, tokens, cache, positions):
        step = blocks.StepRows(positions, self.device, self.key_positions)
        x = self._embed(torch.from_numpy(tokens).to(self.device, torch.long), step.positions)
        for block, layer_cache in zip(self.blocks, cache):
            q, k, v = self._qkv(x, block, step.positions)  # (slots, heads, head_dim)
            x = self._finish_block(x, blocks.cached_attention(q, k, v, layer_cache, step), block)
        return self._logits(x), cache
