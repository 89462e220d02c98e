"""`zoo quantize`: a bundle whose weights are 8-bit or 4-bit integers, by Keras's own quantization.

`quantize_model(model, mode)` (zoo.layers.quantized) is Keras's `Model.quantize(mode)` with its default settings for
the mode, on every Dense, EinsumDense and Embedding layer of any family's model (keras-hub's
ReversibleEmbedding, a subclass Keras's type check would skip, included; LayerNorms, position
tables and an LSTM's recurrent kernels keep their float weights):

- "int8": each kernel as int8 with one float scale per output unit (abs-max, symmetric), and the
  layer's input quantized per token to int8 at every call (dynamic, abs-max): the matmul is
  int8 x int8 with int32 sums. An embedding table: int8 rows with a scale per row; the tied
  output projection (ReversibleEmbedding's reverse call) quantizes its input as a Dense does.
- "int4": kernels as 4-bit integers, two to a byte, in groups of 128 inputs with a scale and a
  zero point each (Keras's default `Int4QuantizationConfig`); weight-only: inputs stay float,
  the kernel is dequantized in the call.

A quantized bundle is an ordinary bundle whose zoo.json has `"quantization": MODE` (format 3):
loading builds the model, quantizes it the same way and loads the weights into the quantized
variables (zoo.bundle.load_bundle), which is how Keras loads the weights of a quantized model.
Speed: see the README (int8: the engines' integer products; int4: on a CPU every engine multiplies
the kernels dequantized once, zoo.layers.quantized.inference_model and zoo.layers.torch_quantized).
"""

import dataclasses
import shutil
import time
from pathlib import Path

from zoo.configs import QUANTIZATION_MODES
from zoo.errors import ZooError
from zoo.layers.quantized import quantize_model


def bundle_bytes(path):
    """(bytes of the weights file, bytes of every file) of a bundle directory."""
    path = Path(path)
    files = [file for file in path.rglob("*") if file.is_file()]
    weights = path / "model.weights.h5"
    return (weights.stat().st_size if weights.is_file() else 0), sum(file.stat().st_size for file in files)


@dataclasses.dataclass
class QuantizeResult:
    out: Path
    mode: str
    layers: int  # layers quantized
    weights_bytes: tuple  # (the source's model.weights.h5, the quantized one's)
    bundle_bytes: tuple  # (every file of the source, of the quantized bundle)
    seconds: float

    def summary(self):
        (w0, w1), (b0, b1) = self.weights_bytes, self.bundle_bytes
        return (f"wrote {self.out}: {self.mode}, {self.layers} layers quantized; weights {_mb(w0)} -> {_mb(w1)} "
                f"({w1 / w0:.2f}x), bundle {_mb(b0)} -> {_mb(b1)} ({b1 / b0:.2f}x) in {self.seconds:.1f}s")

    def to_dict(self):
        return {"out": str(self.out), "mode": self.mode, "layers": self.layers,
                "weights_bytes": list(self.weights_bytes), "bundle_bytes": list(self.bundle_bytes),
                "seconds": round(self.seconds, 3)}


def _mb(size):
    return f"{size / 1e6:.2f} MB"


def quantize_bundle(source, out, mode, force=False):
    """Writes the `mode` quantization of the bundle at `source` to `out` atomically (as
    `zoo.bundle.write_bundle`: checksums and all); returns a QuantizeResult. A ZooError, before
    anything loads, for an unknown mode, a source that is not a float bundle, or an existing
    `out` (without `force`)."""
    from zoo.atomic import refuse_existing
    from zoo.bundle import is_bundle, is_run, load_bundle, write_bundle
    from zoo.configs import read_bundle_info
    from zoo.tokenizers import is_tokenizer_directory

    source, out = Path(source), Path(out)
    if mode not in QUANTIZATION_MODES:
        raise ZooError(f"--mode {mode}: choose one of {', '.join(QUANTIZATION_MODES)}")
    if not is_bundle(source):
        hint = " (export it first: zoo export RUN --out BUNDLE)" if is_run(source) else ""
        raise ZooError(f"{source}: not a bundle (no zoo.json){hint}")
    info = read_bundle_info(source)
    if info.quantization:
        raise ZooError(f"{source}: is already quantized ({info.quantization}); quantize the float bundle it was "
                       "made from")
    if out.resolve() == source.resolve():
        raise ZooError(f"--out {out}: is the source bundle; write the quantized bundle beside it")
    refuse_existing(out, force)
    start = time.perf_counter()
    model, tokenizer, info = load_bundle(source)
    layers = quantize_model(model, mode)
    provenance = {**info.provenance, "quantized": {
        "mode": mode, "layers": layers, "method": "keras Model.quantize (default settings for the mode)",
        "source": str(source), "source_files": info.files}}
    info = dataclasses.replace(info, quantization=mode, provenance=provenance)

    def copy_second_tokenizers(bundle):  # a family's second tokenizer (seq2seq's source)
        for extra in sorted(path for path in source.iterdir() if path.is_dir() and is_tokenizer_directory(path)):
            shutil.copytree(extra, bundle / extra.name)

    write_bundle(out, model, tokenizer, info, force, copy_second_tokenizers)
    before, after = bundle_bytes(source), bundle_bytes(out)
    return QuantizeResult(out, mode, layers, (before[0], after[0]), (before[1], after[1]),
                          time.perf_counter() - start)
