"""Keras's quantization of a model's layers (`quantize_model`, for `zoo quantize` and for loading
a quantized bundle), and tied output projections (logits = hidden states times the token embedding's transpose) that
work on float and on quantized embeddings alike (`zoo quantize`, zoo.quantize), in keras.ops only.

A quantized Embedding's `embeddings` property is its integers (int8, or int4 unpacked), not the
table. Keras's ReversibleEmbedding computes the quantized projection itself (`reverse=True`); a
plain Embedding (the LSTM's) has no reverse call, so its table is dequantized by its own call.
"""

import warnings

import keras
from keras import ops

from zoo.configs import QUANTIZATION_MODES
from zoo.errors import ZooError


def embedding_table(embedding, dtype):
    """The (vocab, dim) table of an Embedding layer in `dtype`: its variable, or of a quantized
    layer the rows its own call gives for every token id (Keras's dequantization, whatever the
    mode: int8 rows over their scale, int4 groups with scales and zero points)."""
    if not getattr(embedding, "quantization_mode", None):
        return ops.cast(embedding.embeddings, dtype)
    return ops.cast(embedding(ops.arange(embedding.input_dim, dtype="int32")), dtype)


def tied_logits(embedding, x):
    """Logits (rows, vocab) of hidden states x (rows, dim) through a tied embedding, in x's dtype.

    Float: E·xᵀ, transposed, rather than x·Eᵀ: the same numbers, but XLA on CPU then reads the
    (vocab, dim) table as it lies instead of first copying it into transposed layout at every
    decode step. A quantized ReversibleEmbedding: Keras's own quantized `reverse` call (int8 or
    int4 table, the input quantized to int8 per row), as the model's uncached forward computes it.
    """
    if getattr(embedding, "quantization_mode", None) and hasattr(embedding, "tie_weights"):
        return ops.cast(embedding(x, reverse=True), x.dtype)
    return ops.transpose(ops.matmul(embedding_table(embedding, x.dtype), ops.transpose(x)))


def quantize_model(model, mode):
    """Quantizes `model` (built) in place with Keras's `Model.quantize(mode)`; returns the number
    of layers quantized."""
    if mode not in QUANTIZATION_MODES:
        raise ZooError(f"--mode {mode}: choose one of {', '.join(QUANTIZATION_MODES)}")
    types = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
    with warnings.catch_warnings():
        # Keras warns about every layer without a quantize method (norms, dropout) and, on JAX,
        # about NumPy's copy keyword while it reads the float kernels.
        warnings.simplefilter("ignore")
        model.quantize(mode, filters=lambda layer: isinstance(layer, types), type_check=False)
    return sum(1 for layer in model._flatten_layers() if getattr(layer, "quantization_mode", None) == mode)
