"""`zoo eval`: scores a run or bundle on held-out data, whatever its kind.

Without `data`, the validation split the model was trained with is rebuilt from the provenance
(data path, columns, fraction and seed), so `zoo eval` reproduces the figures `zoo train` printed;
with `data`, every row of that file is scored.
"""

from pathlib import Path

from zoo.errors import ZooError


def _provenance(info):
    """The training settings a model was made with: a run's config or a bundle's provenance."""
    provenance = info.get("provenance") or {}
    return {"data": provenance.get("data") or {}, "train": provenance.get("train") or {}}


def _training_data(settings, default):
    """Where the model's training data is: the shipped `default`, or the recorded path if it is here."""
    from zoo.training.run import SHIPPED

    path = settings["data"].get("path", "")
    source = default if path.startswith(SHIPPED) else Path(path)
    if not source.is_file():
        raise ZooError(f"the training data {path} is not here; give the evaluation data with --data")
    return source


def evaluate_classifier(model, tokenizer, info, data=None):
    """Accuracy, macro-F1 and the confusion matrix of a BERT classifier (see classification_report)."""
    from zoo.data.labelled import DEFAULT_LABELLED, encode_labels, read_labelled, split_labelled
    from zoo.engine.classify import Classifier, classification_report

    settings = _provenance(info)
    columns = {k: settings["data"].get(k) for k in ("text_column", "label_column", "pair_column")}
    columns["label_column"] = columns["label_column"] or "label"
    if data is not None:
        rows = read_labelled(data, **columns)
    else:
        _, rows = split_labelled(read_labelled(_training_data(settings, DEFAULT_LABELLED), **columns), settings["data"]["val_fraction"],
                                 settings["train"]["seed"])
    labels = info["labels"]
    true_ids = encode_labels(rows, labels)
    probabilities, _ = Classifier(model, tokenizer, labels).probabilities(rows.texts, rows.pairs)
    return classification_report(true_ids, probabilities.argmax(axis=1), labels)


def evaluate_translator(model, tokenizer, info, path, data=None, beam_width=4):
    """BLEU and chrF, greedy and beam search, of a seq2seq model (see translation_scores)."""
    from zoo.bundle import load_source_tokenizer
    from zoo.data.pairs import DEFAULT_PAIRS, read_pairs, split_pairs
    from zoo.training.seq2seq import translation_scores

    settings = _provenance(info)
    columns = {k: settings["data"].get(k) for k in ("source_column", "target_column")}
    if data is not None:
        pairs = read_pairs(data, **columns)
    else:
        _, pairs = split_pairs(read_pairs(_training_data(settings, DEFAULT_PAIRS), **columns),
                               settings["data"]["val_fraction"])
    return translation_scores(model, load_source_tokenizer(path), tokenizer, pairs, beam_width)


def evaluate(path, data=None, beam_width=4):
    """The evaluation report of the run or bundle at `path` (a dict; "kind" and "task" included)."""
    from zoo.bundle import load_model

    model, tokenizer, info = load_model(path)
    kind, task = info["kind"], info["task"]
    if kind == "bert" and task == "classify":
        report = evaluate_classifier(model, tokenizer, info, data)
    elif kind == "seq2seq":
        report = evaluate_translator(model, tokenizer, info, path, data, beam_width)
    else:
        raise ZooError(f"zoo eval scores classifiers and seq2seq models; for a {kind} model, see the validation "
                       "loss in its metrics.jsonl")
    return {"kind": kind, "task": task, **report}
