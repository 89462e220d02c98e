"""`zoo train bert`: masked-LM pretraining (`task="mlm"`) or classification fine-tuning
(`task="classify"`, optionally from a pretrained run or bundle given as `init`).

Pretraining reads a corpus like `zoo train gpt` (.txt, a directory, .jsonl) and trains a WordPiece
tokenizer on its training split. Fine-tuning reads labelled .csv/.tsv/.jsonl (default: the
shipped language-identification data); with `init` it keeps that model's tokenizer and encoder
shape, carries its encoder weights over and puts a new classification head on top.

Data is read and checked before keras is imported, so bad input fails in a fraction of a second.
"""

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np

from zoo.data import DEFAULT_CORPUS, read_documents, split_documents
from zoo.data.labelled import DEFAULT_LABELLED, class_names, encode_labels, read_labelled, split_labelled
from zoo.data.mlm import ClassificationBatches, MLMBatches, class_weights_balanced, mlm_sequences
from zoo.data.squad import DEFAULT_SQUAD
from zoo.data.tagged import DEFAULT_TAGGED
from zoo.errors import ZooError
from zoo.tokenizers import WordPieceTokenizer, train_wordpiece
from zoo.training import run

DEFAULT_SEQ_LEN = 128  # BERT pretrains on 128-token sequences for most of its steps


def _model_config(preset, overrides):
    from zoo.families.bert.model import PRESETS

    if preset not in PRESETS:
        raise ZooError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}


def _init_source(init, overrides):
    """(encoder config, tokenizer) of the pretrained run or bundle `init`."""
    config, tokenizer = run.init_source(init, "bert", overrides)
    return {k: v for k, v in config.items() if k not in ("vocabulary_size", "num_classes", "num_tags")}, tokenizer


def encoder_start(init, preset, overrides, texts, vocabulary_size, lowercase):
    """(encoder config, tokenizer) of a new fine-tuning run: those of the pretrained run or bundle
    `init`, or the preset's and a WordPiece tokenizer trained on `texts`."""
    if not init:
        return _model_config(preset, overrides), train_wordpiece(texts, vocabulary_size, lowercase)
    model_config, tokenizer = _init_source(init, overrides)
    if not isinstance(tokenizer, WordPieceTokenizer):
        raise ZooError(f"--init {init}: has a {tokenizer.kind} tokenizer, not WordPiece")
    return model_config, tokenizer


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _bucket(n, largest):
    return min(1 << max(n - 1, 0).bit_length(), largest)


def _new_mlm_run(data, preset, overrides, vocabulary_size, lowercase, seq_len, val_fraction, text_field, train_config):
    documents = read_documents(data, text_field)  # first: bad data fails before anything else
    train_docs, val_docs = split_documents(documents, val_fraction)
    model_config = _model_config(preset, overrides)
    seq_len = seq_len or min(DEFAULT_SEQ_LEN, model_config["max_length"])
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context (--max-length {model_config['max_length']})")
    tokenizer = train_wordpiece(train_docs, vocabulary_size, lowercase)
    model_config["vocabulary_size"] = tokenizer.vocabulary_size
    config = {"kind": "bert", "task": "mlm", "preset": preset, "model": model_config, "seq_len": seq_len,
              "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size, "lowercase": lowercase},
              "train": dataclasses.asdict(train_config),
              "data": run.data_entry(data, DEFAULT_CORPUS, text_field=text_field, val_fraction=val_fraction)}
    return config, tokenizer, (train_docs, val_docs)


