"""The torch engines' twins of Keras's quantized layers (`zoo quantize`, zoo.quantize): a quantized
Dense or EinsumDense for `torch_blocks.linear`, and a quantized embedding table for lookups and
`torch_blocks.tied_logits`, read from the layer's own integer weights and scales.

They compute what Keras's quantized layers compute (keras/src/layers/core/dense.py,
einsum_dense.py, embedding.py, reversible_embedding.py, with `Model.quantize`'s default settings),
so that a quantized bundle gives the same greedy text on torch as its Keras model, as on JAX and
TensorFlow, where the engines run Keras's layers themselves:

- int8 (Dense, EinsumDense and the tied output projection): the input is quantized per row to
  integers in [-127, 127] (Keras's AbsMaxQuantizer), multiplied by the int8 kernel, and the sums
  divided by both scales: y = (x_q W_q) / (s_x s_W) + b. Embedding rows: W_q / s_W.
- int4 (groups of 128 inputs with a scale and a zero point each): weight-only, y = x W + b with
  the kernel Keras dequantizes, W = (W_q - z) s, read off the layer's own call on the identity
  (and an embedding's table off its call on every token id), so that any scheme Keras uses is
  reproduced rather than re-derived.

The int8 products x_q W_q are fbgemm's int8 GEMM (`IntegerMatmul`), which reads the one-byte
weights directly: the integer sums are exact, so this is Keras's int8 x int8 -> int32 matmul
exactly, at batch 1 3.1x faster than float32 `addmm` over all the GPT-2-shaped model's layers, and
3.7x at batch 8, on the 2-core AMD EPYC CPU (MKL's float GEMV is slow there). Where fbgemm is not
there or not exact (another device, a CPU whose int8 instructions saturate, see IntegerMatmul.usable),
the integers are held as float32 and multiplied by the float GEMM: the products and their sums are
integers well inside float32's exact range (2^24), so the result is the same, at float speed.
torch's weight-only kernels were slower here: `torch.ops.aten._weight_int8pack_mm` 4-10x and
`_weight_int4pack_mm_for_cpu` 5-8x slower than float32 `addmm` at batch 1; fbgemm's dynamically
quantized linear (`linear_dynamic`) quantizes its input its own way (asymmetric, one scale for all
the rows stepped together), not Keras's.
"""

import functools
import math
import warnings

import torch

EPSILON = 1e-7  # keras.backend.epsilon(), AbsMaxQuantizer's default


def _tensor(value, dtype=None):
    value = value.value if hasattr(value, "value") else value
    value = torch.as_tensor(value).detach()
    return value if dtype is None else value.to(dtype)


def quantize_rows(x, quantizer):
    """Keras's AbsMaxQuantizer `quantizer` (value range, epsilon) on the last axis of x: (its
    integers as float32, scale (rows, 1))."""
    high = quantizer[1]
    if x.dtype != torch.float32:
        x = x.float()
    # high / (max |x| + eps), spelled as torch's `float / tensor` computes it (a reciprocal, then a
    # product), in place: at batch 1 each of a GPT's 25 products pays per operator call.
    scale = x.abs().amax(dim=-1, keepdim=True).add_(EPSILON).reciprocal_().mul_(high)
    # Keras then clips to [low, high]; that cannot bind (so is not called, one call fewer a product):
    # |x| <= max |x|, so |x * scale| <= high (1 + a few ulps) < high + 1/2, and low <= -high.
    return (x * scale).round_(), scale


def _input_quantizer(layer):
    """(low, high) of the layer's input quantizer (Keras's per-row AbsMaxQuantizer), or None when
    the layer does not quantize its input (weight-only)."""
    quantizer = getattr(layer, "inputs_quantizer", None)
    if quantizer is None:
        return None
    low, high = (float(v) for v in quantizer.value_range)
    if type(quantizer).__name__ != "AbsMaxQuantizer" or quantizer.epsilon != EPSILON or low > -high:
        raise ValueError(f"{layer.name}: input quantizer {quantizer!r} has no torch twin")
    return low, high


