"""The seq2seq decode engine on PyTorch: the decoder step written in plain torch over the model's
own weights, as zoo.families.gpt.torch_engine is for the GPT, from the same building blocks
(zoo.layers.torch_blocks; see there for why plain torch).

Eager Keras on torch pays for `Layer.__call__` on every sublayer of keras-hub's TransformerDecoder
at every token (a nano step took about 12 ms, against ~1 ms compiled on JAX), and returns a new
cache where torch can write one position in place. This is a twin of `Seq2Seq.call_with_cache`
for one token per row, each row at its own position, with keras-hub's pre-LayerNorm
(`normalize_first=True`) decoder: self-attention over the cache, cross-attention over the cached
encoder keys/values of the row's own source, and the GELU feed-forward. It reads keras-hub's
sublayers by their attribute names, as `Seq2Seq.call_with_cache` does; tests compare its logits
with the uncached model, so a keras-hub release that renames them fails there, not silently.

Prefill encodes the source with the model's own Keras encoder (once per request), writes each
decoder layer's cross-attention keys/values of it and its padding mask into the request's slot,
then runs the start token at target position 0 through the same step as decoding. The cache has
the structure of `Seq2Seq.init_cache` in torch_blocks' layout, written in place.
"""

import numpy as np
import torch
import torch.nn.functional as F

from zoo.engine.interface import DecodeEngine
from zoo.layers import torch_blocks as blocks


class TorchSeq2SeqEngine(DecodeEngine):
    compiled = False  # eager torch: nothing to compile, prompts need no padding

    def __init__(self, model):
        super().__init__(model)
        self.num_heads, self.head_dim = model.num_heads, model.hidden_dim // model.num_heads
        self._read_weights()
        self.device, self.dtype = self.embeddings.device, self.embeddings.dtype
        self.key_positions = torch.arange(self.max_length, device=self.device)

    def _read_weights(self):
        model, weights = self.model, blocks.Weights(self.model)
        self.weights = weights
        self.embeddings = weights.tensor(model.target_embedding.embeddings)
        self.positions = weights.tensor(model.target_positions.position_embeddings)
        self.layers = []
        for layer in model.decoder_layers:
            attention, cross = layer._self_attention_layer, layer._cross_attention_layer
            self.layers.append(dict(
                self_norm=weights.norm(layer._self_attention_layer_norm),
                q=weights.dense(attention._query_dense), k=weights.dense(attention._key_dense),
                v=weights.dense(attention._value_dense), out=weights.dense(attention._output_dense, input_axes=2),
                cross_norm=weights.norm(layer._cross_attention_layer_norm),
                cross_q=weights.dense(cross._query_dense), cross_k=weights.dense(cross._key_dense),
                cross_v=weights.dense(cross._value_dense), cross_out=weights.dense(cross._output_dense, input_axes=2),
                ff_norm=weights.norm(layer._feedforward_layer_norm),
                ff_in=weights.dense(layer._feedforward_intermediate_dense),
                ff_out=weights.dense(layer._feedforward_output_dense)))
        self.final_norm = weights.norm(model.decoder_norm)

    def _heads(self, x):
        """(rows, hidden) -> (rows, heads, head_dim)."""
        return x.view(len(x), self.num_heads, self.head_dim)

    def _step(self, tokens, cache, positions):
        """One target token per row of the cache's first len(tokens) rows, row r at positions[r]:
        float32 NumPy logits (rows, vocab). Writes the tokens' keys/values into the cache."""
        step = blocks.StepRows(positions, self.device, self.key_positions)
        rows = len(tokens)
        x = self.embeddings[torch.from_numpy(tokens).to(self.device, torch.long)] + self.positions[step.positions]
        source_hidden = ~cache["source_mask"][:rows, None, None, :]  # (rows, 1, 1, source length)
        for layer, self_cache, (keys, values) in zip(self.layers, cache["self"], cache["cross"]):
            h = blocks.layer_norm(x, layer["self_norm"])
            q, k, v = (self._heads(blocks.linear(h, layer[name])) for name in ("q", "k", "v"))
            x = x + blocks.linear(blocks.cached_attention(q, k, v, self_cache, step), layer["out"])
            q = self._heads(blocks.linear(blocks.layer_norm(x, layer["cross_norm"]), layer["cross_q"]))
            x = x + blocks.linear(blocks.attend(q, keys[:rows], values[:rows], source_hidden), layer["cross_out"])
            h = F.gelu(blocks.linear(blocks.layer_norm(x, layer["ff_norm"]), layer["ff_in"]))  # keras "gelu": exact
            x = x + blocks.linear(h, layer["ff_out"])
        return blocks.tied_logits(blocks.layer_norm(x, self.final_norm), self.embeddings)

    # --- the engine interface -------------------------------------------------------------------

    def new_cache(self, slots):
        model, layers = self.model, len(self.layers)
        with torch.inference_mode():
            return {"self": blocks.kv_cache(slots, layers, self.num_heads, model.max_target_length, self.head_dim,
                                            self.dtype, self.device),
                    "cross": blocks.kv_cache(slots, layers, self.num_heads, model.max_source_length, self.head_dim,
                                             self.dtype, self.device),
                    "source_mask": torch.zeros((slots, model.max_source_length), dtype=torch.bool, device=self.device)}

    def prefill(self, ids):
        return self.prefill_slot(self.new_cache(1), 0, ids)

    @torch.inference_mode()
    def prefill_slot(self, cache, slot, ids):
        """`ids`: the decoder's start token, then the source's ids (see Seq2Seq.prefill_with_cache)."""
        self.bucket(len(ids))  # checks the length; eager torch needs no padding
        if self.weights.stale():  # mixed precision, and the model was trained since
            self._read_weights()
        source = np.asarray([ids[1:]], "int32")
        length = source.shape[1]
        encoded = self.model.encode(source, np.ones(source.shape, bool))[0].to(self.dtype)  # (length, hidden)
        for layer, (keys, values) in zip(self.layers, cache["cross"]):
            keys[slot, :, :length] = self._heads(blocks.linear(encoded, layer["cross_k"])).transpose(0, 1)
            values[slot, :, :length] = self._heads(blocks.linear(encoded, layer["cross_v"])).transpose(0, 1)
        mask = cache["source_mask"][slot]
        mask[:length], mask[length:] = True, False  # beyond it: a former request's source, never read
        row = {"self": [(k[slot:slot + 1], v[slot:slot + 1]) for k, v in cache["self"]],
               "cross": [(k[slot:slot + 1], v[slot:slot + 1]) for k, v in cache["cross"]],
               "source_mask": cache["source_mask"][slot:slot + 1]}  # views: the step writes into the slot
        logits = self._step(np.asarray(ids[:1], "int32"), row, np.zeros(1, "int32"))
        return logits[0], cache

    def insert(self, cache, slot, row_cache):
        return blocks.insert(cache, slot, row_cache)

    def reorder(self, cache, rows):
        return blocks.reorder(cache, rows, self.device)

    @torch.inference_mode()
    def _decode(self, tokens, cache, positions):
        return self._step(tokens, cache, positions), cache
