"""Training a next-token language model on a corpus: what every such family (gpt, lstm) does alike.

A family's training module says how its model settings come about and how its model is built;
this module does the rest, once: reads and splits the corpus (or opens a corpus prepared by `zoo
prepare`), trains the tokenizer on the training split, packs blocks of `seq_len` tokens
(`BlockBatches`), scores validation loss and perplexity, and runs the loop in a run directory
(zoo.training.run), resume included.

Data is read and checked before keras is imported, so a bad path fails in a fraction of a second.
"""

import dataclasses
import math
import os
from pathlib import Path

from zoo.data import (DEFAULT_CORPUS, BlockBatches, encode_documents, read_documents, split_documents,
                      validation_blocks)
from zoo.data.prepared import PreparedCorpus, is_prepared
from zoo.errors import ZooError
from zoo.tokenizers import TextTokenizer, train_text_tokenizer
from zoo.training import cluster, distill, distribution, run


def model_settings(presets, preset, overrides, seq_len):
    """(model settings, seq_len): the preset's settings with every override that is not None; the
    training block length `seq_len` defaults to the context (`max_length`) and may not exceed it."""
    if preset not in presets:
        raise ZooError(f"unknown preset {preset!r}: choose one of {', '.join(presets)}")
    settings = {**presets[preset], **{k: v for k, v in overrides.items() if v is not None}}
    seq_len = seq_len or settings["max_length"]
    if seq_len > settings["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context (--max-length {settings['max_length']})")
    return settings, seq_len


def run_config(kind, preset, model_config, seq_len, tokenizer, train_config, data_entry):
    """A language model run's config.json (before provenance)."""
    return {
        "kind": kind,
        "task": "generate",
        "preset": preset,
        "model": {**model_config, "vocabulary_size": tokenizer.vocabulary_size},
        "seq_len": seq_len,
        "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size},
        "train": dataclasses.asdict(train_config),
        "data": data_entry,
    }


def read_corpus(data, text_field, val_fraction):
    """(training documents, validation documents) of `data` (None: the shipped corpus)."""
    return split_documents(read_documents(data, text_field), val_fraction)


def new_run(kind, data, presets, preset, overrides, seq_len, tokenizer_kind, vocabulary_size, val_fraction,
            text_field, train_config):
    """A new run's (config, tokenizer, corpus) on `data`, its model from `presets[preset]` and the
    overrides. `corpus` is a PreparedCorpus when `data` is one (its tokenizer and split as
    prepared), else (training documents, validation documents) with a tokenizer trained on the
    first."""
    if is_prepared(data):
        prepared = PreparedCorpus(data)
        model_config, seq_len = model_settings(presets, preset, overrides, seq_len)
        meta = prepared.meta
        entry = {"path": str(data), "sha256": meta["sha256"], "prepared": True, "source": meta["source"]}
        return (run_config(kind, preset, model_config, seq_len, prepared.tokenizer, train_config, entry),
                prepared.tokenizer, prepared)
    documents = read_corpus(data, text_field, val_fraction)  # first: bad data fails before anything slow
    model_config, seq_len = model_settings(presets, preset, overrides, seq_len)
    tokenizer = train_text_tokenizer(documents[0], tokenizer_kind, vocabulary_size)
    entry = run.data_entry(data, DEFAULT_CORPUS, text_field=text_field, val_fraction=val_fraction)
    return run_config(kind, preset, model_config, seq_len, tokenizer, train_config, entry), tokenizer, documents


def _resumed_corpus(config):
    if config["data"].get("prepared"):
        return PreparedCorpus(run.data_path(config))
    return read_corpus(run.data_path(config), config["data"]["text_field"], config["data"]["val_fraction"])


def _tokens(corpus, tokenizer):
    """(training tokens, validation tokens, tokenizer) of a PreparedCorpus or of (train, val) documents."""
    if isinstance(corpus, PreparedCorpus):
        return corpus.train, corpus.val, corpus.tokenizer
    train_docs, val_docs = corpus
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


