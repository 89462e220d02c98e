"""`zoo export` and `zoo generate`."""

import json
import time

import click

from cli.common import Progress, backend_option, input_option, read_input, texts_or_input


@click.command()
@backend_option
@click.argument("run", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Directory to write.")
@click.option("--format", "format_", type=click.Choice(["zoo", "hf"]), default="zoo", show_default=True,
              help="zoo: a bundle of a run's newest checkpoint (of a bundle: a copy in the current format, "
                   "with checksums). hf: a Hugging Face model directory (config.json, "
                   "model.safetensors, tokenizer files) of a run or bundle, for transformers, vLLM or TGI; "
                   "a gpt model exports as GPT-2 (GPT2LMHeadModel), a bert one as BertForSequenceClassification "
                   "or BertForMaskedLM.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export(run, out, format_, force):
    """Export a run's newest checkpoint as a self-contained bundle, or a run or bundle as a
    Hugging Face model directory.

    \b
    Example:
      zoo export runs/shakespeare --out bundles/shakespeare
      zoo export bundles/old --out bundles/old-verified
      zoo export bundles/shakespeare --format hf --out hf/shakespeare
      python -c "import transformers; transformers.AutoModelForCausalLM.from_pretrained('hf/shakespeare')"
    """
    if format_ == "hf":
        from zoo.pretrained import export_hf

        path, info = export_hf(run, out, force=force)
        click.echo(f"wrote {path} (Hugging Face format, {info.kind} model)")
        return
    from zoo.bundle import export_bundle

    click.echo(f"wrote {export_bundle(run, out, force=force)}")


@click.command()
@backend_option
@click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
@click.option("--prompt", default=None, help="Text to continue (gpt) or the source text to transform (seq2seq); "
                                             "default empty.")
@click.option("--input", "input_path", metavar="FILE|-", default=None,
              help='Generate for each prompt of FILE in turn: one per line (a .jsonl file: a "text" field per '
                   "line), or standard input with -; instead of --prompt. With --json, one object per line.")
@click.option("--max-new-tokens", type=int, help="Default: up to the end of the context.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k likeliest; 0 is off.")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass; 1 is off.")
@click.option("--seed", type=int, help="Random seed for sampling.")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable).")
@click.option("--truncate-prompt", is_flag=True, help="Cut a prompt that does not fit instead of refusing it.")
@click.option("--beam-width", type=click.IntRange(1), default=None,
              help="seq2seq: beam search with this many beams instead of sampling.")
@click.option("--length-penalty", type=float, default=1.0, show_default=True,
              help="seq2seq beam search: GNMT's length penalty exponent (0: plain sum of log-probs).")
@click.option("--draft", "draft_path", metavar="RUN_OR_BUNDLE", type=click.Path(),
              help="Speculative decoding: a small gpt model with the same tokenizer proposes tokens that the model "
                   "checks several at a time. Greedy output is the model's own; sampled output keeps its "
                   "distribution. Reports the draft's acceptance rate.")
@click.option("--draft-tokens", type=click.IntRange(1, 16), default=4, show_default=True,
              help="With --draft: tokens the draft proposes per pass of the model.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="With --input: prompts generated together, continuously batched (a finished prompt's slot "
                   "takes the next at once); outputs still come in the order of the prompts, each once done. Each slot "
                   "holds a cache of the whole context: more is faster where memory allows. 1: one at a time, each "
                   "streamed as it is made. Default 8; beam search and --draft run one at a time.")
@click.option("--json", "as_json", is_flag=True, help="Print text, token ids and finish reason as JSON.")
def generate(model_path, prompt, input_path, max_new_tokens, temperature, top_k, top_p, seed, stop, truncate_prompt,
             beam_width, length_penalty, draft_path, draft_tokens, batch_size, as_json):
    """Generate text from a run directory or a bundle, streaming it as it is produced.

    For a gpt model the prompt is continued; for a seq2seq model it is the source text and the
    output is its translation (or summary). With --input, each line of the file (or of standard
    input, with -) is a prompt: every prompt is checked first, then they are generated --batch-size
    at a time, continuously batched, with progress on stderr; one output per prompt, in their order.

    \b
    Example:
      zoo generate bundles/shakespeare --prompt "ROMEO." --max-new-tokens 200 --temperature 0.8 --top-k 40
      zoo generate runs/shakespeare --prompt "To be" --temperature 0 --stop "." --json
      zoo generate bundles/shakespeare --input prompts.txt --max-new-tokens 50 --seed 1 --json
      zoo generate bundles/gpt2 --input prompts.jsonl --batch-size 16 --temperature 0 --json > outputs.jsonl
      zoo generate bundles/shakespeare-small --draft bundles/shakespeare-nano --prompt "ROMEO." --temperature 0
      zoo translate bundles/en-fr "Forgot your password?" --beam-width 4
    """
    if prompt is not None and input_path is not None:
        raise click.UsageError("give the prompt with --prompt or the prompts with --input, not both")
    inputs = read_input(input_path) if input_path is not None else None  # a bad file fails fast

    from zoo.bundle import load_runtime
    from zoo.engine import SamplingConfig
    from zoo.engine.sampling import SamplingError
    from zoo.errors import ZooError

    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            seed=seed, stop=tuple(stop), truncate_prompt=truncate_prompt)
    try:
        config.validate()  # before the model loads: bad flags fail fast too
    except SamplingError as e:  # the one validation the server shares, named as the flag here
        raise ZooError(e.named("--" + e.field.replace("_", "-"))) from None
    if draft_path and beam_width:
        raise click.UsageError("--draft speeds up sampling and greedy decoding, not beam search: drop one")
    if batch_size is not None and input_path is None:
        raise click.UsageError("--batch-size goes with --input (prompts generated together)")
    if batch_size is not None and batch_size > 1 and (draft_path or beam_width):
        raise click.UsageError(f"--batch-size {batch_size}: {'--draft' if draft_path else '--beam-width'} "
                               "generates one prompt at a time; drop --batch-size")
    generator, info = load_runtime(model_path, "generate")
    if beam_width and not hasattr(generator, "beam_search"):
        raise ZooError(f"--beam-width: a {info.kind} model has no beam search; sample or decode greedily "
                       "(--temperature 0) instead")
    if draft_path:
        generator = _speculative(generator, draft_path, draft_tokens)
    if inputs is None:
        _generate_one(generator, prompt or "", config, beam_width, length_penalty, as_json)
    elif (batch_size or 8) > 1 and not beam_width and hasattr(generator, "start") and hasattr(generator, "engine"):
        _generate_together(generator, inputs, config, batch_size or 8, as_json)
    else:
        _checked(generator, inputs, config)
        for text in inputs.texts:
            _generate_one(generator, text, config, beam_width, length_penalty, as_json)
    if draft_path and not as_json:
        stats = generator.stats
        click.echo(f"speculative decoding: {stats.accepted}/{stats.proposed} draft tokens accepted "
                   f"({stats.acceptance_rate:.1%}), {stats.tokens_per_pass:.2f} tokens per pass of the model", err=True)


def _speculative(generator, draft_path, draft_tokens):
    """The model's generator decoding speculatively with the draft at `draft_path`."""
    from zoo.bundle import load_runtime
    from zoo.engine.speculative import SpeculativeGenerator
    from zoo.errors import ZooError

    draft, _ = load_runtime(draft_path, "generate")
    try:
        return SpeculativeGenerator(generator, draft, draft_tokens)
    except ZooError as e:
        raise ZooError(f"--draft {draft_path}: {e}") from None


def _checked(generator, inputs, config):
    """--input's prompts checked before any is generated (each one's request made and dropped:
    they are made again one at a time as they run), so a prompt that does not fit fails at once,
    naming its line."""
    from zoo.errors import ZooError

    check = generator.start if hasattr(generator, "start") else generator.prompt_ids
    for i, text in enumerate(inputs.texts):
        try:
            check(text, config)
        except ZooError as e:
            raise ZooError(f"{inputs.where(i)}: {e}") from None


def _generate_together(generator, inputs, config, batch_size, as_json):
    """--input's prompts continuously batched on `batch_size` slots of the generator's engine
    (zoo.engine.slots), each printed once it and those before it are done, with progress on stderr."""
    from zoo.engine.slots import generate_all

    _checked(generator, inputs, config)
    total = len(inputs.texts)
    continuations = (generator.start(text, config) for text in inputs.texts)
    done, finished, tokens, next_index, progress = {}, 0, 0, 0, Progress("prompts")
    for index, result in generate_all(generator.engine, continuations, min(batch_size, total)):
        done[index], finished, tokens = result, finished + 1, tokens + len(result.token_ids)
        elapsed = time.perf_counter() - progress.start
        progress(finished, total, f"{tokens} tokens {tokens / max(elapsed, 1e-9):.1f} tok/s")
        while next_index in done:
            _print_result(done.pop(next_index), inputs.texts[next_index], generator, as_json)
            next_index += 1


def _print_result(result, prompt, generator, as_json):
    """A prompt's output once done: as JSON, or its text (after the prompt, for a continuation)."""
    if not as_json:
        click.echo((prompt if generator.continues_prompt else "") + result.text)
        return
    output = {"text": result.text, "token_ids": result.token_ids, "finish_reason": result.finish_reason,
              "prompt_tokens": result.prompt_tokens}
    stats = getattr(generator, "last_stats", None)  # speculative decoding's, for this prompt
    if stats is not None:
        output["speculation"] = {"proposed": stats.proposed, "accepted": stats.accepted,
                                 "acceptance_rate": stats.acceptance_rate, "tokens_per_pass": stats.tokens_per_pass}
    click.echo(json.dumps(output))


def _generate_one(generator, prompt, config, beam_width, length_penalty, as_json):
    """Generates for one prompt and prints it: streamed as text, or once done as text or JSON."""
    if beam_width:
        result = generator.beam_search(prompt, beam_width, length_penalty, max_new_tokens=config.max_new_tokens,
                                       truncate_prompt=config.truncate_prompt)
    elif as_json:
        result = generator.generate(prompt, config)
    else:
        generator.prompt_ids(prompt, config)  # a prompt that does not fit fails before any of it is printed
        if generator.continues_prompt:  # a continuation reads on from the prompt; a translation does not
            click.echo(prompt, nl=False)
        generator.generate(prompt, config, on_text=lambda text: click.echo(text, nl=False))
        click.echo()
        return
    _print_result(result, prompt, generator, as_json)


def _beam_search_command(name, help):
    """`zoo translate` and `zoo summarize`: one command under the two names users look for."""

    @click.command(name, help=help)
    @backend_option
    @click.argument("model_path", metavar="RUN_OR_BUNDLE", type=click.Path())
    @click.argument("texts", nargs=-1)
    @input_option()
    @click.option("--beam-width", type=click.IntRange(1), default=4, show_default=True, help="1 is greedy decoding.")
    @click.option("--length-penalty", type=float, default=1.0, show_default=True,
                  help="GNMT's length penalty exponent.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text.")
    def command(model_path, texts, input_path, beam_width, length_penalty, as_json):
        texts, _ = texts_or_input(texts, input_path)
        from zoo.bundle import load_runtime
        from zoo.errors import ZooError

        generator, info = load_runtime(model_path, "generate")
        if not hasattr(generator, "beam_search"):
            raise ZooError(f"{model_path}: is a {info.kind} model; zoo {name} needs a model that maps a source text "
                           "to a target text (with beam search), such as a seq2seq model")
        progress = Progress("texts")
        for done, text in enumerate(texts, 1):
            result = generator.beam_search(text, beam_width, length_penalty, truncate_prompt=True)
            if len(texts) > 1:
                progress(done, len(texts))
            if as_json:
                click.echo(json.dumps({"source": text, "text": result.text, "token_ids": result.token_ids,
                                       "finish_reason": result.finish_reason}))
            else:
                click.echo(result.text)

    return command


translate = _beam_search_command("translate", """Translate texts with a seq2seq run or bundle, by beam search; one output line per text.

    The texts are the TEXTS arguments, or the lines of --input FILE (- reads standard input).

    \b
    Example:
      zoo translate bundles/en-fr "Forgot your password?" "Show all results" --beam-width 4
      zoo translate bundles/en-fr --input sentences.txt --json
    """)
summarize = _beam_search_command("summarize", """Summarize texts with a seq2seq run or bundle trained (or imported) to summarize, by beam search.

    The same as `zoo translate`: one output line per text. The texts are the TEXTS arguments, or the
    lines of --input FILE (- reads standard input); score a summarizer with `zoo eval --metric rougeL`.

    \b
    Example:
      zoo import hf://facebook/bart-large-xsum --out bundles/xsum && zoo summarize bundles/xsum --input articles.txt
      zoo summarize runs/headlines "The council approved the new budget on Tuesday after a long debate." --beam-width 4
    """)
