"""`zoo classify` and `zoo eval`."""

import json

import click

from cli.common import backend_option


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.argument("texts", nargs=-1, required=True)
@click.option("--pair", "pairs", multiple=True,
              help="Second segment of each text, for sentence-pair models (repeat once per text).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text, with every class's probability.")
def classify(model_path, texts, pairs, as_json):
    """Classify texts with a classifier run or bundle: the label and its probability per text.

    \b
    Example:
      zoo classify bundles/language-id "Mot de passe oublié" "Show all results" --json
    """
    from zoo.bundle import load_model
    from zoo.engine.classify import Classifier
    from zoo.errors import ZooError

    if pairs and len(pairs) != len(texts):
        raise click.UsageError(f"{len(texts)} texts but {len(pairs)} --pair values: give one per text, or none")
    model, tokenizer, info = load_model(model_path)
    if info.get("task") != "classify":
        raise ZooError(f"{model_path}: is a {info.get('kind')} model with task {info.get('task')!r}, not a classifier")
    results = Classifier(model, tokenizer, info["labels"]).classify(texts, list(pairs) or None)
    for text, result in zip(texts, results):
        if as_json:
            click.echo(json.dumps({"text": text, "label": result.label, "probability": result.probability,
                                   "truncated": result.truncated,
                                   "classes": dict(zip(info["labels"], map(float, result.probabilities)))}))
        else:
            click.echo(f"{result.label}\t{result.probability:.4f}\t{text}" + ("\t(truncated)" if result.truncated else ""))


@click.command("eval")
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Score every row of this file; default: the validation split the model was trained with.")
@click.option("--beam-width", type=click.IntRange(1), default=4, show_default=True,
              help="seq2seq: the beam width of the beam-search scores.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(model_path, data, beam_width, as_json):
    """Score a run or bundle on held-out data.

    Classifiers: accuracy, macro-F1 and the confusion matrix. Seq2seq models: BLEU and chrF
    (sacrebleu) of greedy and beam-search decoding, with examples.

    \b
    Example:
      zoo eval bundles/language-id
      zoo eval runs/sst2 --data glue/SST-2/dev.tsv --json
      zoo eval bundles/en-fr --beam-width 5
    """
    from zoo.engine.classify import format_report
    from zoo.evaluate import evaluate as evaluate_model
    from zoo.training.seq2seq import format_scores

    report = evaluate_model(model_path, data, beam_width)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_scores(report) if report["kind"] == "seq2seq" else format_report(report))