def evaluation(validation, batch_size, batch_loss=None):
    """The evaluation of a language model: mean next-token cross-entropy on the validation blocks,
    and its perplexity. `batch_loss(model)` may give a family's own `loss(inputs, targets)` of one
    batch (its mean; e.g. the GPT's plain-torch forward pass) to use instead of `model.evaluate`,
    or None."""
    own = {}

    def evaluate(model):
        inputs, targets = validation
        if batch_loss is not None and id(model) not in own:
            own[id(model)] = batch_loss(model)
        loss_of = own.get(id(model))
        if loss_of is None:
            loss = float(model.evaluate(inputs, targets, batch_size=batch_size, verbose=0, return_dict=True)["loss"])
        else:  # every block has the same length: the mean over batches weighted by their sizes
            total = sum(float(loss_of(inputs[i:i + batch_size], targets[i:i + batch_size])) * len(inputs[i:i + batch_size])
                        for i in range(0, len(inputs), batch_size))
            loss = total / len(inputs)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0))}

    return evaluate


def train_language_model(out, kind, start, build_model, data=None, train_config=None, resume=False,
                         explicit_train_changes=None, command=None, lora=None, teacher=None, teacher_precision=None,
                         batch_loss=None, **fit_args):
    """Trains (or with `resume`, continues) a `kind` language model run in `out`; returns the loop's
    summary dict.

    `start(train_config)` settles a new run: (config, tokenizer, corpus), as `new_run` gives (a
    family may start otherwise, e.g. from a pretrained model). `build_model(config)` builds the
    model of a run's config. `teacher` (a language model run or bundle sharing the run's tokenizer)
    distills it into the model (zoo.training.distill), its forward pass in `teacher_precision`
    (fp32, the default, or bf16); a resumed run keeps both. `batch_loss`
    goes to `evaluation`. `fit_args` go to `zoo.training.run.fit` (e.g. a layout_map).
    """
    from zoo.training.config import TrainConfig

    out = Path(out)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if resume:
        config = run.resumed_config(out, kind, data, explicit_train_changes or {}, DEFAULT_CORPUS, lora)
        distill.check_resumed_teacher(config, teacher, teacher_precision)
        train_config = TrainConfig(**config["train"])
        distribution.check(train_config, backend)
        corpus, tokenizer = _resumed_corpus(config), TextTokenizer.load(out)
    else:
        run.check_new_run(out)
        train_config = train_config or TrainConfig()
        distribution.check(train_config, backend)
        config, tokenizer, corpus = start(train_config)
        if teacher is None and teacher_precision is not None:
            raise ZooError("--teacher-precision is the precision of a teacher's forward pass: give --teacher too")
        if teacher is not None:
            config.update(teacher=str(teacher), teacher_precision=teacher_precision or "fp32")
    seq_len = config["seq_len"]
    if config.get("teacher"):  # again on resume: the teacher's files may have changed since
        distill.check_teacher(config["teacher"], tokenizer, seq_len, train_config)
    train_tokens, val_tokens, tokenizer = _tokens(corpus, tokenizer)
    batches = BlockBatches(train_tokens, seq_len, train_config.batch_size, train_config.seed)
    validation = _whole_batches(validation_blocks(val_tokens, seq_len, train_config.eval_blocks), train_config)
    config["data"].update(train_tokens=int(train_tokens.size), val_tokens=int(val_tokens.size))
    run.write_run(out, config, {"": tokenizer}, resume, command)
    return run.fit(out, config, train_config, lambda: build_model(config), batches, validation,
                   evaluation(validation, train_config.batch_size, batch_loss), resume,
                   describe=f"{tokenizer.kind} tokenizer of {tokenizer.vocabulary_size} tokens, "
                            f"{train_tokens.size:,} training / {val_tokens.size:,} validation tokens, ", **fit_args)
