"""`zoo train bert --task tag`: named-entity recognition on BIO-tagged sentences (CoNLL columns or
.jsonl; default: the shipped WNUT-17 training set), optionally from a pretrained encoder (`init`).
Scored with entity-level precision, recall and F1 (zoo.families.bert.entities)."""

import dataclasses
import sys

import numpy as np

from zoo.data.mlm import RowBatches
from zoo.data.tagged import DEFAULT_TAGGED, encode_tags, read_tagged, split_tagged, tag_names
from zoo.errors import ZooError
from zoo.training import run


def new_tag_run(data, preset, overrides, vocabulary_size, lowercase, seq_len, val_fraction, tag_column, init,
                train_config, lora=None):
    """(config, tokenizer, (train, validation) TaggedData) of a new tagging run."""
    from zoo.families.bert.training import _bucket, encoder_start

    tagged = read_tagged(data or DEFAULT_TAGGED, tag_column)  # first: bad data fails before anything else
    train_rows, val_rows = split_tagged(tagged, val_fraction, train_config.seed)
    names = tag_names(train_rows)
    encode_tags(val_rows, names)  # an entity type seen only in validation is an error, before any training
    model_config, tokenizer = encoder_start(init, preset, overrides, [" ".join(t) for t in train_rows.tokens],
                                            vocabulary_size, lowercase)
    model_config.update(vocabulary_size=tokenizer.vocabulary_size, num_tags=len(names))
    if seq_len is None:  # long enough for 99% of the training sentences, as for classification
        pieces = tokenizer.tokenizer.encode_batch(train_rows.tokens, is_pretokenized=True, add_special_tokens=False)
        seq_len = _bucket(int(np.percentile([len(p.ids) for p in pieces], 99)) + 2, model_config["max_length"])
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context ({model_config['max_length']} positions)")
    config = {"kind": "bert", "task": "tag", "preset": None if init else preset, "model": model_config,
              "seq_len": seq_len, "labels": names, "init": str(init) if init else None,
              "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                            "lowercase": tokenizer.lowercase},
              "train": dataclasses.asdict(train_config),
              "data": run.data_entry(data, DEFAULT_TAGGED, val_fraction=val_fraction, tag_column=tag_column)}
    if lora and init:
        config["lora"] = {**lora, "head": ["tagger"]}  # the new head trains whole
    return config, tokenizer, (train_rows, val_rows)


def tagged_split(config):
    """The (train, validation) TaggedData of a tagging run, as it was split."""
    data = config["data"]
    return split_tagged(read_tagged(run.data_path(config) or DEFAULT_TAGGED, data.get("tag_column")),
                        data["val_fraction"], config["train"]["seed"])


def tagging_scores(model, tokenizer, rows, names, seq_len, batch_size=32):
    """(validation loss over the words' first pieces, entity scores) of `model` on TaggedData `rows`."""
    from zoo.families.bert.entities import entity_scores
    from zoo.families.bert.tagger import encode_tagged, token_tags
    from zoo.families.bert.training import _log_softmax

    inputs, labels, weights, first_piece, _ = encode_tagged(tokenizer, rows.tokens, encode_tags(rows, names), names,
                                                            seq_len)
    logits = model.predict(inputs, batch_size=batch_size, verbose=0)
    picked = np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    loss = float(-(picked * weights).sum() / weights.sum())
    predicted = token_tags(logits.argmax(-1), first_piece, [len(tokens) for tokens in rows.tokens], names)
    return loss, entity_scores(rows.tags, predicted)


def tag_training(config, tokenizer, splits, train_config):
    """(batches, validation arrays, evaluate, description) of a tagging run."""
    from zoo.families.bert.tagger import encode_tagged

    train_rows, val_rows = splits
    names, seq_len = config["labels"], config["seq_len"]
    inputs, labels, weights, _, truncated = encode_tagged(tokenizer, train_rows.tokens, encode_tags(train_rows, names),
                                                          names, seq_len)
    if truncated.any():
        print(f"note: {int(truncated.sum())} of {len(truncated)} training sentences are longer than --seq-len "
              f"{seq_len} word pieces and were cut", file=sys.stderr)
    batches = RowBatches(inputs, (labels, weights), train_config.batch_size, train_config.seed)

    def evaluate(model):
        loss, scores = tagging_scores(model, tokenizer, val_rows, names, seq_len, train_config.batch_size)
        evaluate.report = {"entities": scores, "sentences": len(val_rows)}
        return {"val_loss": loss, "val_precision": scores["precision"], "val_recall": scores["recall"],
                "val_f1": scores["f1"]}

    evaluate.report = None
    types = len(names) // 2
    return batches, None, evaluate, (f"{types} entity types, {len(train_rows):,} training / {len(val_rows):,} "
                                     "validation sentences, ")
