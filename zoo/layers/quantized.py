"""Keras's quantization of a model's layers (`quantize_model`, for `zoo quantize` and for loading
a quantized bundle), and tied output projections (logits = hidden states times the token embedding's transpose) that
work on float and on quantized embeddings alike (`zoo quantize`, zoo.quantize), and an int4
model's float copy for inference on a CPU (`inference_model`), in keras.ops only.

A quantized Embedding's `embeddings` property is its integers (int8, or int4 unpacked), not the
table. Keras's ReversibleEmbedding computes the quantized projection itself (`reverse=True`); a
plain Embedding (the LSTM's) has no reverse call, so its table is dequantized by its own call.
"""

import gc
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
    """Logits (..., vocab) of hidden states x (..., dim) through a tied embedding, in x's dtype.

    Float: E·xᵀ, transposed, rather than x·Eᵀ: the same numbers, but XLA on CPU then reads the
    (vocab, dim) table as it lies instead of first copying it into transposed layout at every
    decode step. A quantized ReversibleEmbedding: Keras's own quantized `reverse` call (int8 or
    int4 table, the input quantized to int8 per row), as the model's uncached forward computes it;
    from two rows up, int8 as `_int8_tied_logits`, the same numbers.
    """
    rows = ops.reshape(x, (-1, x.shape[-1]))
    mode = getattr(embedding, "quantization_mode", None)
    if mode and hasattr(embedding, "tie_weights"):  # a quantized ReversibleEmbedding
        if (mode == "int8" and embedding.tie_weights and embedding.inputs_quantizer
                and embedding.logit_soft_cap is None and rows.shape[0] != 1):
            logits = _int8_tied_logits(embedding, rows)
        else:
            logits = ops.cast(embedding(rows, reverse=True), x.dtype)
    else:
        logits = ops.transpose(ops.matmul(embedding_table(embedding, x.dtype), ops.transpose(rows)))
    return ops.reshape(logits, (*ops.shape(x)[:-1], ops.shape(logits)[-1]))


def _int8_tied_logits(embedding, rows):
    """Keras's int8 `reverse` call of (rows, dim), x quantized per row, integer sums with the
    int8 table, over both scales, spelled so that XLA on CPU multiplies the table where it lies:
    Keras's x·Eᵀ copies the transposed table at every call from two rows up (GPT-2 124M's 50257 x
    768 table: 92 ms against 1.7-2.4 ms here, JAX). Not for one row: XLA's int8 product of a
    single row this way converts the table to int32 first (44 ms; Keras's 10). Integer sums are
    exact, so the logits are Keras's to the bit."""
    quantized, scale = embedding.inputs_quantizer(rows)
    sums = ops.einsum("rd,vd->rv", quantized, embedding.embeddings)
    scales = ops.multiply(scale, ops.transpose(embedding.embeddings_scale))
    logits = ops.divide(ops.cast(sums, embedding.compute_dtype), scales)
    return ops.cast(logits, rows.dtype)


# The layer types Keras's Model.quantize quantizes here (the others: norms, position tables, stay float).
QUANTIZABLE = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)
# int4 in groups of this many input rows, each with its scale and zero point: Keras's default,
# named here because loading must build the same layout (zoo.bundle: `build_quantized`).
INT4_BLOCK_SIZE = 128


def _config(mode):
    """Keras's default configuration of `mode` (what `Model.quantize(mode)` resolves), made here so
    that quantizing and loading build the same layers: int8 weights and inputs; int4 weights only,
    in groups of INT4_BLOCK_SIZE."""
    if mode not in QUANTIZATION_MODES:
        raise ZooError(f"--mode {mode}: choose one of {', '.join(QUANTIZATION_MODES)}")
    if mode == "int4":
        return keras.quantizers.Int4QuantizationConfig(block_size=INT4_BLOCK_SIZE)
    return keras.quantizers.Int8QuantizationConfig()


def quantize_model(model, mode):
    """Quantizes `model` (built) in place with Keras's `Model.quantize(mode)`, the layers not yet
    quantized; returns the number of layers quantized."""
    # Keras runs a full gc.collect() for every float variable it replaces (to free its buffer at
    # once): over a whole process's heap that was most of the time quantizing took (0.26 s per
    # layer in the test process). With the heap frozen, each collection looks at new objects only;
    # one full collection at the end frees what the float weights left in cycles.
    gc.freeze()
    try:
        with warnings.catch_warnings():
            # Keras warns about every layer without a quantize method (norms, dropout) and, on JAX,
            # about NumPy's copy keyword while it reads the float kernels.
            warnings.simplefilter("ignore")
            model.quantize(mode, config=_config(mode), type_check=False,
                           filters=lambda layer: isinstance(layer, QUANTIZABLE) and not layer.quantization_mode)
    finally:
        gc.unfreeze()
        gc.collect()
    return sum(1 for layer in model._flatten_layers() if getattr(layer, "quantization_mode", None) == mode)


