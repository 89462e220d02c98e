"""The LSTM against the GPT of about the same size, side by side: validation perplexity after the
same wall-clock training time, training tokens/s, and greedy generation tokens/s.

Both presets (`--preset`, nano by default: 1.05M and 1.07M parameters at 2048 BPE tokens) train in
this one process on the shipped corpus, tokenized and split as `zoo train` does (BPE trained on
the training split, the last 10% held out), with zoo's training step (`compile_for_training`,
`train_on_batch`) and `zoo train`'s settings (batch 32, blocks of 128 tokens, AdamW peaking at
1e-3, weight decay 0.1, clipping at 1). They take turns, `--slice` seconds each, until each has
trained `--budget` seconds, so that a change in the machine's load falls on both alike. The
learning rate follows zoo train's warmup and cosine decay over each model's budget of time
rather than steps, so both end fully decayed however many steps they make; the compiling first
step is not counted. Then each is scored on the whole validation split, and generates 100 tokens
greedily from a prompt on its compiled decode engine (best of 3, after a warm-up).

    python benchmarks/lstm_vs_gpt.py                       # nano presets, 90 s each, jax, markdown table
    python benchmarks/lstm_vs_gpt.py --budget 600 --preset small --backend torch --json out.json
"""

import argparse
import datetime
import json
import math
import os
import platform
import time

MODELS = ("gpt", "lstm")


def _machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def _corpus(seq_len, vocabulary_size):
    from zoo.data import encode_documents, read_documents, split_documents, validation_blocks
    from zoo.tokenizers import train_text_tokenizer

    train_docs, val_docs = split_documents(read_documents(None), 0.1)
    tokenizer = train_text_tokenizer(train_docs, "bpe", vocabulary_size)
    val_tokens = encode_documents(tokenizer, val_docs)
    return tokenizer, encode_documents(tokenizer, train_docs), validation_blocks(val_tokens, seq_len, 10**9)


def _build(name, preset, vocabulary_size, seq_len):
    """The family's model of `preset`, with a context of `seq_len`, from seed 0."""
    import keras

    from zoo import families

    family = families.get(name)
    keras.utils.set_random_seed(0)
    model = family.model_class("generate")(vocabulary_size=vocabulary_size,
                                           **{**family.presets[preset], "max_length": seq_len})
    model.build()
    return model


def learning_rate(progress, peak, warmup=0.1, floor=0.1):
    """zoo train's schedule over the fraction `progress` of the budget instead of steps: linear
    warmup over its first tenth, then cosine decay to a tenth of the peak at its end."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min((progress - warmup) / (1 - warmup), 1))))


class Trainee:
    """One model being trained, its clock and its step counter."""

    def __init__(self, name, args, vocabulary_size, batches):
        from zoo.training.config import TrainConfig
        from zoo.training.loop import compile_for_training

        self.name, self.batches, self.budget, self.peak = name, batches, args.budget, args.lr
        self.model = _build(name, args.preset, vocabulary_size, args.seq_len)
        compile_for_training(self.model, TrainConfig(batch_size=args.batch_size), learning_rate=0.0)
        begin = time.perf_counter()
        self.model.train_on_batch(*batches.batch(0))  # compiles (at learning rate 0); not on the clock
        self.compile_s, self.seconds, self.step = time.perf_counter() - begin, 0.0, 1

    def train_for(self, seconds):
        """Trains until `seconds` more have passed on its clock (or its budget is spent)."""
        begin = time.perf_counter()
        while (elapsed := time.perf_counter() - begin) < seconds and self.seconds + elapsed < self.budget:
            self.model.optimizer.learning_rate = learning_rate((self.seconds + elapsed) / self.budget, self.peak)
            self.model.train_on_batch(*self.batches.batch(self.step))
            self.step += 1
        self.seconds += time.perf_counter() - begin


def _generation_speed(name, model, tokenizer, new_tokens=100):
    from zoo import families
    from zoo.engine import SamplingConfig

    generator = families.get(name).runtime("generate", model, tokenizer, None, None)
    config = SamplingConfig(max_new_tokens=new_tokens, temperature=0)
    generator.generate("ROMEO.", config)  # warm-up (the GPT's engine compiles)
    best = float("inf")
    for _ in range(3):
        begin = time.perf_counter()
        made = len(generator.generate("ROMEO.", config).token_ids)
        best = min(best, time.perf_counter() - begin)
    return made / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=90.0, help="Training seconds per model.")
    parser.add_argument("--slice", type=float, default=10.0, help="Seconds per turn.")
    parser.add_argument("--preset", default="nano", choices=["nano", "small"])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate (zoo train's default).")
    parser.add_argument("--json", help="Also write the results here.")
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend

    import keras

    from zoo.data import BlockBatches
    from zoo.training.language_model import evaluation

    tokenizer, train_tokens, validation = _corpus(args.seq_len, args.vocab_size)
    batches = BlockBatches(train_tokens, args.seq_len, args.batch_size, seed=0)
    trainees = [Trainee(name, args, tokenizer.vocabulary_size, batches) for name in MODELS]
    load = [os.getloadavg()[0]]
    while any(t.seconds < args.budget for t in trainees):
        for trainee in trainees:
            trainee.train_for(min(args.slice, args.budget - trainee.seconds))
            load.append(os.getloadavg()[0])
    rows = []
    for t in trainees:
        scores = evaluation(validation, args.batch_size)(t.model)
        rows.append({"model": t.name, "parameters": t.model.count_params(), "steps": t.step - 1,
                     "train_s": round(t.seconds, 1), "compile_s": round(t.compile_s, 1),
                     "train_tokens_per_s": round((t.step - 1) * batches.tokens_per_batch / t.seconds),
                     "val_loss": round(scores["val_loss"], 4), "val_perplexity": round(scores["val_perplexity"], 2),
                     "generate_tokens_per_s": round(_generation_speed(t.name, t.model, tokenizer), 1)})
    setting = {"date": datetime.date.today().isoformat(), "machine": _machine(), "backend": keras.backend.backend(),
               "keras": keras.__version__, "preset": args.preset, "budget_s": args.budget, "slice_s": args.slice,
               "batch_size": args.batch_size, "seq_len": args.seq_len, "vocabulary_size": tokenizer.vocabulary_size,
               "validation_blocks": len(validation[0]),
               "load_average": [round(min(load), 2), round(max(load), 2)]}
    print(f"{setting['date']}, {setting['machine']}, {setting['backend']} (Keras {setting['keras']}); "
          f"{args.preset} presets, {args.budget:g} s of training each in turns of {args.slice:g} s, batch "
          f"{args.batch_size} x {args.seq_len} tokens, BPE {tokenizer.vocabulary_size}; validation: "
          f"{len(validation[0])} blocks (the whole split); 1-minute load average while training "
          f"{min(load):.1f}-{max(load):.1f}\n")
    print("| model | parameters | steps in the budget | train tokens/s | val loss | val perplexity "
          "| greedy generation tokens/s (batch 1) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} {args.preset} | {r['parameters']:,} | {r['steps']:,} "
              f"| {r['train_tokens_per_s']:,} "
              f"| {r['val_loss']:.3f} | {r['val_perplexity']:.1f} | {r['generate_tokens_per_s']:.0f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"setting": setting, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
