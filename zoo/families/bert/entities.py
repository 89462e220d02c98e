"""Entities from BIO tags, and entity-level precision, recall and F1 (CoNLL's measure).

An entity is a maximal run of words tagged B-X then I-X. Read as conlleval and seqeval (default
mode) read IOB2: a B- tag always starts an entity, and an I- tag that does not continue an entity
of its type starts one too. A predicted entity counts as correct only when its type, first word
and last word all equal a true entity's.

Written here rather than taken from seqeval, the field's usual library: its only release (1.2.2,
2020) is a source package whose setup fetches setuptools_scm at build time, which no longer
builds with current setuptools. The tests check these figures against seqeval's.
"""


def entity_spans(tags):
    """[(type, first word, last word + 1)] of a sentence's tags, in order."""
    spans, current = [], None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            spans.append((current[0], current[1], i))
            current = None
        if prefix in "BI" and not continues:
            current = (kind, i)
    return spans


def _scores(correct, predicted, true):
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "support": true}


def entity_scores(true_tags, predicted_tags):
    """Micro-averaged precision/recall/F1 over every entity of every sentence, and the same per
    entity type ("types"), from parallel lists of tag sequences."""
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"{len(true_tags)} true sentences but {len(predicted_tags)} predicted")
    true, predicted = set(), set()
    for sentence, (gold, guess) in enumerate(zip(true_tags, predicted_tags)):
        if len(gold) != len(guess):
            raise ValueError(f"sentence {sentence}: {len(gold)} true tags but {len(guess)} predicted")
        true.update((sentence, *span) for span in entity_spans(gold))
        predicted.update((sentence, *span) for span in entity_spans(guess))
    correct = true & predicted
    types = sorted({e[1] for e in true | predicted})
    by_type = {kind: _scores(sum(e[1] == kind for e in correct), sum(e[1] == kind for e in predicted),
                             sum(e[1] == kind for e in true)) for kind in types}
    return {**_scores(len(correct), len(predicted), len(true)), "types": by_type}


def format_entity_scores(scores):
    """The scores as a table: one row per type, then the micro average."""
    lines = [f"{'':>16} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}"]
    for name, row in [*scores["types"].items(), ("micro avg", scores)]:
        lines.append(f"{name:>16} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:8d}")
    return "\n".join(lines)
