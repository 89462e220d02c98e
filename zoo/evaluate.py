"""`zoo eval`: scores a run or bundle on held-out data; what is scored is its family's business
(`Family.evaluate`: accuracy and F1 for classifiers, BLEU, chrF and ROUGE for seq2seq, ...).

Without `data`, the validation split the model was trained with is rebuilt from the provenance
(data path, columns, fraction and seed), so `zoo eval` reproduces the figures `zoo train` printed;
with `data`, every row of that file is scored.
"""

from zoo import families
from zoo.errors import ZooError


def check_metrics(family, metrics):
    """Refuses a `--metric` the family's report does not have (before anything is scored)."""
    for metric in metrics:
        if metric not in family.report_metrics:
            choices = f"choose from {', '.join(family.report_metrics)}" if family.report_metrics else \
                "its report is printed whole (--json gives every figure)"
            raise ZooError(f"--metric {metric}: not a score of a {family.name} model's report; {choices}")


def evaluate(path, data=None, beam_width=4, metrics=()):
    """The evaluation report of the run or bundle at `path` (a dict; "kind" and "task" included).
    `metrics`: the `--metric` names that will be printed, checked against the family's first."""
    from zoo.bundle import load_model, read_info

    check_metrics(families.get(read_info(path).kind), metrics)
    model, tokenizer, info = load_model(path)
    report = families.get(info.kind).evaluate(model, tokenizer, info, path, data, beam_width)
    return {"kind": info.kind, "task": info.task, **report}


def format_report(report, metrics=()):
    """A report from `evaluate` as text, as its family lays it out (`metrics`: only those)."""
    return families.get(report["kind"]).format_report(report, tuple(metrics))
