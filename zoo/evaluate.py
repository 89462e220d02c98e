"""`zoo eval`: scores a run or bundle on held-out data; what is scored is its family's business
(`Family.evaluate`: accuracy and F1 for classifiers, BLEU and chrF for seq2seq, ...).

Without `data`, the validation split the model was trained with is rebuilt from the provenance
(data path, columns, fraction and seed), so `zoo eval` reproduces the figures `zoo train` printed;
with `data`, every row of that file is scored.
"""

from zoo import families


def evaluate(path, data=None, beam_width=4):
    """The evaluation report of the run or bundle at `path` (a dict; "kind" and "task" included)."""
    from zoo.bundle import load_model

    model, tokenizer, info = load_model(path)
    report = families.get(info.kind).evaluate(model, tokenizer, info, path, data, beam_width)
    return {"kind": info.kind, "task": info.task, **report}


def format_report(report):
    """A report from `evaluate` as text, as its family lays it out."""
    return families.get(report["kind"]).format_report(report)