def _new_classify_run(data, preset, overrides, vocabulary_size, lowercase, seq_len, val_fraction, columns, init,
                      class_weighting, train_config, lora=None):
    labelled = read_labelled(data or DEFAULT_LABELLED, **columns)
    train_rows, val_rows = split_labelled(labelled, val_fraction, train_config.seed)
    names = class_names(train_rows)
    encode_labels(val_rows, names)  # a label seen only in validation is an error, before any training
    model_config, tokenizer = encoder_start(init, preset, overrides, train_rows.texts + (train_rows.pairs or []),
                                            vocabulary_size, lowercase)
    model_config.update(vocabulary_size=tokenizer.vocabulary_size, num_classes=len(names))
    if seq_len is None:
        # Long enough for 99% of the training texts: one very long text should not make every
        # batch pay for its length (the few longer ones are cut, and reported).
        lengths = [len(ids) for ids in tokenizer.encode_ids_batch(train_rows.texts)]
        if train_rows.pairs:
            lengths = [n + len(ids) + 1 for n, ids in zip(lengths, tokenizer.encode_ids_batch(train_rows.pairs))]
        seq_len = _bucket(int(np.percentile(lengths, 99)) + 2, model_config["max_length"])
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context ({model_config['max_length']} positions)")
    config = {"kind": "bert", "task": "classify", "preset": None if init else preset, "model": model_config,
              "seq_len": seq_len, "labels": names, "init": str(init) if init else None,
              "class_weighting": class_weighting,
              "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                            "lowercase": tokenizer.lowercase},
              "train": dataclasses.asdict(train_config),
              "data": run.data_entry(data, DEFAULT_LABELLED, val_fraction=val_fraction, **columns)}
    if lora and init:
        config["lora"] = {**lora, "head": ["classifier"]}  # the new head trains whole
    return config, tokenizer, (train_rows, val_rows)


def labelled_split(config):
    """The (train, validation) LabelledData of a classification run, as it was split."""
    data = config["data"]
    columns = {k: data[k] for k in ("text_column", "label_column", "pair_column")}
    labelled = read_labelled(run.data_path(config) or DEFAULT_LABELLED, **columns)
    return split_labelled(labelled, data["val_fraction"], config["train"]["seed"])


def _mlm_training(config, tokenizer, splits, train_config):
    train_docs, val_docs = splits
    seq_len = config["seq_len"]
    masking = dict(vocabulary_size=tokenizer.vocabulary_size, special_ids=tokenizer.special_ids,
                   mask_token_id=tokenizer.mask_token_id)
    batches = MLMBatches(mlm_sequences(tokenizer, train_docs, seq_len), train_config.batch_size, train_config.seed,
                         **masking)
    inputs, targets, weights = MLMBatches(mlm_sequences(tokenizer, val_docs, seq_len), train_config.batch_size,
                                          train_config.seed, split="validation", **masking).fixed(train_config.eval_blocks)

    def evaluate(model):
        logits = model.predict(inputs, batch_size=train_config.batch_size, verbose=0)
        picked = np.take_along_axis(_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
        loss = float(-(picked * weights).sum() / weights.sum())
        accuracy = float(((logits.argmax(-1) == targets) * weights).sum() / weights.sum())
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50.0)), "val_masked_accuracy": accuracy}

    return batches, (inputs, targets, weights), evaluate, f"{len(batches.arrays['token_ids']):,} training sequences, "


