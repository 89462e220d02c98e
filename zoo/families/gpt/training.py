"""`zoo train gpt`: a next-token language model run (zoo.training.language_model: the corpus, the
tokenizer, blocks, validation perplexity, the run directory), with the GPT's own parts: its model,
its layout for --model-parallel, and fine-tuning a pretrained GPT (`--init`, with LoRA or without).

`--data` may also be a prepared corpus (`zoo prepare`): its tokenizer and memory-mapped token
files are used as they are, so nothing is read whole or re-tokenized.

How each backend steps (nanoGPT's CPU recipe was the yardstick, benchmarks/vs_nanogpt.py): torch
through the plain-torch forward pass over the model's variables (zoo.families.gpt.torch_training;
Keras's AdamW still updates them), TensorFlow with XLA even on a CPU (`--jit-compile auto`), JAX
with Keras's XLA-compiled `train_on_batch`.
"""

import sys

from zoo.data import DEFAULT_CORPUS
from zoo.data.prepared import is_prepared
from zoo.errors import ZooError
from zoo.families.gpt.layout import gpt_layout_map
from zoo.families.gpt.presets import PRESETS
from zoo.training import language_model, run


def _init_run(init, data, model_overrides, seq_len, val_fraction, text_field, train_config, lora):
    """A new run fine-tuning the GPT run or bundle `init`: its shape and tokenizer, the corpus read
    and split as for any run. Returns (config, tokenizer, (train_docs, val_docs))."""
    documents = language_model.read_corpus(data, text_field, val_fraction)  # first: bad data fails fast
    model_config, tokenizer = run.init_source(init, "gpt", model_overrides)
    seq_len = seq_len or model_config["max_length"]
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the context of --init {init} ({model_config['max_length']})")
    data_entry = run.data_entry(data, DEFAULT_CORPUS, text_field=text_field, val_fraction=val_fraction)
    config = {**language_model.run_config("gpt", None, model_config, seq_len, tokenizer, train_config, data_entry),
              "init": str(init), **({"lora": lora} if lora else {})}
    config["model"]["vocabulary_size"] = model_config["vocabulary_size"]  # may exceed the tokenizer's
    return config, tokenizer, documents


def _untrained_positions(config):
    """The positions a new run's blocks train when that leaves some of the context's learned
    position embeddings untrained (text generated past them degrades into noise), else None.
    (--init's positions come trained.)"""
    context, seq_len = config["model"]["max_length"], config["seq_len"]
    if seq_len < context and config["model"].get("position_embedding", "learned") == "learned":
        return seq_len
    return None


def train_gpt(out, data=None, preset="nano", model_overrides=None, tokenizer_kind="bpe", vocabulary_size=2048,
              seq_len=None, val_fraction=0.1, text_field="text", train_config=None, resume=False,
              explicit_train_changes=None, command=None, init=None, lora=None, teacher=None, teacher_precision=None):
    """Trains (or with `resume`, continues) a GPT run in `out`. Returns the loop's summary dict.

    With `init` (a GPT run or bundle, e.g. an imported GPT-2) the run fine-tunes it: its shape,
    tokenizer and weights; with `lora` too ({"rank", "alpha"}), LoRA adapters on its attention
    projections instead of every weight (zoo.training.lora). With `teacher` (a GPT or other language
    model run or bundle with the run's tokenizer) the model learns the teacher's next-token
    distribution (zoo.training.distill), e.g. a speculative-decoding draft of that teacher, its
    forward pass in `teacher_precision` (fp32, the default, or bf16).

    With a prepared corpus as `data`, the tokenizer settings and `val_fraction` / `text_field`
    are those it was prepared with.
    """
    overrides = model_overrides or {}

    def start(train_config):
        if init is not None and not is_prepared(data):
            return _init_run(init, data, overrides, seq_len, val_fraction, text_field, train_config, lora)
        config, tokenizer, corpus = language_model.new_run("gpt", data, PRESETS, preset, overrides, seq_len,
                                                           tokenizer_kind, vocabulary_size, val_fraction,
                                                           text_field, train_config)
        if (trained := _untrained_positions(config)) is not None:
            # Recorded in the run (and its bundle's provenance) for `zoo generate` to note too.
            config["trained_positions"] = trained
            context = config["model"]["max_length"]
            print(f"note: --seq-len {trained} trains {trained} of the context's {context} learned positions; text "
                  f"past position {trained} will be poor (train with --seq-len {context}, or keep prompt and output "
                  f"within {trained} tokens)", file=sys.stderr)
        return config, tokenizer, corpus

    def build_model(config):
        from zoo.families.gpt.model import GPT

        model = GPT(**config["model"])
        model.build()
        return run.carry_init_weights(model, config, resume)

    def torch_only(make):
        """On torch, the plain-torch training step or validation loss (zoo.families.gpt.torch_training)."""

        def made(model, **options):
            import keras

            if keras.backend.backend() != "torch":
                return None
            from zoo.families.gpt import torch_training

            return getattr(torch_training, make)(model, **options)

        return made

    return language_model.train_language_model(
        out, "gpt", start, build_model, data=data, train_config=train_config, resume=resume,
        explicit_train_changes=explicit_train_changes, command=command, lora=lora, teacher=teacher,
        teacher_precision=teacher_precision, layout_map=gpt_layout_map, train_step=torch_only("train_step"),
        batch_loss=torch_only("batch_loss"),
        xla_on_tensorflow=True)
