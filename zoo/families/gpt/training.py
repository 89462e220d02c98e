"""`zoo train gpt`: read and split the corpus, train the tokenizer on the training split, pack
blocks, build the GPT from a preset, and run the training loop in a run directory.

`--data` may also be a prepared corpus (`zoo prepare`): its tokenizer and memory-mapped token
files are used as they are, so nothing is read whole or re-tokenized.

Data is read and checked before keras is imported, so a bad path fails in a fraction of a second.
"""

import dataclasses
import math
import os
import sys
from pathlib import Path

from zoo.data import (DEFAULT_CORPUS, BlockBatches, encode_documents, read_documents, split_documents,
                      validation_blocks)
from zoo.data.prepared import PreparedCorpus, is_prepared
from zoo.errors import ZooError
from zoo.families.gpt.layout import gpt_layout_map
from zoo.tokenizers import TextTokenizer, train_bpe, train_char
from zoo.training import cluster, distribution, run


def _model_config(preset, model_overrides, seq_len):
    from zoo.families.gpt.model import PRESETS

    if preset not in PRESETS:
        raise ZooError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model_config = {**PRESETS[preset], **{k: v for k, v in model_overrides.items() if v is not None}}
    seq_len = seq_len or model_config["max_length"]
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context (--max-length {model_config['max_length']})")
    return model_config, seq_len


def _new_run_config(data, preset, model_overrides, tokenizer_kind, vocabulary_size, seq_len, val_fraction,
                    text_field, train_config, init=None, lora=None):
    """Reads and splits the data, trains the tokenizer (or takes `init`'s model shape and tokenizer);
    returns (config, tokenizer, train_docs, val_docs)."""
    documents = read_documents(data, text_field)  # first: bad data fails before keras is imported
    train_docs, val_docs = split_documents(documents, val_fraction)
    if init is not None:
        model_config, tokenizer = run.init_source(init, "gpt", model_overrides)
        seq_len = seq_len or model_config["max_length"]
        if seq_len > model_config["max_length"]:
            raise ZooError(f"--seq-len {seq_len} exceeds the context of --init {init} ({model_config['max_length']})")
        data_entry = run.data_entry(data, DEFAULT_CORPUS, text_field=text_field, val_fraction=val_fraction)
        config = {**_config(None, model_config, seq_len, tokenizer, train_config, data_entry), "init": str(init),
                  **({"lora": lora} if lora else {})}
        config["model"]["vocabulary_size"] = model_config["vocabulary_size"]  # may exceed the tokenizer's
        return config, tokenizer, train_docs, val_docs
    model_config, seq_len = _model_config(preset, model_overrides, seq_len)
    if tokenizer_kind == "char":
        tokenizer = train_char(train_docs)
    else:
        tokenizer = train_bpe(train_docs, vocabulary_size)
        if tokenizer.vocabulary_size < vocabulary_size:
            print(f"note: the training split supports only {tokenizer.vocabulary_size} BPE tokens "
                  f"(asked for {vocabulary_size})", file=sys.stderr)
    data_entry = run.data_entry(data, DEFAULT_CORPUS, text_field=text_field, val_fraction=val_fraction)
    return _config(preset, model_config, seq_len, tokenizer, train_config, data_entry), tokenizer, train_docs, val_docs


def _config(preset, model_config, seq_len, tokenizer, train_config, data_entry):
    return {
        "kind": "gpt",
        "task": "generate",
        "preset": preset,
        "model": {**model_config, "vocabulary_size": tokenizer.vocabulary_size},
        "seq_len": seq_len,
        "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size},
        "train": dataclasses.asdict(train_config),
        "data": data_entry,
    }


def _language_model_evaluation(validation, batch_size):
    def evaluate(model):
        inputs, targets = validation
        loss = float(model.evaluate(inputs, targets, batch_size=batch_size, verbose=0, return_dict=True)["loss"])
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def _tokens(config, prepared, tokenizer, data):
    """(train tokens, validation tokens, tokenizer) for a run whose config is settled."""
    if prepared is not None:
        return prepared.train, prepared.val, prepared.tokenizer
    train_docs, val_docs = data
    return encode_documents(tokenizer, train_docs), encode_documents(tokenizer, val_docs), tokenizer


