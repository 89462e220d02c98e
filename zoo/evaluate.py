"""`zoo eval`: scores a run or bundle on held-out data; what is scored is its family's business
(`Family.evaluate`: accuracy and F1 for classifiers, BLEU, chrF and ROUGE for seq2seq, ...).

Without `data`, the validation split the model was trained with is rebuilt from the provenance
(data path, columns, fraction and seed), so `zoo eval` reproduces the figures `zoo train` printed;
with `data`, every row of that file is scored.

`compare` scores a model and a baseline (a quantized bundle and the float bundle it was made
from, say) on the same data and reports the change of the family's headline scores
(`Family.headline_scores`).
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


def _tokenizer_digests(info):
    """{file: sha256} of a bundle's tokenizer files (every file but the model's), or None for a
    run or a bundle without checksums."""
    files = getattr(info, "files", None)
    if not files:
        return None
    return {name: digest for name, digest in files.items() if name not in ("config.json", "model.weights.h5")}


def check_comparable(path, baseline):
    """Refuses a baseline that cannot be scored on the model's data: another family or task,
    other labels, or another tokenizer (before anything loads)."""
    from zoo.bundle import read_info

    info, base = read_info(path), read_info(baseline)
    if (base.kind, base.task) != (info.kind, info.task):
        raise ZooError(f"--baseline {baseline}: is a {base.kind} model with task {base.task!r}; {path} is a "
                       f"{info.kind} model with task {info.task!r}")
    if base.labels != info.labels:
        raise ZooError(f"--baseline {baseline}: has other labels than {path}")
    mine, theirs = _tokenizer_digests(info), _tokenizer_digests(base)
    if base.tokenizer != info.tokenizer or (mine is not None and theirs is not None and mine != theirs):
        raise ZooError(f"--baseline {baseline}: has another tokenizer than {path}; a baseline must read the same "
                       "token ids (the float bundle a quantized one was made from)")


def compare(path, baseline, data=None, beam_width=4, metrics=()):
    """The reports of the model at `path` and of `baseline` on the same data, and the change of
    each headline score: {"kind", "task", "model": report, "baseline": report, "scores":
    [{"name", "model", "baseline", "change", "higher_is_better"}]}."""
    from zoo.bundle import read_info

    family = families.get(read_info(path).kind)
    check_metrics(family, metrics)
    check_comparable(path, baseline)
    report = evaluate(path, data, beam_width, metrics)
    base = evaluate(baseline, data, beam_width, metrics)
    baseline_scores = {name: value for name, value, _ in family.headline_scores(base, tuple(metrics))}
    scores = [{"name": name, "model": value, "baseline": baseline_scores[name], "change": value - baseline_scores[name],
               "higher_is_better": higher} for name, value, higher in family.headline_scores(report, tuple(metrics))]
    return {"kind": report["kind"], "task": report["task"], "model": report, "baseline": base, "scores": scores}


def format_comparison(comparison, path, baseline, metrics=()):
    """A `compare` result as text: each report as its family lays it out, then a table of the
    headline scores and their change."""
    lines = [f"== {path}", format_report(comparison["model"], metrics), f"== baseline {baseline}",
             format_report(comparison["baseline"], metrics), "== change against the baseline"]
    width = max([len(score["name"]) for score in comparison["scores"]] + [5])
    lines.append(f"{'score':<{width}}  {'model':>12}  {'baseline':>12}  {'change':>12}")
    for score in comparison["scores"]:
        change, better = score["change"], score["higher_is_better"]
        verdict = "same" if change == 0 else ("better" if (change > 0) == better else "worse")
        relative = f" ({change / score['baseline']:+.3%})" if score["baseline"] else ""
        lines.append(f"{score['name']:<{width}}  {score['model']:>12.4f}  {score['baseline']:>12.4f}  "
                     f"{change:>+12.4f}{relative} {verdict}")
    return "\n".join(lines)
