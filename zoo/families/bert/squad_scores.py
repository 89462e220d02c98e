"""SQuAD's exact match and F1, as the official v1.1 evaluation script defines them.

An answer is normalized (lower case, punctuation and the articles a/an/the removed, whitespace
collapsed); exact match is whether the normalized prediction equals a normalized gold answer, F1
the harmonic mean of precision and recall of their tokens (a multiset), each taken as the best
over the gold answers, and both averaged over questions, times 100. Written out here because the
official script is a file to copy, not a package (and this is its whole content).
"""

import collections
import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold):
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions, golds):
    """{"exact_match", "f1", "questions"} of predicted answer texts against each question's gold
    answer texts (a list per question)."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = sum(max(exact_match(p, g) for g in gold) for p, gold in zip(predictions, golds))
    f = sum(max(f1(p, g) for g in gold) for p, gold in zip(predictions, golds))
    return {"exact_match": 100 * em / len(golds), "f1": 100 * f / len(golds), "questions": len(golds)}