class IntegerMatmul:
    """x_q @ W_q for integer-valued float32 x_q (rows, inputs) in [-127, 127] and an int8 kernel
    W_q (inputs, outputs), returned as float32 sums. On a CPU with fbgemm, its int8 GEMM over the
    packed one-byte kernel: the input is quantized with scale 1 and zero point 128 (so its integers
    are kept as they are, in [1, 255]) and the kernel per output with scale 1, so the op's "dequantized"
    output is the integer sums themselves. Elsewhere the float GEMM over the integers as float32."""

    def __init__(self, kernel):
        self.packed = None
        if kernel.device.type == "cpu" and self.usable():
            self.packed = self._pack(kernel)
        else:
            self.kernel = kernel.float().contiguous()

    @staticmethod
    def _pack(kernel):
        outputs = kernel.shape[1]
        with warnings.catch_warnings():  # quantized tensors are deprecated; their kernels are what runs
            warnings.simplefilter("ignore")
            weight = torch.quantize_per_channel(kernel.T.float().contiguous(), torch.ones(outputs, dtype=torch.double),
                                                torch.zeros(outputs, dtype=torch.long), 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(weight, None)

    def __call__(self, x_q):
        if self.packed is None:
            return x_q @ self.kernel
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x_q.contiguous(), 1.0, 128, self.packed)

    @staticmethod
    @functools.cache
    def usable():
        """Whether fbgemm's int8 GEMM gives exact integer sums here: it has to exist, and on CPUs
        without AVX512-VNNI its u8 x s8 pair products saturate at 16 bits (which is why PyTorch
        quantizes activations to 7 bits there), which inputs and weights at their extremes show."""
        try:
            inputs, kernel = torch.full((2, 256), 127.0), torch.full((256, 16), 127.0)
            inputs[1, ::2], kernel[::3] = -127.0, -127.0
            got = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
                inputs, 1.0, 128, IntegerMatmul._pack(kernel))
        except (RuntimeError, AttributeError, NotImplementedError):
            return False
        return bool(torch.equal(got, inputs @ kernel))


class QuantizedLinear:
    """A quantized Dense or EinsumDense layer, called on (rows, inputs) -> (rows, outputs)."""

    def __init__(self, kernel, scale, bias, activations, dtype):
        # (inputs, outputs): the integer kernel as an IntegerMatmul when the input is quantized too,
        # else float32: the integers (a scale to divide by), or dequantized (scale None)
        self.kernel = IntegerMatmul(kernel) if activations else kernel
        self.scale = scale  # (outputs,) float32 or None
        self.bias = bias  # (outputs,) or None
        self.activations = activations  # the input quantizer's (low, high), or None: weight-only
        self.dtype = dtype

    def __call__(self, x):
        # In place on each product's fresh output: the same values, without a new tensor each.
        if self.activations:
            x_q, x_scale = quantize_rows(x, self.activations)
            sums, scale = self.kernel(x_q), x_scale * self.scale
            # sums / scale + bias in one call where there is a bias: the same values (its 1 * sums is exact)
            y = sums.div_(scale) if self.bias is None else torch.addcdiv(self.bias, sums, scale)
        else:
            y = x.float() @ self.kernel
            if self.scale is not None:
                y = y.div_(self.scale)
            if self.bias is not None:
                y = y.add_(self.bias)
        return y if y.dtype == self.dtype else y.to(self.dtype)

    @classmethod
    def of(cls, layer, input_axes, dtype):
        """The twin of a quantized keras Dense or EinsumDense; `input_axes` as Weights.dense."""
        return cls(*cls._parts(layer, input_axes), dtype)

    @classmethod
    def fused(cls, layers, dtype):
        """One twin of several quantized layers of one input (1 input axis), their outputs side by
        side (Weights.fused_dense): the kernels, scales and biases concatenated per output, so
        each output is computed as its own layer computes it."""
        parts = [cls._parts(layer, 1) for layer in layers]
        kernels, scales, biases, quantizers = zip(*parts)
        if len(set(quantizers)) > 1 or len({scale is None for scale in scales}) > 1:
            raise ValueError(f"{', '.join(layer.name for layer in layers)}: quantized alike only can be fused")
        biases = [bias if bias is not None else kernel.new_zeros(kernel.shape[1]) for kernel, bias in zip(kernels, biases)]
        scale = None if scales[0] is None else torch.cat(scales)
        return cls(torch.cat(kernels, dim=1).contiguous(), scale, torch.cat(biases), quantizers[0], dtype)

    @staticmethod
    def _parts(layer, input_axes):
        """(kernel (inputs, outputs) float32: integers, or dequantized; scale (outputs,) or None;
        bias (outputs,) or None; the input quantizer's (low, high) or None) of a quantized layer."""
        mode = layer.quantization_mode
        bias = None if layer.bias is None else _tensor(layer.bias, torch.float32).reshape(-1)
        if mode == "int8":
            kernel = _tensor(layer._kernel, torch.float32)
            scale = layer.kernel_scale
            if hasattr(layer, "equation"):  # kept in the output's layout: back to the kernel's
                scale = layer._adjust_scale_for_dequant(scale)
            kernel = kernel.reshape(math.prod(kernel.shape[:input_axes]), -1)
            scale, quantizer = _tensor(scale, torch.float32).reshape(-1), _input_quantizer(layer)
            if quantizer is None and hasattr(layer, "equation"):  # weight-only: Keras dequantizes first on torch
                return (kernel / scale).contiguous(), None, bias, None
            return kernel.contiguous(), scale, bias, quantizer
        if mode == "int4":  # weight-only: the float kernel Keras dequantizes, read off its own call
            return _probed_kernel(layer, input_axes, bias), None, bias, None
        raise ValueError(f"{layer.name}: quantization {mode!r} has no torch twin")


