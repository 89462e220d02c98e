"""How the plain-torch engines read a Keras model's weights (`Weights`), and the float32 products
they multiply on the CPU through oneDNN's packed layout where that is measured faster
(`PackedLinear`). The math those weights go into is zoo.layers.torch_blocks'; a quantized layer's
weights are read by zoo.layers.torch_quantized."""

import functools
import math
import time

import torch


class Weights:
    """Reads a model's Keras variables as torch tensors in the compute dtype: the one way every
    torch engine reads weights.

    A variable already in that dtype is read as its own tensor (no copy, so training's in-place
    updates are seen); under mixed precision (float32 variables, a 16-bit compute dtype) a cast
    copy is taken, and so is a packed copy of a float32 kernel on the CPU (PackedLinear, which
    `settle` packs): `stale()` tells when a variable copied has changed since (the engine then
    reads its weights again). An engine calls `settle()` once it has read every weight.
    """

    def __init__(self, model):
        self.dtype = getattr(torch, model.dtype_policy.compute_dtype)
        self._copies = []  # (the variable's tensor, its version when copied)
        self._products = []  # the PackedLinears made, for `settle`

    def tensor(self, variable, dtype=None, copied=False):
        """`copied`: the caller copies the tensor, so it is watched whatever its dtype."""
        value = variable.value.detach()  # shares the storage and its version counter
        dtype = dtype or self.dtype
        if value.dtype == dtype and not copied:
            return value
        self._copies.append((value, value._version))
        return value.to(dtype)

    def dense(self, layer, input_axes=1):
        """A Dense or EinsumDense layer as (kernel (inputs, outputs), bias (outputs,)), for `linear`:
        an EinsumDense's kernel has its `input_axes` input axes first (a MultiHeadAttention's
        projections: (hidden, heads, head_dim), 1 input axis; its output: (heads, head_dim,
        hidden), 2). A quantized layer (`zoo quantize`) as its torch twin, a callable
        (zoo.layers.torch_quantized.QuantizedLinear)."""
        if getattr(layer, "quantization_mode", None):
            from zoo.layers.torch_quantized import QuantizedLinear

            return QuantizedLinear.of(layer, input_axes, self.dtype)
        kernel = self.tensor(layer.kernel)
        kernel, bias = kernel.reshape(math.prod(kernel.shape[:input_axes]), -1), self.tensor(layer.bias).reshape(-1)
        return self._packed(kernel.T, bias) or (kernel, bias)

    def fused_dense(self, layers):
        """Dense or EinsumDense layers of one input (1 input axis: a decoder's query, key and value
        projections) as one `linear` whose output is theirs side by side: one product a step
        instead of three, and for int8 one quantization of the input, which Keras makes alike in
        each layer. Float kernels are concatenated into a copy, which `stale()` watches."""
        if any(getattr(layer, "quantization_mode", None) for layer in layers):
            from zoo.layers.torch_quantized import QuantizedLinear

            return QuantizedLinear.fused(layers, self.dtype)
        kernels, biases = [], []
        for layer in layers:
            kernel = self.tensor(layer.kernel, copied=True)
            kernels.append(kernel.reshape(kernel.shape[0], -1))
            biases.append(self.tensor(layer.bias, copied=True).reshape(-1) if layer.bias is not None
                          else kernel.new_zeros(kernels[-1].shape[1]))  # x + 0 is x
        kernel, bias = torch.cat(kernels, dim=1), torch.cat(biases)
        return self._packed(kernel.T, bias, variables=False) or (kernel, bias)

    def embedding(self, layer):
        """An Embedding's table (vocab, dim), for lookups (`table[tokens]`) and `tied_logits`; of a
        quantized layer, its torch twin (zoo.layers.torch_quantized.QuantizedTable)."""
        if getattr(layer, "quantization_mode", None):
            from zoo.layers.torch_quantized import QuantizedTable

            return QuantizedTable.of(layer, self.dtype)
        return self.tensor(layer.embeddings)

    def tied_output(self, layer):
        """An Embedding's output projection (x @ table.T), for `tied_logits`: the table packed for
        oneDNN where it can be (see PackedLinear), else what `embedding` gives."""
        table = self.embedding(layer)
        return (isinstance(table, torch.Tensor) and self._packed(table, None)) or table

    def _packed(self, weight, bias, variables=True):
        """A PackedLinear of a float32 CPU weight (outputs, inputs), packed (or not) by `settle`;
        None where oneDNN cannot take it. `variables`: weight and bias are the variables' own
        tensors, which `settle` watches once it copies them; else a copy whose sources are watched."""
        if (weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.numel() < PackedLinear.MIN_SIZE
                or not PackedLinear.available()):
            return None
        self._products.append(PackedLinear(weight, bias, variables))
        return self._products[-1]

    def settle(self):
        """Sets from how many rows on each PackedLinear made multiplies packed
        (PackedLinear.packed_from_rows), packing those that ever do (a packed copy, remembered so
        that `stale()` sees training change it) and dropping the copies of those that never do."""
        rows = PackedLinear.packed_from_rows(self._products) if self._products else []
        for product, packed_from in zip(self._products, rows):
            product.packed_from = packed_from
            if packed_from == math.inf:
                product.packed = None
                continue
            if product.packed is None:
                product.pack()
            for variable_tensor in (product.weight, product.bias):
                if variable_tensor is not None and product.variables:
                    self._copies.append((variable_tensor, variable_tensor._version))

    def norm(self, layer):
        """A LayerNormalization as (gamma, beta, epsilon), in float32 as Keras computes it."""
        return self.tensor(layer.gamma, torch.float32), self.tensor(layer.beta, torch.float32), layer.epsilon

    def stale(self):
        """Whether a variable copied (cast) has changed since it was read."""
        return any(value._version != version for value, version in self._copies)


class PackedLinear:
    """Dense's x @ weight.T + bias on the CPU through oneDNN, over a copy of the weight reordered
    once into oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`, what inductor's
    CPU linear fusion uses; private, so its absence falls back to `addmm`), from `packed_from`
    rows on; below, `addmm` on the variable's own tensor (a tied output as `tied_logits` does).

    Why: a decode step is a chain of products of a few rows bound by reading the weights, and
    which library reads a kernel faster depends on the CPU, the kernel's shape and the rows. On a
    2-core AMD EPYC MKL's float32 `addmm` read them at 15 GB/s where XLA reached 30: the products of
    one step of decode_speed.py's model took 2.38 ms packed against addmm's 3.62 at 1 row, 2.56
    against 6.78 at 8 (benchmarks/matvec_libraries.py; oneDNN unpacked: 2.61 and 4.55). On a 2-core
    Intel Xeon with AMX addmm won at 1 row (0.97 ms against 1.35 packed), and at 4-8 rows it
    depended on the kernel: among a decode step's products, as measured here, only GPT-2's 8192 x
    384 tied output was faster packed (one call at a time, an 8192 x 384 product took 267 us
    packed against 434 at 4 rows, and a 384 x 1152 one 29 against 51, but not so among the
    others). Whole steps agreed: with the tied output alone packed from 4 rows, batch 8 ran 1.14x
    faster than with nothing packed, and a 65-token vocabulary's batch 4 ran 1.19x faster with
    nothing packed than with everything. So each product's way is measured, once per process and
    set of kernel shapes, on the model's own products called as a decode step calls them, at 1 row
    and at PACKED_FROM rows (`packed_from_rows`); `PACK` forces either way. The layout is chosen
    for 8 rows, within 10% of the best layout measured at every row count from 1 to 256 (AMD). A
    packed kernel costs a second copy of its float32 weights beside the model's own.

    A oneDNN call costs about 15 us more than `addmm`, which is more than a small product takes:
    a kernel below MIN_SIZE weights (1 MiB of float32: a width of 128, a nano draft's, is 6.6 us
    with addmm against 18.7 packed at 1 row) stays with addmm.
    """

    ROWS = 8  # the rows the blocked layout is chosen for
    PACKED_FROM = 4  # rows: the second row count measured (speculative checks of 3 proposals, batches)
    MIN_SIZE = 1 << 18  # weights; at 1 row 384 x 1152 was 37 us with addmm, 34 packed; 256 x 1024: 23 and 26
    PACK = None  # True / False: packed at every row count / at none; None: as measured (`packed_from_rows`)
    _available = None
    _measured = {}  # the products' shapes -> each one's packed_from

    def __init__(self, weight, bias, variables=True):
        self.weight, self.bias = weight, bias  # (outputs, inputs), (outputs,) or None
        self.variables = variables  # whether weight and bias are the variables' own tensors, or a copy
        self.kernel = weight.T  # (inputs, outputs), a view kept: `.T` at every call is an operator call
        self.packed = None  # oneDNN's blocked copy of the weight, once packed
        self.packed_from = math.inf  # from how many rows on the packed copy multiplies

    def pack(self):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.contiguous(), self.ROWS)

    @classmethod
    def available(cls):
        if cls._available is None:
            try:
                probe = cls(torch.ones(2, 3), torch.zeros(2))
                probe.pack()
                probe.packed_from = 1
                cls._available = bool(torch.equal(probe(torch.ones(1, 3)), torch.full((1, 2), 3.0)))
            except (AttributeError, RuntimeError):  # no oneDNN in this build, or not this CPU
                cls._available = False
        return cls._available

    @classmethod
    def packed_from_rows(cls, products):
        """For each of `products` (a model's PackedLinears), from how many rows on it multiplies
        packed: 1 where packing is faster at 1 row, else PACKED_FROM where it is faster at that
        many, else never (math.inf); measured once per set of the products' shapes, and `PACK`
        overrides (True: 1, False: never)."""
        if cls.PACK is not None:
            return [1 if cls.PACK else math.inf] * len(products)
        shapes = tuple((tuple(product.weight.shape), product.bias is None) for product in products)
        if shapes not in cls._measured:
            at_one, at_more = packing_is_faster(products, 1), packing_is_faster(products, cls.PACKED_FROM)
            cls._measured[shapes] = [1 if one else cls.PACKED_FROM if more else math.inf
                                     for one, more in zip(at_one, at_more)]
        return cls._measured[shapes]

    def __call__(self, x):
        if x.shape[0] >= self.packed_from:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.bias is None:  # a tied output: weight @ x.T, see tied_logits
            return (self.weight @ x.T).T
        return torch.addmm(self.bias, x, self.kernel)

    def logits(self, x):
        """As a tied output projection: float32 NumPy logits (see tied_logits)."""
        return self(x).float().cpu().numpy()


