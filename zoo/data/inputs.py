"""Reading the texts a command works on (`zoo classify`, `translate`, `generate`, `client ...`)
from a file or standard input, rather than from the command line.

A .jsonl file holds one JSON object per line with a "text" field (and, where the command takes
sentence pairs, an optional "pair" field: on every line or on none); any other file, and standard
input, holds one text per line. Blank lines are skipped; line endings are dropped, nothing else.
Every problem is a DataError naming the file (or standard input) and, where there is one, the line.
"""

from dataclasses import dataclass
from pathlib import Path

from zoo.data.text import jsonl_records
from zoo.errors import DataError

STDIN = "-"
TEXT_FIELD, PAIR_FIELD = "text", "pair"


@dataclass
class Inputs:
    """The texts read, their pair texts (None when there are none), where they came from, and each
    text's line number there."""

    texts: list
    pairs: list = None
    source: str = ""
    lines: list = None

    def where(self, index):
        """"FILE, line N" of the text at `index`, for an error about it."""
        return f"{self.source}, line {self.lines[index]}"

    def __len__(self):
        return len(self.texts)


def _decode(data, name):
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is dropped
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{name}, line {line}: not UTF-8 text ({e.reason})") from None


def _lines(text):
    """(line number, text) of each non-blank line."""
    return [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _jsonl(text, name, pairs):
    texts, lines, pair_texts, with_pair, without_pair = [], [], [], None, None  # the first line with / without
    for number, record in jsonl_records(name, text, [TEXT_FIELD]):
        if not record[TEXT_FIELD].strip():
            raise DataError(f"{name}, line {number}: the {TEXT_FIELD!r} field is blank")
        texts.append(record[TEXT_FIELD])
        lines.append(number)
        if not pairs:
            continue
        if PAIR_FIELD not in record:
            without_pair = without_pair or number
            if with_pair:
                raise DataError(f"{name}, line {number}: no {PAIR_FIELD!r} field, but line {with_pair} has one "
                                "(give a pair on every line or on none)")
            continue
        if not isinstance(record[PAIR_FIELD], str):
            raise DataError(f"{name}, line {number}: the {PAIR_FIELD!r} field is not a string")
        if without_pair:
            raise DataError(f"{name}, line {number}: a {PAIR_FIELD!r} field, but line {without_pair} has none "
                            "(give a pair on every line or on none)")
        with_pair = with_pair or number
        pair_texts.append(record[PAIR_FIELD])
    return texts, lines, (pair_texts if with_pair else None)


def read_inputs(path, stdin=None, pairs=False):
    """The texts of `path` ("-": `stdin`, a binary or text stream) as Inputs, in order; with
    `pairs`, a .jsonl file's "pair" fields too. Raises DataError for a missing, unreadable or
    empty file, bad UTF-8, and a .jsonl line that is not an object with a string "text"."""
    if path == STDIN:
        name = "standard input"
        data = stdin.read() if stdin is not None else b""
        text = _decode(data, name) if isinstance(data, bytes) else data
        suffix = ""
    else:
        path = Path(path)
        name = str(path)
        if path.is_dir():
            raise DataError(f"{name}: is a directory, not a file of texts")
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{name}: no such file") from None
        except OSError as e:
            raise DataError(f"{name}: cannot read ({e.strerror})") from None
        text, suffix = _decode(data, name), path.suffix.lower()
    if suffix == ".jsonl":
        texts, lines, pair_texts = _jsonl(text, name, pairs)
    else:
        numbered = _lines(text)
        texts, lines, pair_texts = [line for _, line in numbered], [number for number, _ in numbered], None
    if not texts:
        raise DataError(f"{name}: is empty (no texts: one per line, or a .jsonl file with a {TEXT_FIELD!r} field)")
    return Inputs(texts, pair_texts, name, lines)