def _probed_kernel(layer, input_axes, bias):
    """The float (inputs, outputs) kernel a weight-only quantized layer multiplies its input by,
    as Keras's own call dequantizes it (its int4 scheme: groups of 128 inputs, scales and zero
    points), read by calling it on the identity: row i of the output is the kernel's row i. The
    layer's activation (keras-hub's feed-forward Dense carries one) is left out of that call: the
    engines apply it after the product."""
    if hasattr(layer, "equation"):  # (1, inputs, *input axes): a batch of one sequence of `inputs` tokens
        input_shape = tuple(layer.original_kernel_shape)[:input_axes]
        inputs = math.prod(input_shape)
        eye = torch.eye(inputs).reshape(1, inputs, *input_shape)
    else:
        inputs = layer._orig_input_dim
        eye = torch.eye(inputs)
    activation, layer.activation = layer.activation, None  # Dense's and EinsumDense's call skip None
    try:
        with torch.no_grad():
            kernel = _tensor(layer(eye), torch.float32).reshape(inputs, -1)
    finally:
        layer.activation = activation
    return (kernel if bias is None else kernel - bias).contiguous()


class QuantizedTable:
    """A quantized (Reversible)Embedding's table: rows looked up as Keras's quantized call gives
    them, and tied logits as its quantized `reverse` call (`logits`). Has `device` and `dtype`, as
    the table tensor of a float model.

    int8: the integers and a scale per row: lookups are integers over their row's scale, logits
    (x_q E_qᵀ) / (s_x s_E). int4 (groups of 128 with zero points): the table Keras dequantizes,
    read off its own call on every token id, and logits (x_q Eᵀ) / s_x."""

    def __init__(self, values, scale, table, reversible, quantize_inputs, dtype):
        self.values, self.scale = values, scale  # int8: (vocab, dim) integer values and (vocab,) scales
        self.table = table  # int4: (vocab, dim) the dequantized table
        self.reversible = reversible  # a ReversibleEmbedding (its own quantized reverse call)
        self.quantize_inputs = quantize_inputs  # its reverse call's input quantizer (low, high), or None
        self.dtype, self.device = dtype, (values if table is None else table).device
        # int8 logits of a quantized input: x_q E_qᵀ by the integer GEMM (vocab outputs)
        self.integer_logits = IntegerMatmul(values.T) if values is not None and reversible and quantize_inputs else None

    def __getitem__(self, tokens):
        if self.table is not None:
            return self.table[tokens].to(self.dtype)
        return (self.values[tokens] / self.scale[tokens, None]).to(self.dtype)

    def logits(self, x):
        """Float32 NumPy logits (rows, vocab) of hidden states x (rows, dim), computed as
        table @ x.T (see torch_blocks.tied_logits)."""
        if self.quantize_inputs is None:
            x_q, x_scale = x.float(), 1.0
        else:
            x_q, x_scale = quantize_rows(x, self.quantize_inputs)
        if self.table is not None:
            logits = (self.table @ x_q.T).T / x_scale
        elif self.integer_logits is not None:
            logits = self.integer_logits(x_q) / (x_scale * self.scale)
        elif self.reversible:
            logits = (self.values @ x_q.T).T / (x_scale * self.scale)
        else:  # a plain Embedding has no quantized reverse: its table dequantized (zoo.layers.quantized)
            logits = ((self.values / self.scale[:, None]) @ x_q.T).T
        return logits.float().cpu().numpy()

    @classmethod
    def of(cls, layer, dtype):
        mode, reversible = layer.quantization_mode, hasattr(layer, "tie_weights")
        if reversible and not layer.tie_weights:
            raise ValueError(f"{layer.name}: an untied quantized ReversibleEmbedding has no torch twin")
        quantizer = _input_quantizer(layer) if reversible else None
        if mode == "int8":
            values = _tensor(layer._embeddings, torch.float32).contiguous()
            scale = _tensor(layer.embeddings_scale, torch.float32).reshape(-1)
            return cls(values, scale, None, reversible, quantizer, dtype)
        if mode == "int4":
            with torch.no_grad():
                table = _tensor(layer(torch.arange(layer.input_dim, dtype=torch.int32)), torch.float32)
            return cls(None, None, table.contiguous(), reversible, quantizer, dtype)
        raise ValueError(f"{layer.name}: quantization {mode!r} has no torch twin")
