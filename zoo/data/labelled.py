"""Reading labelled text for classification: .csv, .tsv (GLUE layout) and .jsonl.

A .csv or .tsv file has a header row; the text column is `sentence` (GLUE) or `text` unless
named, the label column is `label` unless named, and an optional second text column makes
sentence pairs. A .tsv file is read without quote handling, as GLUE's are (a sentence may hold an
unbalanced quote). A .jsonl file has one object per line with `text` and `label` fields. Labels
may be strings or integers and are kept as strings; the class names are the distinct training
labels, sorted (numerically when they are all integers).

Every problem is a DataError naming the file and, where there is one, the line and the column.
"""

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoo.data.text import jsonl_records
from zoo.errors import DataError

DEFAULT_LABELLED = Path(__file__).parent / "corpora" / "ui_messages_language_id.tsv"
SUFFIXES = (".csv", ".tsv", ".jsonl")
_INTEGER = re.compile(r"-?\d+")


@dataclass
class LabelledData:
    """Rows of (text, optional pair text, label); `lines` are the rows' line numbers in `source`."""

    texts: list
    labels: list
    pairs: list = None
    source: str = ""
    lines: list = None

    def __len__(self):
        return len(self.texts)

    def subset(self, indices):
        """The rows at `indices`, in that order."""
        def pick(values):
            return None if values is None else [values[i] for i in indices]
        return LabelledData(pick(self.texts), pick(self.labels), pick(self.pairs), self.source, pick(self.lines))


def _read_text(path):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a {', '.join(SUFFIXES)} file")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; give a {', '.join(SUFFIXES)} file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as spreadsheet programs write, is dropped
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise DataError(f"{path}: is empty (no rows)")
    return text


def _label(path, line, column, value):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{path}, line {line}: the {column!r} value {value!r} is not a string or an integer")
    value = str(value).strip()
    if not value:
        raise DataError(f"{path}, line {line}: empty label in column {column!r}")
    return value


def _read_table(path, text, text_column, label_column, pair_column):
    tsv = path.suffix == ".tsv"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
    header = [name.strip() for name in next(reader)]
    present = ", ".join(header)
    if text_column is None:
        text_column = next((name for name in ("sentence", "text") if name in header), None)
        if text_column is None:
            raise DataError(f"{path}: no text column: expected 'sentence' or 'text', or name one "
                            f"(columns: {present})")
    for column in (text_column, label_column, pair_column):
        if column is not None and column not in header:
            raise DataError(f"{path}: no column {column!r} (columns: {present})")
    t, l, p = (None if c is None else header.index(c) for c in (text_column, label_column, pair_column))
    rows = []
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, the header has "
                                f"{len(header)} ({present})")
            rows.append((row[t], None if p is None else row[p],
                         _label(path, reader.line_num, label_column, row[l]), reader.line_num))
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: {e}") from None
    return rows


def _read_jsonl(path, text, text_column, label_column, pair_column):
    return [(record[text_column], None if pair_column is None else record[pair_column],
             _label(path, number, label_column, record[label_column]), number)
            for number, record in jsonl_records(path, text, [text_column, label_column, pair_column],
                                                string_fields=[text_column, pair_column])]


def read_labelled(path, text_column=None, label_column="label", pair_column=None):
    """The rows of a labelled .csv, .tsv or .jsonl file as LabelledData (labels as strings).

    `text_column` defaults to `sentence` or `text` (whichever the header has) for .csv/.tsv and
    to `text` for .jsonl; `pair_column` names the second text of sentence pairs.
    """
    path = Path(path)
    text = _read_text(path)
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path, text, text_column or "text", label_column, pair_column)
    else:
        rows = _read_table(path, text, text_column, label_column, pair_column)
    if not rows:
        raise DataError(f"{path}: has no rows{' after its header' if path.suffix != '.jsonl' else ''}")
    texts, pairs, labels, lines = (list(column) for column in zip(*rows))
    return LabelledData(texts, labels, pairs if pair_column is not None else None, str(path), lines)


def class_names(data):
    """The sorted distinct labels of the training data (numerically if all are integers).

    Raises DataError when there is only one: a classifier needs two classes at least.
    """
    names = set(data.labels)
    if len(names) < 2:
        raise DataError(f"{data.source}: every row has the label {next(iter(names))!r}; "
                        "a classifier needs at least two classes")
    if all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def encode_labels(data, names):
    """The labels of `data` as int32 class indices into `names` (the training classes).

    Raises DataError naming the line of the first label that is not one of `names`.
    """
    index = {name: i for i, name in enumerate(names)}
    for label, line in zip(data.labels, data.lines):
        if label not in index:
            raise DataError(f"{data.source}, line {line}: label {label!r} does not occur in the training data "
                            f"(classes: {', '.join(names)})")
    return np.array([index[label] for label in data.labels], dtype=np.int32)


def split_labelled(data, val_fraction=0.1, seed=0):
    """A deterministic, stratified (train, validation) split of `data`.

    Each class gives `val_fraction` of its rows (rounded) to validation, chosen by `seed`, but
    always keeps one for training; rows keep their file order within each split.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    rng = np.random.default_rng(seed)
    labels = np.array(data.labels)
    validation = []
    for name in sorted(set(data.labels)):
        rows = rng.permutation(np.flatnonzero(labels == name))
        take = min(int(round(len(rows) * val_fraction)), len(rows) - 1)
        validation.extend(rows[:take].tolist())
    if not validation:
        raise DataError(f"{data.source}: {len(data)} rows leave none for validation at fraction {val_fraction}; "
                        "use more data or a larger fraction")
    chosen = set(validation)
    train = [i for i in range(len(data)) if i not in chosen]
    return data.subset(train), data.subset(sorted(chosen))
