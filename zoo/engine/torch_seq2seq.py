"""The seq2seq decoder step on PyTorch, written in plain torch over the model's own weights.

Why: eager Keras on torch pays for `Layer.__call__` on every sublayer of keras-hub's
TransformerDecoder at every token (a nano step took about 12 ms, against ~1 ms compiled on JAX),
and returns a new cache where torch can write one position in place. This is a twin of
`Seq2Seq.decode_with_cache` for one token per row, with keras-hub's pre-LayerNorm
(`normalize_first=True`) decoder: self-attention over the cache, cross-attention over the cached
encoder keys/values, and the GELU feed-forward, as `zoo.engine.torch_engine` is for the GPT. It
reads keras-hub's sublayers by their attribute names; tests compare its tokens with the uncached
model, so a keras-hub release that renames them fails there, not silently.

The weights are read from the Keras variables at every call (no copy when the compute dtype is
the variables' own), so a model trained further is seen. Encoding the source stays in Keras: it
runs once per request.
"""

import weakref

import torch
import torch.nn.functional as F


class TorchSeq2SeqStep:
    """step(tokens (batch, 1), cache, cross_cache, source_mask, position) -> (logits (batch, 1,
    vocab) float32, cache), the signature of `Seq2Seq.decode_with_cache` for one token; the
    self-attention cache, (batch, layers, 2, max_target_length, heads, head_dim), is written in place."""

    def __init__(self, model):
        self._model = weakref.ref(model)  # held in a table keyed weakly by the model
        self.num_heads, self.head_dim = model.num_heads, model.hidden_dim // model.num_heads
        self.dtype = getattr(torch, model.dtype_policy.compute_dtype)

    def _value(self, variable):
        tensor = variable.value
        return tensor if tensor.dtype == self.dtype else tensor.to(self.dtype)

    def _norm(self, x, layer):
        # In float32 as Keras does under mixed precision, then back to the compute dtype.
        return F.layer_norm(x.float(), (x.shape[-1],), layer.gamma.value, layer.beta.value,
                            layer.epsilon).to(self.dtype)

    def _dense(self, x, layer):
        return torch.addmm(self._value(layer.bias), x, self._value(layer.kernel))

    def _project(self, x, einsum_dense):
        """keras MultiHeadAttention's query/key/value projection: (rows, hidden) -> (rows, heads, head_dim)."""
        kernel = self._value(einsum_dense.kernel).flatten(1)  # (hidden, heads * head_dim)
        bias = self._value(einsum_dense.bias).flatten()
        return torch.addmm(bias, x, kernel).view(-1, self.num_heads, self.head_dim)

    def _attend(self, attention, q, keys, values, hidden=None):
        """Softmax attention of q (rows, heads, head_dim) over keys/values (rows, length, heads,
        head_dim), `hidden` (rows, length) True where a key is masked; then the output projection."""
        scores = torch.einsum("rhd,rlhd->rhl", q * self.head_dim ** -0.5, keys)
        if hidden is not None:
            scores = scores.masked_fill(hidden[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        attended = torch.einsum("rhl,rlhd->rhd", weights, values).flatten(1)
        output = attention._output_dense
        return torch.addmm(self._value(output.bias), attended, self._value(output.kernel).flatten(0, 1))

    @torch.no_grad()
    def __call__(self, tokens, cache, cross_cache, source_mask, position):
        model, position = self._model(), int(position)
        tokens = torch.as_tensor(tokens, device=cache.device).long()[:, 0]
        source_hidden = ~torch.as_tensor(source_mask, device=cache.device).bool()  # (rows, source_length)
        x = (self._value(model.target_embedding.embeddings)[tokens]
             + self._value(model.target_positions.position_embeddings)[position])
        for i, layer in enumerate(model.decoder_layers):
            attention = layer._self_attention_layer
            h = self._norm(x, layer._self_attention_layer_norm)
            q = self._project(h, attention._query_dense)
            cache[:, i, 0, position] = self._project(h, attention._key_dense)  # in place
            cache[:, i, 1, position] = self._project(h, attention._value_dense)
            # Causal: the keys up to this position, and nothing to mask among them.
            x = x + self._attend(attention, q, cache[:, i, 0, :position + 1], cache[:, i, 1, :position + 1])
            attention = layer._cross_attention_layer
            h = self._norm(x, layer._cross_attention_layer_norm)
            q = self._project(h, attention._query_dense)
            x = x + self._attend(attention, q, cross_cache[:, i, 0], cross_cache[:, i, 1], source_hidden)
            h = self._norm(x, layer._feedforward_layer_norm)
            h = F.gelu(self._dense(h, layer._feedforward_intermediate_dense))  # keras "gelu": exact, erf
            x = x + self._dense(h, layer._feedforward_output_dense)
        x = self._norm(x, model.decoder_norm)
        logits = self._value(model.target_embedding.embeddings) @ x.T  # the tied output embedding
        return logits.T.float()[:, None], cache
