"""Batch-1 decoding speed of a quantized GPT or seq2seq model (`zoo quantize`: Keras's int8 and
int4) against the float32 one, side by side in one process on the current backend, on zoo's
compiled engine.

    KERAS_BACKEND=jax python benchmarks/quantized_decode.py [--new-tokens 112] [--repeats 3]
    KERAS_BACKEND=tensorflow python benchmarks/quantized_decode.py
    KERAS_BACKEND=torch python benchmarks/quantized_decode.py
    KERAS_BACKEND=jax python benchmarks/quantized_decode.py --family seq2seq

Model: benchmarks/decode_speed.py's GPT-2 shape (vocabulary 8192, 6 layers, 6 heads, width 384,
MLP 1536, context 256), or with `--family seq2seq` a translator of the same width (6 encoder and 6
decoder layers, vocabularies 8192, 64 source and 128 target positions; the prompt is the start
token and a source); random weights (seed 0), the same weights quantized. A 16-token prompt,
112 new tokens greedily; tokens/s counts new tokens over the whole generation, prefill included,
best of --repeats after a warm-up run that compiles. Also printed: the weights file's size
(model.weights.h5, as in a bundle) and how many of the first 32 greedy tokens equal float32's
(random weights give nearly flat logits, so this is a harsh test: a trained model's are peaked).

Rows marked "(experiment)" are not what zoo runs (GPT only); they measure alternatives:
- "int8 weight-only": Keras's int8 layers with their input quantizer off (x @ W_int8 / scale,
  the float input multiplied by the int8 kernel), on JAX and TensorFlow;
- "int8pack weight-only": on torch, `torch.ops.aten._weight_int8pack_mm` (float input, int8
  weight, a scale per output), the weight-only int8 kernel of torch.
"""

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from decode_speed import SHAPE, best_time  # noqa: E402
from zoo.engine import new_engine  # noqa: E402
from zoo.families.gpt.model import GPT  # noqa: E402
from zoo.families.seq2seq.model import Seq2Seq  # noqa: E402
from zoo.layers.quantized import quantize_model  # noqa: E402

SEQ2SEQ_SHAPE = dict(source_vocabulary_size=8192, target_vocabulary_size=8192, num_encoder_layers=6,
                     num_decoder_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536, max_source_length=64,
                     max_target_length=128)


def weights_bytes(model):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "model.weights.h5")
        model.save_weights(path)
        return path.stat().st_size


def built(family, weights=None):
    model = GPT(**SHAPE) if family == "gpt" else Seq2Seq(**SEQ2SEQ_SHAPE)
    model.build()
    if weights is not None:
        model.set_weights(weights)
    return model


def weight_only(model):
    """(experiment) Keras's int8 layers with their input quantizer off: the float input times the
    int8 kernel, over the scale."""
    for layer in model._flatten_layers():
        if getattr(layer, "quantization_mode", None) == "int8" and getattr(layer, "inputs_quantizer", None):
            layer.inputs_quantizer = None
    return model


class Int8PackLinear:
    """(experiment) torch's weight-only int8 kernel over a QuantizedLinear's int8 weights."""

    def __init__(self, twin):
        import torch

        integers = twin.kernel  # zoo.layers.torch_quantized.IntegerMatmul: fbgemm's packed kernel, or floats
        if integers.packed is not None:
            self.weight = torch.ops.quantized.linear_unpack(integers.packed)[0].int_repr()  # (outputs, inputs)
        else:
            self.weight = integers.kernel.T.round().to(torch.int8).contiguous()
        self.scales, self.bias, self.dtype = (1.0 / twin.scale).contiguous(), twin.bias, twin.dtype

    def __call__(self, x):
        import torch

        y = torch.ops.aten._weight_int8pack_mm(x.float().contiguous(), self.weight, self.scales)
        return (y if self.bias is None else y + self.bias).to(self.dtype)


def swapped(engine, cls):
    """A torch engine whose quantized linears are `cls` of them (the blocks' dicts copied)."""
    from zoo.layers.torch_quantized import QuantizedLinear

    engine = copy.copy(engine)
    engine.blocks = [{name: cls(value) if isinstance(value, QuantizedLinear) else value
                      for name, value in block.items()} for block in engine.blocks]
    return engine


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["gpt", "seq2seq"], default="gpt")
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=112)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-tokens", type=int, default=32)
    parser.add_argument("--no-experiments", action="store_true", help="only float32, int8 and int4")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch: torch.set_num_threads (default: torch's)")
    args = parser.parse_args()

    backend = keras.backend.backend()
    if backend == "torch" and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    keras.utils.set_random_seed(0)
    reference = built(args.family)
    weights = reference.get_weights()
    prompt = np.random.default_rng(0).integers(1, SHAPE["vocabulary_size"], args.prompt_tokens).tolist()
    if args.family == "seq2seq":
        prompt = [0] + prompt  # the decoder's start token, then the source
    models = {"float32": reference}
    for mode in ("int8", "int4"):
        models[mode] = built(args.family, weights)
        quantize_model(models[mode], mode)
    engines = {name: new_engine(model) for name, model in models.items()}
    sizes = {name: weights_bytes(model) for name, model in models.items()}
    if not args.no_experiments and args.family == "gpt":
        if backend in ("jax", "tensorflow"):
            model = built(args.family, weights)
            quantize_model(model, "int8")
            engines["int8 weight-only (experiment)"] = new_engine(weight_only(model))
            sizes["int8 weight-only (experiment)"] = sizes["int8"]
        elif backend == "torch":
            engines["int8pack weight-only (experiment)"] = swapped(engines["int8"], Int8PackLinear)
            sizes["int8pack weight-only (experiment)"] = sizes["int8"]
    print(f"{args.family}, backend {backend}, keras {keras.__version__}, "
          f"{reference.count_params() / 1e6:.2f}M parameters, "
          f"batch 1, prompt {args.prompt_tokens}, {args.new_tokens} new tokens, greedy, best of {args.repeats}")
    results = {}
    for name, engine in engines.items():
        def run():
            return engine.generate_batch([prompt], args.new_tokens)[0]

        start = time.perf_counter()
        run()
        warm = time.perf_counter() - start
        seconds, tokens = best_time(run, args.repeats)
        results[name] = (args.new_tokens / seconds, tokens, warm)
    base_rate, base_tokens, _ = results["float32"]
    n = args.compare_tokens
    print(f"\n| backend | weights | tok/s | vs float32 | weights file | first {n} greedy tokens = float32's | first call s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (rate, tokens, warm) in results.items():
        same = sum(a == b for a, b in zip(tokens[:n], base_tokens[:n]))
        print(f"| {backend} | {name} | {rate:.1f} | {rate / base_rate:.2f}x | {sizes[name] / 1e6:.1f} MB "
              f"({sizes[name] / sizes['float32']:.2f}x) | {same}/{n} | {warm:.1f} |")


if __name__ == "__main__":
    main()
