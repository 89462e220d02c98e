"""`zoo train bert --task qa`: extractive question answering on SQuAD v1.1 JSON (default: the
shipped XQuAD English set), optionally from a pretrained encoder (`init`). Each question becomes
the windows of zoo.families.bert.answerer; a window whose context piece does not hold the whole
answer is trained to point at [CLS], as BERT's SQuAD recipe does. Scored with SQuAD's exact
match and F1 (zoo.families.bert.squad_scores)."""

import dataclasses

import numpy as np

from zoo.data.mlm import RowBatches
from zoo.data.squad import DEFAULT_SQUAD, read_squad, split_squad
from zoo.errors import ZooError
from zoo.training import run

DEFAULT_QA_LENGTH = 384  # BERT's SQuAD window, or the model's context when shorter


def new_qa_run(data, preset, overrides, vocabulary_size, lowercase, seq_len, val_fraction, doc_stride, init,
               train_config, lora=None):
    """(config, tokenizer, (train, validation) questions) of a new question-answering run."""
    from zoo.families.bert.answerer import default_stride
    from zoo.families.bert.training import encoder_start

    train_rows, val_rows = split_squad(read_squad(data or DEFAULT_SQUAD), val_fraction, train_config.seed)
    contexts = list(dict.fromkeys(q.context for q in train_rows))
    model_config, tokenizer = encoder_start(init, preset, overrides, contexts + [q.question for q in train_rows],
                                            vocabulary_size, lowercase)
    model_config.update(vocabulary_size=tokenizer.vocabulary_size)
    seq_len = seq_len or min(DEFAULT_QA_LENGTH, model_config["max_length"])
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context ({model_config['max_length']} positions)")
    doc_stride = doc_stride or default_stride(seq_len)
    config = {"kind": "bert", "task": "qa", "preset": None if init else preset, "model": model_config,
              "seq_len": seq_len, "doc_stride": doc_stride, "init": str(init) if init else None,
              "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                            "lowercase": tokenizer.lowercase},
              "train": dataclasses.asdict(train_config),
              "data": run.data_entry(data, DEFAULT_SQUAD, val_fraction=val_fraction)}
    if lora and init:
        config["lora"] = {**lora, "head": ["span"]}  # the new head trains whole
    return config, tokenizer, (train_rows, val_rows)


def squad_split(config):
    """The (train, validation) questions of a question-answering run, as they were split."""
    return split_squad(read_squad(run.data_path(config) or DEFAULT_SQUAD), config["data"]["val_fraction"],
                       config["train"]["seed"])


def answering_scores(model, tokenizer, questions, seq_len, doc_stride=None, batch_size=32):
    """(loss over the windows, SQuAD scores) of `model` on `questions`."""
    from zoo.families.bert.answerer import _log_softmax, best_answers, make_windows
    from zoo.families.bert.squad_scores import squad_scores

    pairs = [(q.question, q.context) for q in questions]
    windows, positions = make_windows(tokenizer, pairs, seq_len, doc_stride, [q.answers[0] for q in questions])
    logits = model.predict(windows.inputs, batch_size=batch_size, verbose=0)
    picked = np.take_along_axis(_log_softmax(np.asarray(logits, np.float64)), positions[..., None], axis=-1)
    answers = best_answers(windows, logits, [q.context for q in questions])
    scores = squad_scores([a.text for a in answers], [[text for text, _ in q.answers] for q in questions])
    return float(-picked.mean()), scores


def qa_training(config, tokenizer, splits, train_config):
    """(batches, validation, evaluate, description) of a question-answering run."""
    from zoo.families.bert.answerer import make_windows

    train_rows, val_rows = splits
    seq_len, stride = config["seq_len"], config["doc_stride"]
    windows, positions = make_windows(tokenizer, [(q.question, q.context) for q in train_rows], seq_len, stride,
                                      [q.answers[0] for q in train_rows])
    batches = RowBatches(windows.inputs, (positions,), train_config.batch_size, train_config.seed)

    def evaluate(model):
        loss, scores = answering_scores(model, tokenizer, val_rows, seq_len, stride, train_config.batch_size)
        evaluate.report = {"squad": scores}
        return {"val_loss": loss, "val_exact_match": scores["exact_match"], "val_f1": scores["f1"]}

    evaluate.report = None
    return batches, None, evaluate, (f"{len(train_rows):,} training questions in {len(windows.owner):,} windows / "
                                     f"{len(val_rows):,} validation questions, ")
