"""The seq2seq decode engine on PyTorch: the decoder step written in plain torch over the model's
own weights, as zoo.families.gpt.torch_engine is for the GPT, from the same building blocks
(zoo.layers.torch_blocks; see there for why plain torch).

Eager Keras on torch pays for `Layer.__call__` on every sublayer of keras-hub's TransformerDecoder
at every token (a nano step took about 12 ms, against ~1 ms compiled on JAX), and returns a new
cache where torch can write one position in place. This is a twin of `Seq2Seq.call_with_cache`
for one token per row, each row at its own position, with keras-hub's decoder, pre- or
post-LayerNorm (`normalize_first`), and the model's other switches (embedding scale and norm,
position offset, activation, logits bias, forced first token): self-attention over the cache,
cross-attention over the cached encoder keys/values of the row's own source, and the feed-forward. It reads keras-hub's
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

# The model's activation names (zoo.families.seq2seq.model.ACTIVATIONS) in torch; keras's "gelu" is exact.
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}

from zoo.engine.interface import DecodeEngine
from zoo.layers import torch_blocks as blocks
from zoo.layers.torch_weights import Weights


class TorchSeq2SeqEngine(DecodeEngine):
    compiled = False  # eager torch: nothing to compile, prompts need no padding
    prefills_together = False  # each source encoded alone (`prefill_slot`)

    def __init__(self, model):
        super().__init__(model)
        self.num_heads, self.head_dim = model.num_heads, model.hidden_dim // model.num_heads
        self._read_weights()
        self.device, self.dtype = self.embeddings.device, self.embeddings.dtype
        self.key_positions = torch.arange(self.max_length, device=self.device)

    def _read_weights(self):
        model, weights = self.model, Weights(self.model)
        self.weights = weights
        self.embeddings = weights.embedding(model.target_embedding)
        self.output = weights.tied_output(model.target_embedding)
        # Row p is position p: the table's first position_offset rows (BART's 2) are never read.
        self.positions = weights.tensor(model.target_positions.position_embeddings)[model.position_offset:]
        self.layers = []
        for layer in model.decoder_layers:
            attention, cross = layer._self_attention_layer, layer._cross_attention_layer
            self.layers.append(dict(
                self_norm=weights.norm(layer._self_attention_layer_norm),
                qkv=weights.fused_dense([attention._query_dense, attention._key_dense, attention._value_dense]),
                out=weights.dense(attention._output_dense, input_axes=2),
                cross_norm=weights.norm(layer._cross_attention_layer_norm),
                cross_q=weights.dense(cross._query_dense), cross_k=weights.dense(cross._key_dense),
                cross_v=weights.dense(cross._value_dense), cross_out=weights.dense(cross._output_dense, input_axes=2),
                ff_norm=weights.norm(layer._feedforward_layer_norm),
                ff_in=weights.dense(layer._feedforward_intermediate_dense),
                ff_out=weights.dense(layer._feedforward_output_dense)))
        self.final_norm = weights.norm(model.decoder_norm) if model.decoder_norm is not None else None
        self.embedding_norm = (weights.norm(model.target_embedding_norm) if model.target_embedding_norm is not None
                               else None)
        self.logits_bias = (weights.tensor(model.logits_bias, torch.float32).cpu().numpy()
                            if model.logits_bias is not None else None)
        weights.settle()  # packs the large float32 products where that is faster on this CPU

    def _heads(self, x):
        """(rows, hidden) -> (rows, heads, head_dim)."""
        return x.view(len(x), self.num_heads, self.head_dim)

    def _step(self, tokens, cache, positions):
        """One target token per row of the cache's first len(tokens) rows, row r at positions[r]:
        float32 NumPy logits (rows, vocab). Writes the tokens' keys/values into the cache."""
        model = self.model
        step = blocks.StepRows(positions, self.device, self.key_positions)
        rows = len(tokens)
        x = self.embeddings[torch.from_numpy(tokens).to(self.device, torch.long)]
        if model.scale_embedding:
            x = x * model.embedding_scale
        x = x + self.positions[step.positions]
        if self.embedding_norm is not None:
            x = blocks.layer_norm(x, self.embedding_norm)
        source_visible = cache["source_mask"][:rows, None, None, :]  # (rows, 1, 1, source length)
        activation, pre_norm = ACTIVATIONS[model.activation], model.normalize_first

        def residual(x, norm, sublayer):  # keras-hub's block order, pre- or post-LayerNorm
            if pre_norm:
                return x + sublayer(blocks.layer_norm(x, norm))
            return blocks.layer_norm(x + sublayer(x), norm)

        def self_attention(h):
            q, k, v = blocks.linear(h, layer["qkv"]).view(rows, 3, self.num_heads, self.head_dim).unbind(1)
            return blocks.linear(blocks.cached_attention(q, k, v, self_cache, step), layer["out"])

        def cross_attention(h):
            q = self._heads(blocks.linear(h, layer["cross_q"]))
            return blocks.linear(blocks.attend(q, keys[:rows], values[:rows], source_visible), layer["cross_out"])

        for layer, self_cache, (keys, values) in zip(self.layers, cache["self"], cache["cross"]):
            x = residual(x, layer["self_norm"], self_attention)
            x = residual(x, layer["cross_norm"], cross_attention)
            x = residual(x, layer["ff_norm"], lambda h: blocks.linear(activation(blocks.linear(h, layer["ff_in"])),
                                                                       layer["ff_out"]))
        if self.final_norm is not None:
            x = blocks.layer_norm(x, self.final_norm)
        logits = blocks.tied_logits(x, self.output)
        return logits if self.logits_bias is None else logits + self.logits_bias

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
        logits, forced = logits[0], self.model.forced_bos_token_id
        if forced is not None:  # as Seq2Seq.force_first_token
            logits = np.where(np.arange(len(logits)) == forced, 0.0, -np.inf).astype(logits.dtype)
        return logits, cache

    def reorder(self, cache, rows):
        return blocks.reorder(cache, rows, self.device)

    @torch.inference_mode()
    def _decode(self, tokens, cache, positions):
        return self._step(tokens, cache, positions), cache