def _whole_batches(validation, train_config):
    """Under keras.distribution each evaluation batch is split evenly between the replicas, so a
    partial last batch cannot be: keep whole batches only."""
    if train_config.devices == 1 and train_config.model_parallel == 1 and cluster.current().num_processes == 1:
        return validation
    usable = len(validation[0]) // train_config.batch_size * train_config.batch_size
    if not usable:
        raise ZooError(f"the validation split has {len(validation[0])} blocks, fewer than one --batch-size "
                       f"{train_config.batch_size} batch, which training on several devices needs; use more data, "
                       "a larger --val-fraction or a smaller --batch-size")
    return tuple(array[:usable] for array in validation)


def train_gpt(out, data=None, preset="nano", model_overrides=None, tokenizer_kind="bpe", vocabulary_size=2048,
              seq_len=None, val_fraction=0.1, text_field="text", train_config=None, resume=False,
              explicit_train_changes=None, command=None, init=None, lora=None):
    """Trains (or with `resume`, continues) a GPT run in `out`. Returns the loop's summary dict.

    With `init` (a GPT run or bundle, e.g. an imported GPT-2) the run fine-tunes it: its shape,
    tokenizer and weights; with `lora` too ({"rank", "alpha"}), LoRA adapters on its attention
    projections instead of every weight (zoo.training.lora).

    With a prepared corpus as `data`, the tokenizer settings and `val_fraction` / `text_field`
    are those it was prepared with.
    """
    from zoo.training.config import TrainConfig

    out = Path(out)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    prepared = None
    if resume:
        config = run.resumed_config(out, "gpt", data, explicit_train_changes or {}, DEFAULT_CORPUS, lora)
        train_config = TrainConfig(**config["train"])
        distribution.check(train_config, backend)
        if config["data"].get("prepared"):
            prepared = PreparedCorpus(run.data_path(config))
            docs = None
        else:
            docs = split_documents(read_documents(run.data_path(config), config["data"]["text_field"]),
                                   config["data"]["val_fraction"])
        tokenizer = TextTokenizer.load(out)
    else:
        run.check_new_run(out)
        train_config = train_config or TrainConfig()
        distribution.check(train_config, backend)
        if is_prepared(data):
            prepared = PreparedCorpus(data)
            tokenizer, docs = prepared.tokenizer, None
            model_config, seq_len = _model_config(preset, model_overrides or {}, seq_len)
            meta = prepared.meta
            config = _config(preset, model_config, seq_len, tokenizer, train_config,
                             {"path": str(data), "sha256": meta["sha256"], "prepared": True, "source": meta["source"]})
        else:
            config, tokenizer, *docs = _new_run_config(
                data, preset, model_overrides or {}, tokenizer_kind, vocabulary_size, seq_len, val_fraction,
                text_field, train_config, init, lora)
    seq_len = config["seq_len"]
    train_tokens, val_tokens, tokenizer = _tokens(config, prepared, tokenizer, docs)
    batches = BlockBatches(train_tokens, seq_len, train_config.batch_size, train_config.seed)
    validation = _whole_batches(validation_blocks(val_tokens, seq_len, train_config.eval_blocks), train_config)
    config["data"].update(train_tokens=int(train_tokens.size), val_tokens=int(val_tokens.size))
    run.write_run(out, config, {"": tokenizer}, resume, command)

    def build_model():
        from zoo.families.gpt.model import GPT

        model = GPT(**config["model"])
        model.build()
        return run.carry_init_weights(model, config, resume)

    return run.fit(out, config, train_config, build_model, batches, validation,
                   _language_model_evaluation(validation, train_config.batch_size), resume,
                   layout_map=gpt_layout_map,
                   describe=f"{tokenizer.kind} tokenizer of {tokenizer.vocabulary_size} tokens, "
                            f"{train_tokens.size:,} training / {val_tokens.size:,} validation tokens, ")