def _classify_training(config, tokenizer, splits, train_config):
    from zoo.families.bert.classifier import classification_report

    train_rows, val_rows = splits
    names, seq_len = config["labels"], config["seq_len"]
    train_ids, val_ids = encode_labels(train_rows, names), encode_labels(val_rows, names)
    encoded, truncated = tokenizer.encode_batch(train_rows.texts, train_rows.pairs, max_length=seq_len)
    val_encoded, _ = tokenizer.encode_batch(val_rows.texts, val_rows.pairs, max_length=seq_len)
    if truncated.any():
        print(f"note: {int(truncated.sum())} of {len(truncated)} training texts are longer than --seq-len {seq_len} "
              "and were cut", file=sys.stderr)
    weights = class_weights_balanced(train_ids, len(names)) if config["class_weighting"] == "balanced" else None
    batches = ClassificationBatches(encoded, train_ids, train_config.batch_size, train_config.seed, weights)

    def evaluate(model):
        logits = model.predict(val_encoded, batch_size=train_config.batch_size, verbose=0)
        log_probs = _log_softmax(logits)
        report = classification_report(val_ids, logits.argmax(-1), names)
        evaluate.report = report
        return {"val_loss": float(-log_probs[np.arange(len(val_ids)), val_ids].mean()),
                "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}

    evaluate.report = None
    return batches, (val_encoded, val_ids), evaluate, (f"{len(names)} classes, {len(train_ids):,} training / "
                                                       f"{len(val_ids):,} validation examples, ")


def train_bert(out, task="mlm", data=None, preset="nano", model_overrides=None, vocabulary_size=8192, lowercase=True,
               seq_len=None, val_fraction=0.1, text_field="text", columns=None, init=None, class_weighting="none",
               train_config=None, resume=False, explicit_train_changes=None, command=None, lora=None,
               tag_column=None, doc_stride=None):
    """Trains (or with `resume`, continues) a BERT run in `out`. Returns the loop's summary dict;
    for classification it also holds the final validation report (accuracy, macro-F1, confusion),
    for tagging (`task="tag"`, zoo.families.bert.tag_training) the entity scores, for question
    answering (`task="qa"`, zoo.families.bert.qa_training) SQuAD's exact match and F1.
    Fine-tuning from `init` with `lora` ({"rank", "alpha"}) trains LoRA adapters on the encoder's
    attention projections and the new head, every other weight frozen (zoo.training.lora)."""
    from zoo.families.bert import qa_training, tag_training
    from zoo.training.config import TrainConfig

    out = Path(out)
    columns = columns or {"text_column": None, "label_column": "label", "pair_column": None}
    if resume:
        default = {"classify": DEFAULT_LABELLED, "tag": DEFAULT_TAGGED, "qa": DEFAULT_SQUAD}.get(task, DEFAULT_CORPUS)
        config = run.resumed_config(out, "bert", data, explicit_train_changes or {}, default, lora)
        if config["task"] != task:
            raise ZooError(f"{out}: is a bert {config['task']} run, not {task}")
        tokenizer = WordPieceTokenizer.load(out)
        train_config = TrainConfig(**config["train"])
        if task == "classify":
            splits = labelled_split(config)
        elif task == "tag":
            splits = tag_training.tagged_split(config)
        elif task == "qa":
            splits = qa_training.squad_split(config)
        else:
            documents = read_documents(run.data_path(config), config["data"]["text_field"])
            splits = split_documents(documents, config["data"]["val_fraction"])
    else:
        run.check_new_run(out)
        train_config = train_config or TrainConfig()
        overrides = model_overrides or {}
        if task == "classify":
            config, tokenizer, splits = _new_classify_run(data, preset, overrides, vocabulary_size, lowercase, seq_len,
                                                          val_fraction, columns, init, class_weighting, train_config,
                                                          lora)
        elif task == "tag":
            config, tokenizer, splits = tag_training.new_tag_run(data, preset, overrides, vocabulary_size, lowercase,
                                                                 seq_len, val_fraction, tag_column, init, train_config,
                                                                 lora)
        elif task == "qa":
            config, tokenizer, splits = qa_training.new_qa_run(data, preset, overrides, vocabulary_size, lowercase,
                                                               seq_len, val_fraction, doc_stride, init, train_config,
                                                               lora)
        else:
            if init:
                raise ZooError("--init is for --task classify, tag or qa (fine-tuning a pretrained encoder)")
            config, tokenizer, splits = _new_mlm_run(data, preset, overrides, vocabulary_size, lowercase, seq_len,
                                                     val_fraction, text_field, train_config)
    prepare = {"classify": _classify_training, "tag": tag_training.tag_training,
               "qa": qa_training.qa_training}.get(task, _mlm_training)
    batches, validation, evaluate, describe = prepare(config, tokenizer, splits, train_config)
    run.write_run(out, config, {"": tokenizer}, resume, command)

    def build_model():
        from zoo.families import bert
        from zoo.families.bert.model import copy_encoder_weights

        model = bert.FAMILY.model_class(task)(**config["model"])
        model.build()
        if config.get("init") and not resume:
            from zoo.bundle import load_model

            pretrained, _, _ = load_model(config["init"])
            copy_encoder_weights(pretrained, model)
            head = {"tag": f"{len(config.get('labels', ()))}-tag", "qa": "span"}.get(
                task, f"{len(config.get('labels', ()))}-class")
            print(f"encoder weights carried over from {config['init']}; new {head} head", file=sys.stderr)
        return model

    import keras

    # Masked LM and tagging: averaged over the positions that carry a label (the others weigh 0).
    reduction = "sum_over_batch_size" if task == "classify" else "mean_with_sample_weight"
    summary = run.fit(out, config, train_config, build_model, batches, validation, evaluate, resume,
                      describe=f"wordpiece tokenizer of {tokenizer.vocabulary_size} tokens, {describe}",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction))
    if task != "mlm" and evaluate.report is not None:
        summary["report"] = evaluate.report
    return summary