def build_quantized(model, mode):
    """Builds `model` (not yet built) with the layers `quantize_model` quantizes in `mode`'s integer
    layout, for `load_weights`. The layers that exist before the build get a quantized dtype
    policy, with which their build makes integer variables: Keras's own way to load a quantized
    model, where quantizing freshly initialized float weights would compute a quantization only to
    overwrite it. Layers made inside their parent's build (keras-hub's transformer blocks) are
    quantized after it, as `quantize_model` does."""
    config = _config(mode)
    name = f"int4/{INT4_BLOCK_SIZE}" if mode == "int4" else mode
    for layer in model._flatten_layers():
        if isinstance(layer, QUANTIZABLE) and not layer.built:
            layer.dtype_policy = f"{name}_from_{layer.dtype_policy.name}"
            layer.quantization_config = config  # its build reads it (the int4 embedding's weight-only reverse)
    model.build()
    quantize_model(model, mode)


def inference_model(model):
    """The model to run `model`'s inference with (the decode engines of JAX and TensorFlow, the bert
    family's classifier, tagger and span answerer): on a CPU, a weight-only int4 model's float copy
    (`dequantized_copy`), whose products read float kernels instead of unpacking and dequantizing
    the int4 ones at every call; otherwise `model` itself. Made once: a quantized model's weights do
    not train. On a GPU Keras's int4 call is kept (XLA can fuse the dequantization into the
    product there; not measured). GPT-2 shape, batch 1, side by side: JAX 294.8 -> 661.8 tokens/s,
    TensorFlow 381.2 -> 546.6 (batch 8 1.97x and 1.30x); a bert classifier of 4 x 512, one
    16-token text: JAX 42.3 -> 7.9 ms, TensorFlow 38.9 -> 9.0, torch 115.4 -> 16.8."""
    from zoo.backend import on_cpu

    if not on_cpu():
        return model
    return dequantized_copy(model) or model


def dequantized_copy(model):
    """A float copy of a weight-only quantized model (`zoo quantize --mode int4`: kernels and tables
    as int4 in groups, each with a scale and a zero point; inputs stay float), each of whose layers
    holds the float weights its quantized layer dequantizes from the integers at every call, so it
    computes what that layer computes: a Dense or EinsumDense multiplies its input by the kernel
    Keras's int4 call dequantizes (the same spelling as Keras's, below), an embedding looks up the
    rows its own call gives and its reverse call multiplies by that table. None where a quantized
    layer is anything else (int8's integer products, per-channel int4, LoRA on it, an untied or
    input-quantizing reverse call): Keras's own call is then the only spelling.

    Why: on a CPU, XLA has no int4 product, so Keras's call unpacks and dequantizes every kernel
    at every decode step, writing and then reading a float kernel besides the integers (JAX, GPT-2
    shape: 0.42x the float32 engine at batch 1). The copy reads the float kernel only, for the
    memory of a float32 model; zoo's torch engine holds int4 kernels dequantized too."""
    layers = list(model._flatten_layers())
    quantized = [layer for layer in layers if getattr(layer, "quantization_mode", None)]
    if not quantized or not all(_weight_only_int4(layer) for layer in quantized):
        return None
    copy = type(model).from_config(model.get_config())
    copy.build()
    copy_layers = list(copy._flatten_layers())
    if [type(layer) for layer in layers] != [type(layer) for layer in copy_layers]:
        return None  # a model whose layers are made in another order than its config rebuilds
    for layer, twin in zip(layers, copy_layers):
        if getattr(layer, "quantization_mode", None):
            values = _dequantized_weights(layer)
        else:
            values = {variable.name: variable for variable in _own_variables(layer)}
        for variable in _own_variables(twin):
            variable.assign(values[variable.name])
    return copy


def _own_variables(layer):
    return layer._trainable_variables + layer._non_trainable_variables


def _weight_only_int4(layer):
    if layer.quantization_mode != "int4" or getattr(layer, "lora_enabled", False):
        return False
    if isinstance(layer, keras.layers.Embedding):
        # A reverse call (keras-hub's ReversibleEmbedding) must multiply by the looked-up table.
        return not hasattr(layer, "tie_weights") or (layer.tie_weights and not layer.inputs_quantizer)
    # Keras's sub-channel call dequantizes the kernel, then multiplies; its per-channel one divides
    # the integer product by the scales instead (not a float kernel's product).
    return getattr(layer, "_int4_block_size", None) not in (None, -1)


def _dequantized_weights(layer):
    """{variable name: float value} of a weight-only int4 layer's float twin."""
    if isinstance(layer, keras.layers.Embedding):
        return {"embeddings": embedding_table(layer, layer.compute_dtype)}
    if isinstance(layer, keras.layers.EinsumDense):
        columns, shape = layer._int4_unpacked_column_size, layer.original_kernel_shape
    else:
        columns, shape = layer._orig_output_dim, (layer._orig_input_dim, layer._orig_output_dim)
    # As Keras's sub-channel int4 call (keras/src/layers/core/dense.py, einsum_dense.py) and its
    # quantizers.dequantize_with_sz_map: (q - zero) * scale of the input row's group, in float.
    unpacked = keras.quantizers.unpack_int4(layer._kernel, columns, axis=-1)
    groups = ops.cast(layer.g_idx, "int32")
    scales = ops.take(layer.kernel_scale, groups, axis=0)
    zeros = ops.cast(ops.take(layer.kernel_zero, groups, axis=0), scales.dtype)
    kernel = ops.cast(ops.multiply(ops.subtract(unpacked, zeros), scales), layer.compute_dtype)
    values = {"kernel": ops.reshape(kernel, shape)}
    if layer.bias is not None:
        values["bias"] = layer.bias
    return values
