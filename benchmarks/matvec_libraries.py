"""Where batch-1 decoding's time goes on a CPU: the matrix-vector products of one GPT-2-shaped
decode step (every layer's kernels and the tied output projection, 56 MB of float32) through each
library the backends call, side by side in one process, and the bandwidth each reaches.

    python benchmarks/matvec_libraries.py [--rows 1] [--repeats 200]

Rows: XLA (what the JAX engine's compiled step runs, all products in one call), NumPy's BLAS
(OpenBLAS in the wheels), torch's `addmm` (MKL in the x86 wheels; what the torch engine's float32
step runs), torch's oneDNN linear (`torch.ops.mkldnn._linear_pointwise`), unpacked and over kernels
packed for it, MKL's GEMM over kernels packed for it (`torch.ops.mkl._mkl_linear`), and the int8
products the torch engine runs for an int8 bundle (fbgemm, zoo.layers.torch_quantized.IntegerMatmul,
one byte a weight, Keras's per-row input quantization included). Needs jax and torch; TensorFlow is
not imported.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

# (inputs, outputs) of each product of benchmarks/decode_speed.py's model: per layer qkv, attention
# output, MLP in and out; then the tied output projection (vocabulary 8192).
SHAPES = [(384, 1152), (384, 384), (384, 1536), (1536, 384)] * 6 + [(384, 8192)]


def per_call_ms(fn, repeats):
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def runners(kernels, rows):
    import jax
    import jax.numpy as jnp
    import torch

    from zoo.layers.torch_quantized import IntegerMatmul, quantize_rows

    rng = np.random.default_rng(1)
    inputs = {n: rng.standard_normal((rows, n)).astype("float32") for n in (384, 1536)}
    runs = {}

    device_kernels = [jnp.asarray(k) for k in kernels]
    device_inputs = {n: jnp.asarray(x) for n, x in inputs.items()}

    @jax.jit
    def xla(inputs, kernels):
        return [inputs[k.shape[0]] @ k for k in kernels]

    runs["XLA (jax.jit, one call)"] = lambda: jax.block_until_ready(xla(device_inputs, device_kernels))
    runs["NumPy BLAS"] = lambda: [inputs[k.shape[0]] @ k for k in kernels]

    torch_kernels = [torch.from_numpy(k) for k in kernels]
    torch_inputs = {n: torch.from_numpy(x) for n, x in inputs.items()}
    biases = [torch.zeros(k.shape[1]) for k in kernels]
    transposed = [k.T.contiguous() for k in torch_kernels]  # (outputs, inputs), as torch's linear takes it
    runs["torch addmm (float32 engine)"] = lambda: [torch.addmm(b, torch_inputs[k.shape[0]], k)
                                                    for k, b in zip(torch_kernels, biases)]
    runs["torch oneDNN linear"] = lambda: [torch.ops.mkldnn._linear_pointwise(torch_inputs[k.shape[1]], k, b, "none",
                                                                             [], "")
                                           for k, b in zip(transposed, biases)]
    # The same, over kernels reordered once into oneDNN's blocked layout for this many rows.
    packed = [torch.ops.mkldnn._reorder_linear_weight(k, rows) for k in transposed]
    runs["torch oneDNN linear, packed"] = lambda: [
        torch.ops.mkldnn._linear_pointwise(torch_inputs[k.shape[1]], p, b, "none", [], "")
        for k, p, b in zip(transposed, packed, biases)]
    # MKL's GEMM over kernels packed once by cblas_sgemm_pack (one copy serves any rows: see
    # zoo.layers.torch_weights.PackedLinear).
    mkl_packed = [torch.ops.mkl._mkl_reorder_linear_weight(k, rows) for k in transposed]
    runs["torch MKL, packed"] = lambda: [torch.ops.mkl._mkl_linear(torch_inputs[k.shape[1]], p, k, b, rows)
                                         for k, p, b in zip(transposed, mkl_packed, biases)]
    integers = [IntegerMatmul(torch.from_numpy(np.round(k * 127 / np.abs(k).max(0)))) for k in kernels]

    def int8():
        for matmul, kernel in zip(integers, kernels):
            x_q, scale = quantize_rows(torch_inputs[kernel.shape[0]], (-127.0, 127.0))
            matmul(x_q) / scale

    runs["torch int8 (int8 engine: fbgemm)" if integers[0].packed is not None else "torch int8 (float GEMM)"] = int8
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1, help="tokens multiplied at once (the batch)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="the rows are timed in turn, this many times; best kept")
    args = parser.parse_args()
    import torch

    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    kernels = [rng.standard_normal(shape).astype("float32") for shape in SHAPES]
    megabytes = sum(k.nbytes for k in kernels) / 1e6
    runs = runners(kernels, args.rows)
    best = {name: float("inf") for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            best[name] = min(best[name], per_call_ms(run, args.repeats))
    print(f"{len(SHAPES)} products, {megabytes:.1f} MB of float32 kernels, {args.rows} row(s), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), best of {args.rounds} rounds of {args.repeats}")
    print("\n| library | ms per step | GB/s of float32 weights | vs XLA |")
    print("| --- | --- | --- | --- |")
    xla = next(iter(best.values()))
    for name, ms in best.items():
        print(f"| {name} | {ms:.2f} | {megabytes / ms:.1f} | {xla / ms:.2f}x |")


if __name__ == "__main__":
    main()
