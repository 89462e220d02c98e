"""How the plain-torch engines read a Keras model's weights (`Weights`), and the float32 products
they multiply on the CPU through a packed copy of the kernel (oneDNN's or MKL's) where that is
measured faster (`PackedLinear`). The math those weights go into is zoo.layers.torch_blocks'; a
quantized layer's weights are read by zoo.layers.torch_quantized."""

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
        None where no packed way is available. `variables`: weight and bias are the variables' own
        tensors, which `settle` watches once it copies them; else a copy whose sources are watched."""
        if (weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.numel() < PackedLinear.MIN_SIZE
                or not PackedLinear.packed_ways()):
            return None
        self._products.append(PackedLinear(weight, bias, variables))
        return self._products[-1]

    def settle(self):
        """Sets the way each PackedLinear made multiplies one row and more (PackedLinear.ways),
        keeping the packed copies those ways read (remembered, so that `stale()` sees training
        change their sources) and dropping the others."""
        ways = PackedLinear.ways(self._products) if self._products else []
        for product, (one_row, more_rows) in zip(self._products, ways):
            product.use(one_row, more_rows)
            if product.copies and product.variables:
                for variable_tensor in (product.weight, product.bias):
                    if variable_tensor is not None:
                        self._copies.append((variable_tensor, variable_tensor._version))

    def norm(self, layer):
        """A LayerNormalization as (gamma, beta, epsilon), in float32 as Keras computes it."""
        return self.tensor(layer.gamma, torch.float32), self.tensor(layer.beta, torch.float32), layer.epsilon

    def stale(self):
        """Whether a variable copied (cast) has changed since it was read."""
        return any(value._version != version for value, version in self._copies)


ADDMM, ONEDNN, MKL = "addmm", "oneDNN", "MKL"  # the ways a PackedLinear multiplies


class PackedLinear:
    """Dense's x @ weight.T + bias on the CPU through whichever library multiplies that kernel
    fastest on this CPU, as measured: MKL's `addmm` on the variable's own tensor (ADDMM; a tied
    output as `tied_logits` does); oneDNN over a copy reordered once into its blocked layout
    (ONEDNN, `torch.ops.mkldnn._reorder_linear_weight`); or MKL's GEMM over a copy packed once by
    `cblas_sgemm_pack` (MKL, `torch.ops.mkl._mkl_reorder_linear_weight`, inductor's float32 CPU
    linear). One way for a single row (`one_row`: batch-1 decoding) and one for more
    (`more_rows`: batches, speculative checks, prefill). The packed ops are private torch ops:
    one that is missing, or computes wrongly here, is not a candidate (`packed_ways`).

    Why: a decode step is a chain of products of a few rows bound by reading the weights, and
    which library reads a kernel faster depends on the CPU, the kernel's shape and the rows. On a
    2-core AMD EPYC MKL's float32 `addmm` read them at 15 GB/s where XLA reached 30: the products of
    one step of decode_speed.py's model took 2.38 ms oneDNN-packed against addmm's 3.62 at 1 row,
    2.56 against 6.78 at 8 (benchmarks/matvec_libraries.py; oneDNN unpacked: 2.61 and 4.55). On a
    2-core Intel Xeon with AMX, the same products (matvec_libraries.py): 1 row 1.17 ms with addmm,
    1.13 MKL-packed, 1.54 oneDNN-packed; 4 rows 1.65, 1.32, 1.61; 8 rows 1.76, 1.43, 1.96 (MKL's
    packed B spares its GEMM the per-call packing that makes a 4-row addmm 1.4x a one-row one;
    whole batch-8 decoding ran 1.08-1.18x faster than with oneDNN's tied output alone). So each
    product's way is measured, once per process and set of kernel shapes, on the model's own
    products called as a decode step calls them, at the rows of MEASURED_AT (`ways`); `PACK`
    forces a way. A packed way is taken only when clearly faster (CLEARLY_FASTER). A packed copy
    costs its float32 size again in memory (MKL's buffer is allocated larger but only that much of
    it is written); a product may keep two (one per way).

    MKL describes a packed B by its own dimensions (k x n, its reference for ?gemm_pack; the
    buffer's size does not depend on the rows m), so one copy serves every row count; torch's
    `_mkl_linear` multiplies packed only when the rows equal the count it is passed, so it is
    passed each call's rows (`packed_ways` checks results at row counts other than the packing's).
    Beyond MKL_MAX_ROWS rows (a long prompt's prefill) an MKL product takes addmm: at 100 rows
    GPT-2's 8192 x 384 tied output took 3.1 ms packed against addmm's 2.2.

    A packed call costs more than `addmm` (oneDNN about 15 us), which is more than a small product
    takes: a kernel below MIN_SIZE weights (1 MiB of float32: a width of 128, a nano draft's, is
    6.6 us with addmm against 18.7 oneDNN-packed at 1 row; MKL-packed, within 1 us of addmm) stays
    with addmm.
    """

    ROWS = 8  # the rows oneDNN's layout is chosen for (within 10% of the best at 1-256, AMD); MKL's B ignores it
    MEASURED_AT = (1, 4)  # rows: a single one, and more (a speculative check of 3 proposals, a batch)
    MKL_MAX_ROWS = 32
    MIN_SIZE = 1 << 18  # weights; at 1 row 384 x 1152 was 37 us with addmm, 34 packed; 256 x 1024: 23 and 26
    PACK = None  # a way taken at every row count; None: as measured (`ways`)
    _packed_ways = None
    _measured = {}  # the products' shapes -> each one's (one_row, more_rows)

    def __init__(self, weight, bias, variables=True):
        self.weight, self.bias = weight, bias  # (outputs, inputs), (outputs,) or None
        self.variables = variables  # whether weight and bias are the variables' own tensors, or a copy
        self.kernel = weight.T  # (inputs, outputs), a view kept: `.T` at every call is an operator call
        self.copies = {}  # a packed way -> its copy of the weight
        self.one_row = self.more_rows = ADDMM

    def pack(self, way):
        if way != ADDMM and way not in self.copies:
            weight = self.weight.contiguous()
            self.copies[way] = (torch.ops.mkldnn._reorder_linear_weight(weight, self.ROWS) if way == ONEDNN
                                else torch.ops.mkl._mkl_reorder_linear_weight(weight, self.ROWS))

    def use(self, one_row, more_rows):
        """Multiplies a single row by way `one_row` and more by `more_rows`, keeping only the packed
        copies they read."""
        self.pack(one_row)
        self.pack(more_rows)
        self.copies = {way: copy for way, copy in self.copies.items() if way in (one_row, more_rows)}
        self.one_row, self.more_rows = one_row, more_rows

    @classmethod
    def packed_ways(cls):
        """The packed ways this torch build and CPU have: each must give exact results on a small
        integer product at 1, 3 and 9 rows (MKL's copy is packed for ROWS)."""
        if cls._packed_ways is None:
            weight, bias = torch.arange(12.0).reshape(4, 3), torch.arange(4.0)
            cls._packed_ways = []
            for way in (ONEDNN, MKL):
                try:
                    probe = cls(weight, bias)
                    probe.use(way, way)
                    if all(torch.equal(probe(x), torch.addmm(bias, x, weight.T))
                           for x in (torch.ones(rows, 3) for rows in (1, 3, 9))):
                        cls._packed_ways.append(way)
                except (AttributeError, RuntimeError):  # not in this build, or not on this CPU
                    pass
        return cls._packed_ways

    @classmethod
    def ways(cls, products):
        """For each of `products` (a model's PackedLinears), its (one_row, more_rows) ways: the
        fastest at MEASURED_AT's rows, measured once per set of the products' shapes (`fastest_ways`);
        `PACK` overrides."""
        if cls.PACK is not None:
            return [(cls.PACK, cls.PACK)] * len(products)
        shapes = tuple((tuple(product.weight.shape), product.bias is None) for product in products)
        if shapes not in cls._measured:
            one, more = (fastest_ways(products, rows, cls.packed_ways()) for rows in cls.MEASURED_AT)
            cls._measured[shapes] = list(zip(one, more))
        return cls._measured[shapes]

    def __call__(self, x):
        rows = x.shape[0]
        way = self.one_row if rows == 1 else self.more_rows
        if way == ADDMM or (way == MKL and rows > self.MKL_MAX_ROWS):
            if self.bias is None:  # a tied output: weight @ x.T, see tied_logits
                return (self.weight @ x.T).T
            return torch.addmm(self.bias, x, self.kernel)
        if way == MKL:
            return torch.ops.mkl._mkl_linear(x, self.copies[MKL], self.weight, self.bias, rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.copies[ONEDNN], self.bias, "none", [], "")

    def logits(self, x):
        """As a tied output projection: float32 NumPy logits (see tied_logits)."""
        return self(x).float().cpu().numpy()


# A packed way must take less than this much of addmm's time, one call measured among the others.
# oneDNN: a kernel measured a little faster packed made whole steps slower: on the Xeon, GPT-2's
# MLP input kernels packed at 0.92-0.98 of addmm's time one call at a time, and steps of 4 and 8
# rows with them packed took 1.09-1.17x as long as without (the tied output, at 0.58-0.60, pays).
# MKL's packed GEMM runs on addmm's own threads and code, and whole steps followed the calls: with
# every 4-row kernel of GPT-2's shape on it (0.81-0.95 of addmm's time each, the tied output 0.55)
# steps of 4 and 8 rows ran 1-3% faster than with those under 0.8 alone; a tie (1 row) stays addmm.
CLEARLY_FASTER = {ONEDNN: 0.8, MKL: 0.95}


def fastest_ways(products, rows, packed_ways, rounds=2, passes=10):
    """For each of `products` (PackedLinears: a decode step's products, the model's whole working
    set, so that caches hold what they hold in a real step), the fastest way at `rows` rows: the
    fastest of `packed_ways` that take under their CLEARLY_FASTER of addmm's time, else ADDMM. Each
    call is timed within passes over them all in order, each product's best call compared. Packs
    the products in every packed way (for the measurement's time, copies of twice the kernels'
    size; `Weights.settle` keeps those the chosen ways read) and leaves them on addmm. Each way
    runs 2 x `passes` passes in a row, as a decoder would, and only the second half counts: after a
    switch a pass got faster for several passes (on the Xeon the first took up to twice the steady
    time, and switching at every pass chose wrongly), in turn for `rounds` rounds. About 0.1 s a
    way and row count for decode_speed.py's GPT-2-shaped model (56 MB of float32 kernels).
    Measured as the machine is at the time: MKL's threads lose most when other processes take the
    cores (with two busy beside on the Xeon, 8-row products took 7.9 ms with addmm against 2.2-2.6
    oneDNN-packed), so a busy machine packs more."""
    for product in products:
        for way in packed_ways:
            product.pack(way)
    best = {way: [math.inf] * len(products) for way in (ADDMM, *packed_ways)}
    with torch.inference_mode():
        inputs = {n: torch.randn(rows, n) for n in {product.weight.shape[1] for product in products}}
        calls = [functools.partial(product, inputs[product.weight.shape[1]]) for product in products]
        for _ in range(rounds):
            for way, seconds in best.items():
                for product in products:
                    product.one_row = product.more_rows = way
                for timed in [call_seconds(calls) for _ in range(2 * passes)][passes:]:  # the first warm up
                    seconds[:] = [min(pair) for pair in zip(seconds, timed)]
    for product in products:
        product.one_row = product.more_rows = ADDMM
    chosen = []
    for i in range(len(products)):
        clearly = [way for way in packed_ways if best[way][i] < CLEARLY_FASTER[way] * best[ADDMM][i]]
        chosen.append(min(clearly, key=lambda way: best[way][i], default=ADDMM))
    return chosen


def call_seconds(calls):
    """The wall seconds of each of `calls`, called once each in order."""
    seconds = []
    for call in calls:
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds
