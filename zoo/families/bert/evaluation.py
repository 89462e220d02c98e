"""`zoo eval` of a BERT classifier (accuracy, macro-F1 and the confusion matrix), tagger
(entity-level precision, recall and F1) or span model (SQuAD's exact match and F1), on a file or
on the validation split the model was trained with."""

from zoo.training.run import training_data


def evaluate_classifier(model, tokenizer, info, data=None):
    """The classification report (see classification_report) of a loaded classifier."""
    from zoo.data.labelled import DEFAULT_LABELLED, encode_labels, read_labelled, split_labelled
    from zoo.families.bert.classifier import Classifier, classification_report

    recorded = info.provenance.get("data") or {}
    columns = {k: recorded.get(k) for k in ("text_column", "label_column", "pair_column")}
    columns["label_column"] = columns["label_column"] or "label"
    if data is not None:
        rows = read_labelled(data, **columns)
    else:
        rows = read_labelled(training_data(recorded, DEFAULT_LABELLED), **columns)
        _, rows = split_labelled(rows, recorded["val_fraction"], (info.provenance.get("train") or {})["seed"])
    true_ids = encode_labels(rows, info.labels)
    probabilities, _ = Classifier(model, tokenizer, info.labels).probabilities(rows.texts, rows.pairs)
    return classification_report(true_ids, probabilities.argmax(axis=1), info.labels)


def evaluate_tagger(model, tokenizer, info, data=None):
    """The entity scores (zoo.families.bert.entities) of a loaded tagger, with its validation loss."""
    from zoo.data.tagged import DEFAULT_TAGGED, read_tagged, split_tagged
    from zoo.families.bert.tag_training import tagging_scores

    recorded = info.provenance.get("data") or {}
    if data is not None:
        rows = read_tagged(data, recorded.get("tag_column"))
    else:
        rows = read_tagged(training_data(recorded, DEFAULT_TAGGED), recorded.get("tag_column"))
        _, rows = split_tagged(rows, recorded["val_fraction"], (info.provenance.get("train") or {})["seed"])
    loss, scores = tagging_scores(model, tokenizer, rows, info.labels, model.max_length)
    return {"loss": loss, "entities": scores, "sentences": len(rows)}


def evaluate_answerer(model, tokenizer, info, data=None):
    """SQuAD's exact match and F1 (zoo.families.bert.squad_scores) of a loaded span model."""
    from zoo.data.squad import DEFAULT_SQUAD, read_squad, split_squad
    from zoo.families.bert.qa_training import answering_scores

    recorded = info.provenance.get("data") or {}
    if data is not None:
        questions = read_squad(data)
    else:
        questions = read_squad(training_data(recorded, DEFAULT_SQUAD))
        _, questions = split_squad(questions, recorded["val_fraction"], (info.provenance.get("train") or {})["seed"])
    loss, scores = answering_scores(model, tokenizer, questions, model.max_length)
    return {"loss": loss, "squad": scores}
