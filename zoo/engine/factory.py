"""The generator for a loaded model, whatever its kind: one place that knows which engine drives
which model, for `zoo generate`, `zoo eval` and the server alike."""

from zoo.errors import ZooError


def generator_for(kind, model, tokenizer, source_tokenizer=None):
    """A Generator (gpt) or Seq2SeqGenerator (seq2seq; the prompt is the source text, encoded with
    `source_tokenizer`, by default the target's own)."""
    if kind == "gpt":
        from zoo.engine.generation import Generator

        return Generator(model, tokenizer)
    if kind == "seq2seq":
        from zoo.engine.seq2seq import Seq2SeqGenerator

        return Seq2SeqGenerator(model, source_tokenizer or tokenizer, tokenizer)
    raise ZooError(f"a {kind} model does not generate text (it classifies: use zoo classify)")


def load_generator(path):
    """(generator, info) for the run or bundle at `path`."""
    from zoo.bundle import load_model, load_source_tokenizer

    model, tokenizer, info = load_model(path)
    source = load_source_tokenizer(path) if info["kind"] == "seq2seq" else None
    return generator_for(info["kind"], model, tokenizer, source), info
