"""What every `zoo` command shares: the --backend option, one-line errors, texts from the command
line or from --input FILE|-, and a long job's progress line."""

import sys
import time
from pathlib import Path

import click

from zoo.backend import (BACKENDS, keep_freed_heap_memory, load_tensorflow_only_for_its_backend, select_backend,
                         use_compilation_cache)
from zoo.errors import ZooError


def _set_backend(ctx, param, value):
    # `zoo --backend X CMD` or $KERAS_BACKEND picks the default; `zoo CMD --backend Y` overrides it.
    try:
        if value is not None or ctx.parent is None:
            load_tensorflow_only_for_its_backend(select_backend(value))
        if ctx.parent is not None:  # the command's own option, with or without a value: final now
            backend = select_backend()
            keep_freed_heap_memory(backend)
            use_compilation_cache(backend)
    except ZooError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None
    return value


def backend_option(command):
    """--backend, applied before the command body runs (and so before keras is imported)."""
    return click.option(
        "--backend", type=click.Choice(BACKENDS), callback=_set_backend, expose_value=False, is_eager=True,
        help="Keras backend; default $KERAS_BACKEND, else jax.")(command)


class ZooGroup(click.Group):
    """Turns ZooError (bad input) into click's one-line `Error: ...` and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as e:
            raise click.ClickException(str(e)) from None


INPUT_HELP = ("Read the texts from FILE, one per line (a .jsonl file: one object per line with a \"text\" "
              "field{pairs}), or from standard input with -; instead of {arguments}.")


def input_option(arguments="TEXTS", pairs=False):
    """--input FILE|-: the texts from a file or standard input instead of the command line (see
    `texts_or_input`). `arguments` names what it replaces, for the help."""
    return click.option("--input", "input_path", metavar="FILE|-", default=None,
                        help=INPUT_HELP.format(arguments=arguments, pairs=' and an optional "pair"' if pairs else ""))


def read_input(input_path, pairs=False):
    """The Inputs of --input (`zoo.data.inputs.read_inputs`), standard input for "-"."""
    from zoo.data.inputs import read_inputs

    return read_inputs(input_path, sys.stdin.buffer, pairs=pairs)


def context_text(value):
    """The text of a --context FILE_OR_TEXT: a file's UTF-8 text when `value` names a file, else
    `value` itself; an empty context is a usage error."""
    path = Path(value)
    try:
        is_file = "\n" not in value and path.is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL in it: text
        is_file = False
    if is_file:
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"{path}: cannot read it as UTF-8 text ({e})", param_hint="--context") from None
    if not value.strip():
        raise click.BadParameter("the context is empty", param_hint="--context")
    return value


def texts_or_input(texts, input_path, pairs=(), takes_pairs=False, arguments="TEXTS"):
    """(texts, pairs or None) of a command that takes texts: its `arguments` on the command line or
    the texts of --input, exactly one of the two (a UsageError naming both otherwise). --pair
    values go with texts on the command line; from a .jsonl file, its "pair" fields."""
    if texts and input_path is not None:
        raise click.UsageError(f"give the texts as {arguments} arguments or with --input, not both")
    if not texts and input_path is None:
        raise click.UsageError(f"no texts: give them as {arguments} arguments, or with --input FILE "
                               "(- for standard input)")
    if input_path is None:
        return list(texts), (list(pairs) or None)
    if pairs:
        raise click.UsageError('--pair goes with texts on the command line; with --input, give each text\'s pair '
                               'in the "pair" field of a .jsonl file')
    inputs = read_input(input_path, pairs=takes_pairs)
    return inputs.texts, inputs.pairs


class Progress:
    """A long job's progress on one stderr line: `progress(done, total, detail)` with elapsed time
    and ETA, rewritten in a terminal, every 10% in a log."""

    def __init__(self, what):
        self.what, self.start, self.shown = what, time.perf_counter(), -1

    def __call__(self, done, total, detail=""):
        tenth = done * 10 // total
        if not sys.stderr.isatty() and tenth == self.shown and done != total:
            return
        self.shown = tenth
        elapsed = time.perf_counter() - self.start
        eta = elapsed / done * (total - done) if done else 0.0
        end = "\n" if done == total or not sys.stderr.isatty() else "\r"
        click.echo(f"{self.what} {done}/{total} ({done * 100 // total}%) {detail}  elapsed {elapsed:.1f}s  "
                   f"eta {eta:.1f}s", err=True, nl=False)
        click.echo(end, err=True, nl=False)