# Packed must take less than this much of addmm's time, one call measured among the others. A kernel
# measured a little faster packed made whole steps slower: on the Xeon, GPT-2's MLP input kernels
# packed at 0.92-0.98 of addmm's time one call at a time, and steps of 4 and 8 rows with them
# packed took 1.09-1.17x as long as without (the tied output, at 0.58-0.60, pays).
CLEARLY_FASTER = 0.8


def packing_is_faster(products, rows, rounds=2, passes=10):
    """For each of `products` (PackedLinears: a decode step's products, the model's whole working
    set, so that caches hold what they hold in a real step), whether it is faster packed than with
    addmm at `rows` rows (by CLEARLY_FASTER), each call timed within passes over them all in order;
    compares each product's best call (below). Packs the products (copies that `Weights.settle`
    keeps or drops) and leaves them multiplying unpacked. Each way runs 2 x `passes` passes in a
    row, as a decoder would, and only the second half counts: after a switch a pass got faster for
    several passes (on the Xeon the first took up to twice the steady time, and switching at every
    pass chose wrongly), in turn for `rounds` rounds. About 0.15 s a row count for decode_speed.py's
    GPT-2-shaped model (56 MB of float32 kernels). Measured as the machine is at the time: MKL's
    threads lose most when other processes take the cores (with two busy beside on the Xeon, 8-row
    products took 7.9 ms with addmm against 2.2-2.6 packed), so a busy machine packs more."""
    for product in products:
        if product.packed is None:
            product.pack()
    best = [[math.inf] * len(products), [math.inf] * len(products)]  # unpacked, packed
    with torch.inference_mode():
        inputs = {n: torch.randn(rows, n) for n in {product.weight.shape[1] for product in products}}
        calls = [functools.partial(product, inputs[product.weight.shape[1]]) for product in products]
        for _ in range(rounds):
            for way in (0, 1):
                for product in products:
                    product.packed_from = 1 if way else math.inf
                for timed in [call_seconds(calls) for _ in range(2 * passes)][passes:]:  # the first warm up
                    best[way] = [min(pair) for pair in zip(best[way], timed)]
    for product in products:
        product.packed_from = math.inf
    return [packed < CLEARLY_FASTER * unpacked for unpacked, packed in zip(*best)]


def call_seconds(calls):
    """The wall seconds of each of `calls`, called once each in order."""
    seconds = []
    for call in calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds
