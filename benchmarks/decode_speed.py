"""Decoding speed on the current backend: zoo's eager reference, zoo's compiled engine,
KerasHub's GPT2CausalLM (if keras_hub is importable) and, on torch, Hugging Face transformers'
GPT2LMHeadModel.generate (if transformers is importable), for the same GPT-2-shaped model.

    KERAS_BACKEND=jax python benchmarks/decode_speed.py [--batches 1 8] [--new-tokens 112]
    pip install transformers   # only for this benchmark; not a dependency of zoo
    KERAS_BACKEND=torch python benchmarks/decode_speed.py

Model: vocabulary 8192, 6 layers, 6 heads, width 384 (MLP 1536), context 256, random weights.
Each row has a 16-token prompt and generates 112 new tokens greedily; tokens/s counts new tokens
(batch x 112) over the wall time of the whole generation, prefill included. Each figure is the
best of --repeats runs after a warm-up run that compiles (its time is reported separately), since
other processes on a small machine only ever make a run slower.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from zoo.engine import EagerEngine, engine_for  # noqa: E402
from zoo.families.gpt.model import GPT  # noqa: E402

SHAPE = dict(vocabulary_size=8192, num_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536, max_length=256)


def best_time(run, repeats):
    """(best wall seconds of `repeats` runs, the last run's output)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        output = run()
        best = min(best, time.perf_counter() - start)
    return best, output


def keras_hub_runner(prompts, new_tokens):
    """A greedy GPT2CausalLM of the same shape; generate() on token ids, no preprocessor."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=SHAPE["vocabulary_size"], num_layers=SHAPE["num_layers"], num_heads=SHAPE["num_heads"],
        hidden_dim=SHAPE["hidden_dim"], intermediate_dim=SHAPE["intermediate_dim"],
        max_sequence_length=SHAPE["max_length"], dropout=0.0)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")
    prompt_length = len(prompts[0])
    # Without a preprocessor, the padded input length is the generation length.
    token_ids = np.zeros((len(prompts), prompt_length + new_tokens), "int32")
    token_ids[:, :prompt_length] = prompts
    padding_mask = np.zeros_like(token_ids, dtype=bool)
    padding_mask[:, :prompt_length] = True

    def run():
        out = lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None)
        return np.asarray(out["token_ids"])[:, prompt_length:].tolist()

    return run


def transformers_runner(prompts, new_tokens):
    """Hugging Face's GPT2LMHeadModel of the same shape (gelu_new, as GPT-2), greedy generate() on
    token ids with its default (dynamic) KV cache, under torch.inference_mode, on the device Keras's
    torch backend uses (the GPU where there is one)."""
    import torch
    import transformers

    config = transformers.GPT2Config(
        vocab_size=SHAPE["vocabulary_size"], n_positions=SHAPE["max_length"], n_embd=SHAPE["hidden_dim"],
        n_layer=SHAPE["num_layers"], n_head=SHAPE["num_heads"], n_inner=SHAPE["intermediate_dim"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where Keras's torch backend puts the model
    lm = transformers.GPT2LMHeadModel(config).eval().to(device)
    input_ids = torch.tensor(prompts, device=device)

    def run():
        with torch.inference_mode():
            out = lm.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        return out[:, input_ids.shape[1]:].tolist()

    return run, transformers.__version__


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=112)
    parser.add_argument("--eager-tokens", type=int, default=32,
                        help="new tokens for the (slow) eager reference; its rate is per token all the same")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-keras-hub", action="store_true")
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    model = GPT(**SHAPE)
    model.build()
    engine, eager = engine_for(model), EagerEngine(model)
    rng = np.random.default_rng(0)
    print(f"backend {backend}, keras {keras.__version__}, {model.count_params() / 1e6:.2f}M parameters, "
          f"prompt {args.prompt_tokens}, new tokens {args.new_tokens}, greedy, best of {args.repeats}")
    rows = []
    for batch in args.batches:
        prompts = rng.integers(1, SHAPE["vocabulary_size"], (batch, args.prompt_tokens)).tolist()
        n = args.new_tokens

        def compiled():
            return engine.generate_batch(prompts, n)

        start = time.perf_counter()
        compiled()  # warm-up: compiles the prefill bucket and this batch's decode step
        warm = time.perf_counter() - start
        seconds, zoo_tokens = best_time(compiled, args.repeats)
        rate = {"zoo compiled": batch * n / seconds}
        eager.generate_batch(prompts, 2)  # eager JAX and TensorFlow still compile each op once per shape
        eager_seconds, eager_tokens = best_time(lambda: eager.generate_batch(prompts, args.eager_tokens), 1)
        same = [row[:args.eager_tokens] for row in zoo_tokens] == eager_tokens
        rate["zoo eager"] = batch * args.eager_tokens / eager_seconds
        hub_note = ""
        if not args.no_keras_hub:
            try:
                run = keras_hub_runner(prompts, n)
            except ImportError:
                hub_note = " (keras_hub not importable)"
            else:
                start = time.perf_counter()
                run()
                hub_warm = time.perf_counter() - start
                hub_seconds, _ = best_time(run, args.repeats)
                rate["KerasHub"] = batch * n / hub_seconds
                hub_note = f", KerasHub first call {hub_warm:.1f}s"
        if backend == "torch" and not args.no_transformers:
            try:
                run, version = transformers_runner(prompts, n)
            except ImportError:
                hub_note += " (transformers not importable)"
            else:
                run()
                hf_seconds, _ = best_time(run, args.repeats)
                rate[f"HF {version}"] = batch * n / hf_seconds
                hub_note += f", transformers {version}"
        print(f"\nbatch {batch}: zoo first call {warm:.1f}s{hub_note}; compiled tokens == eager tokens: {same}")
        for name, value in rate.items():
            print(f"  {name:13s} {value:8.1f} tok/s")
        versus = "".join(f", compiled / {name}: {rate['zoo compiled'] / value:.2f}x" for name, value in rate.items()
                         if name.startswith(("KerasHub", "HF")))
        print(f"  compiled / eager: {rate['zoo compiled'] / rate['zoo eager']:.1f}x{versus}")
        rows.append((batch, rate))
    print(f"\nzoo engine {type(engine).__name__}: {engine.compile_count} compiled functions, "
          f"{engine.compile_seconds:.1f}s compiling: {engine.compile_log}")
    print("\n| backend | batch | zoo eager tok/s | zoo compiled tok/s | KerasHub tok/s | compiled / KerasHub "
          "| transformers tok/s | compiled / transformers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, rate in rows:
        cells = []
        for other in [rate.get("KerasHub"), next((v for k, v in rate.items() if k.startswith("HF")), None)]:
            cells.append(f"{other:.1f} | {rate['zoo compiled'] / other:.2f}x" if other else "- | -")
        print(f"| {backend} | {batch} | {rate['zoo eager']:.1f} | {rate['zoo compiled']:.1f} | {' | '.join(cells)} |")

if __name__ == "__main__":
    main()
