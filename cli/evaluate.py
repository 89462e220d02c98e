"""`zoo classify`, `zoo tag`, `zoo answer` and `zoo eval`."""

import dataclasses
import json

import click

from cli.common import backend_option, context_text, input_option, texts_or_input


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.argument("texts", nargs=-1)
@input_option(pairs=True)
@click.option("--pair", "pairs", multiple=True,
              help="Second segment of each text, for sentence-pair models (repeat once per text).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text, with every class's probability.")
def classify(model_path, texts, input_path, pairs, as_json):
    """Classify texts with a classifier run or bundle: the label and its probability per text.

    The texts are the TEXTS arguments, or the lines of --input FILE (- reads standard input): a
    text that starts with "-" would be taken for an option on the command line.

    \b
    Example:
      zoo classify bundles/language-id "Mot de passe oublié" "Show all results" --json
      zoo classify bundles/language-id --input messages.txt
      zoo classify bundles/sst2-pairs --input pairs.jsonl --json   # {"text": ..., "pair": ...} per line
      cut -f2 reviews.tsv | zoo classify bundles/sentiment --input -
    """
    texts, pairs = texts_or_input(texts, input_path, pairs, takes_pairs=True)
    if pairs and len(pairs) != len(texts):
        raise click.UsageError(f"{len(texts)} texts but {len(pairs)} --pair values: give one per text, or none")
    from zoo.bundle import load_runtime

    classifier, info = load_runtime(model_path, "classify")
    results = classifier.classify(texts, pairs)
    for i, (text, result) in enumerate(zip(texts, results)):
        if as_json:
            record = {"text": text, **({"pair": pairs[i]} if pairs else {}), "label": result.label,
                      "probability": result.probability, "truncated": result.truncated,
                      "classes": dict(zip(info.labels, map(float, result.probabilities)))}
            click.echo(json.dumps(record))
        else:
            click.echo(f"{result.label}\t{result.probability:.4f}\t{text}" + ("\t(truncated)" if result.truncated else ""))


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.argument("texts", nargs=-1)
@input_option()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object per text: its entities with label, text, start, end and score.")
def tag(model_path, texts, input_path, as_json):
    """Find the named entities in texts with a tagger run or bundle (`zoo train bert --task tag`).

    Prints one line per entity: the text's number, the entity's type, its character offsets
    (start inclusive, end exclusive, in characters) and score, and its text. The texts are the
    TEXTS arguments, or the lines of --input FILE (- reads standard input).

    \b
    Example:
      zoo tag runs/wnut17 "Meet me at the Empire State Building with Taylor Swift"
      zoo tag bundles/ner --input tweets.txt --json
    """
    texts, _ = texts_or_input(texts, input_path)
    from zoo.bundle import load_runtime

    tagger, _ = load_runtime(model_path, "tag")
    for i, (text, result) in enumerate(zip(texts, tagger.tag(texts))):
        if as_json:
            click.echo(json.dumps({"text": text, "truncated": result.truncated,
                                   "entities": [dataclasses.asdict(e) for e in result.entities]}))
            continue
        for entity in result.entities:
            click.echo(f"{i}\t{entity.label}\t{entity.start}\t{entity.end}\t{entity.score:.4f}\t{entity.text}")
        if result.truncated:
            click.echo(f"{i}\t(text cut at the model's context: its end was not tagged)", err=True)


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--question", "questions", multiple=True, required=True, help="A question (repeatable).")
@click.option("--context", required=True, metavar="FILE_OR_TEXT",
              help="The text the answers are taken from: a file's path (its UTF-8 text), or the text itself.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per question.")
def answer(model_path, questions, context, as_json):
    """Answer questions from a context with a question-answering run or bundle (`zoo train bert
    --task qa`): the answer is a span of the context.

    Prints one line per question: the answer's score, its character offsets in the context (start
    inclusive, end exclusive) and its text. A long context is read in overlapping windows.

    \b
    Example:
      zoo answer runs/squad --question "Who won Super Bowl 50?" --context article.txt
      zoo answer bundles/qa --question "Where?" --question "When?" --context "We met in Oslo in 2019." --json
    """
    from zoo.bundle import load_runtime

    context = context_text(context)
    answerer, _ = load_runtime(model_path, "qa")
    for question, result in zip(questions, answerer.answer([(q, context) for q in questions])):
        if as_json:
            click.echo(json.dumps({"question": question, **dataclasses.asdict(result)}))
        else:
            click.echo(f"{result.score:.4f}\t{result.start}\t{result.end}\t{result.text}")


@click.command("eval")
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Score every row of this file; default: the validation split the model was trained with.")
@click.option("--beam-width", type=click.IntRange(1), default=4, show_default=True,
              help="seq2seq: the beam width of the beam-search scores.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Print only this metric (repeatable): seq2seq: bleu, chrf, rouge1, rouge2, rougeL; default all. "
                   "--json always has them all.")
@click.option("--baseline", type=click.Path(), default=None, metavar="RUN_OR_BUNDLE",
              help="Also score this model (e.g. the float bundle a quantized one was made from) on the same data, "
                   "and print both and the change of each score.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def evaluate(model_path, data, beam_width, metrics, baseline, as_json):
    """Score a run or bundle on held-out data.

    Language models (gpt, lstm): perplexity and loss on blocks of the context. Classifiers:
    accuracy, macro-F1 and the confusion matrix. Seq2seq models: BLEU and chrF (sacrebleu) and
    ROUGE-1/2/L (rouge-score) of greedy and beam-search decoding, with examples. With --baseline,
    both models on the same data, and the change of the headline scores.

    \b
    Example:
      zoo eval bundles/language-id
      zoo eval runs/sst2 --data glue/SST-2/dev.tsv --json
      zoo eval bundles/en-fr --beam-width 5
      zoo eval bundles/summarizer --data articles.tsv --metric rouge1 --metric rouge2 --metric rougeL
      zoo eval bundles/shakespeare-int8 --baseline bundles/shakespeare
    """
    from zoo.evaluate import evaluate as evaluate_model
    from zoo.evaluate import format_report

    if baseline is not None:
        from zoo.evaluate import compare, format_comparison

        comparison = compare(model_path, baseline, data, beam_width, metrics)
        click.echo(json.dumps(comparison) if as_json else format_comparison(comparison, model_path, baseline, metrics))
        return
    report = evaluate_model(model_path, data, beam_width, metrics)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_report(report, metrics))
