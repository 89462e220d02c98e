"""The scores of generated texts against references: BLEU and chrF (translation, sacrebleu) and
ROUGE-1/2/L (summarization, Google's `rouge-score`), each computed by its reference library.

BLEU and chrF are corpus scores, sacrebleu's defaults. ROUGE is the mean over pairs of each
pair's F-measure, with rouge-score's Porter stemmer (`use_stemmer=True`, as the CNN/DailyMail and
XSum figures are reported), times 100 like the others. rouge-score's tokenizer keeps a-z and 0-9
only (lower-cased), so ROUGE means something for English-like text; BLEU and chrF suit any script.
Both libraries are imported only when scoring (serving does not need them).
"""

from zoo.errors import ZooError

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")  # the names `--metric` chooses from
NAMES = {"bleu": "BLEU", "chrf": "chrF", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}
ROUGE = ("rouge1", "rouge2", "rougeL")


def corpus_scores(hypotheses, references):
    """{metric: score in [0, 100]} for every metric of METRICS, of `hypotheses` against the
    `references` (one reference per hypothesis)."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ZooError(f"scoring needs sacrebleu and rouge-score ({e.name} is missing): "
                       "pip install sacrebleu rouge-score") from None
    if len(hypotheses) != len(references) or not hypotheses:
        raise ZooError(f"{len(hypotheses)} hypotheses for {len(references)} references: give one of each per pair")
    scores = {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
              "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score}
    scorer = rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)
    totals = dict.fromkeys(ROUGE, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        for name, score in scorer.score(reference, hypothesis).items():  # (target, prediction)
            totals[name] += score.fmeasure
    scores.update({name: 100 * total / len(hypotheses) for name, total in totals.items()})
    return scores


def chosen(metrics):
    """The metrics to print: `metrics` (names from METRICS, checked), or all of them."""
    unknown = [m for m in metrics or () if m not in METRICS]
    if unknown:
        raise ZooError(f"--metric {unknown[0]}: not a metric of this model's report; choose from {', '.join(METRICS)}")
    return tuple(metrics) if metrics else METRICS


def format_line(scores, metrics):
    return "  ".join(f"{NAMES[m]} {scores[m]:.2f}" for m in metrics)
