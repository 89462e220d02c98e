"""Parallel data for sequence-to-sequence models: reading (source, target) pairs, length
filtering, a deterministic split, and fixed-shape teacher-forcing batches.

Files: .tsv (tab-separated, no quoting: a field never holds a tab or a newline), .csv (RFC 4180,
quoted fields allowed) and .jsonl (one {"source": ..., "target": ...} object per line).

Special tokens: the tokenizers have one special token, END_TOKEN. Like BART's </s>, it serves as
the decoder's start token, as the end token of both sides, and as padding. Padding needs no id of
its own because it is never seen: source padding is hidden by `source_padding_mask`, target
padding sits after the end token where the causal decoder cannot look back at it, and its labels
have sample weight 0.
"""

import csv
import io
from pathlib import Path

import numpy as np

from zoo.data.text import jsonl_records
from zoo.errors import DataError

DEFAULT_PAIRS = Path(__file__).parent / "corpora" / "ui_messages_en_fr.tsv"
SUFFIXES = (".tsv", ".csv", ".jsonl")


def _read_text(path):
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .tsv, .csv or .jsonl")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return data.decode("utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not text
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _rows(path, text):
    """(line number, fields) for each non-blank row of a .tsv or .csv file."""
    if path.suffix == ".tsv":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield number, line.split("\t")
        return
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: malformed quoting is an error
    while True:
        number = reader.line_num + 1  # where the row starts (a quoted field may span lines)
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: not valid CSV ({e})") from None
        if any(f.strip() for f in fields):
            yield number, fields


def _column_index(path, column, header, line, side):
    """The 0-based index of the source or target column, given by header name or index."""
    if isinstance(column, int):
        if not 0 <= column < len(header):
            raise DataError(f"{path}: {side} column {column} is out of range: the header (line {line}) has "
                            f"{len(header)} columns ({', '.join(map(repr, header))})")
        return column
    if column not in header:
        raise DataError(f"{path}: no {side} column {column!r}; the header (line {line}) has "
                        f"{', '.join(map(repr, header))}")
    return header.index(column)


def _check_side(path, number, text, side):
    if not text.strip():
        raise DataError(f"{path}, line {number}: the {side} is empty")
    return text


def _read_table(path, text, source_column, target_column, header):
    rows = list(_rows(path, text))
    if not rows:
        raise DataError(f"{path}: is empty (no pairs)")
    names = [c for c in (source_column, target_column) if isinstance(c, str)]
    if names and header is False:
        raise DataError(f"{path}: columns chosen by name ({', '.join(map(repr, names))}) need a header row")
    first = [f.strip() for f in rows[0][1]]
    if header is None:  # auto: a header names the wanted columns (by default "source" and "target")
        header = bool(names) or all(n in first for n in ("source", "target"))
    if header:
        (line, _), rows = rows[0], rows[1:]
        source = _column_index(path, "source" if source_column is None else source_column, first, line, "source")
        target = _column_index(path, "target" if target_column is None else target_column, first, line, "target")
        if not rows:
            raise DataError(f"{path}: has a header but no pairs")
        width, expected = len(first), "as many as the header"
    else:
        source = 0 if source_column is None else source_column
        target = 1 if target_column is None else target_column
        width = 2 if source_column is None and target_column is None else len(rows[0][1])
        expected = "a source and a target" if width == 2 else "as many as the first row"
        if min(source, target) < 0 or max(source, target) >= width:
            raise DataError(f"{path}, line {rows[0][0]}: column {max(source, target)} is out of range: "
                            f"the row has {width} fields")
    separator = "tab-separated" if path.suffix == ".tsv" else "comma-separated"
    pairs = []
    for number, fields in rows:
        if len(fields) != width:
            raise DataError(f"{path}, line {number}: expected {width} {separator} fields "
                            f"({expected}), found {len(fields)}")
        pairs.append((_check_side(path, number, fields[source], "source"),
                      _check_side(path, number, fields[target], "target")))
    return pairs


def _read_jsonl(path, text, source_field, target_field):
    if isinstance(source_field, int) or isinstance(target_field, int):
        raise DataError(f"{path}: .jsonl fields are chosen by name, not by index")
    source_field, target_field = source_field or "source", target_field or "target"
    pairs = [(_check_side(path, number, record[source_field], "source"),
              _check_side(path, number, record[target_field], "target"))
             for number, record in jsonl_records(path, text, [source_field, target_field])]
    if not pairs:
        raise DataError(f"{path}: is empty (no pairs)")
    return pairs


def read_pairs(path=None, source_column=None, target_column=None, header=None):
    """The (source, target) pairs of a .tsv, .csv or .jsonl file; `path=None` is DEFAULT_PAIRS.

    Columns are given by header name or 0-based index (defaults: "source" and "target" when the
    file has a header, else columns 0 and 1); .jsonl fields by name. `header`: True, False, or
    None to detect one (the first row names the wanted columns). Raises DataError naming the file
    and line for a missing or empty file, bad UTF-8, a missing column, or a row that is not a pair.
    """
    path = Path(path) if path is not None else DEFAULT_PAIRS
    text = _read_text(path)
    if path.suffix == ".jsonl":
        return _read_jsonl(path, text, source_column, target_column)
    return _read_table(path, text, source_column, target_column, header)


def filter_pairs_by_length(pairs, source_tokenizer, target_tokenizer, max_source_length, max_target_length):
    """(kept pairs, number dropped): a pair is kept when each side, with its end token, fits."""
    sources = source_tokenizer.encode_batch([s for s, _ in pairs])
    targets = target_tokenizer.encode_batch([t for _, t in pairs])
    kept = [p for p, s, t in zip(pairs, sources, targets)
            if len(s) + 1 <= max_source_length and len(t) + 1 <= max_target_length]
    return kept, len(pairs) - len(kept)


def split_pairs(pairs, val_fraction=0.1):
    """(train, validation): the validation split is the file's last `val_fraction` of the pairs."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    count = max(1, round(len(pairs) * val_fraction))
    if count >= len(pairs):
        raise DataError(f"{len(pairs)} pairs are too few to split into training and validation")
    return pairs[:-count], pairs[-count:]


def encode_pairs(pairs, source_tokenizer, target_tokenizer):
    """(source ids, target ids): the token ids of each side, without special tokens."""
    return (source_tokenizer.encode_batch([s for s, _ in pairs]),
            target_tokenizer.encode_batch([t for _, t in pairs]))


def _check_lengths(source_ids, target_ids, max_source_length, max_target_length):
    for i, (source, target) in enumerate(zip(source_ids, target_ids)):
        if len(source) + 1 > max_source_length or len(target) + 1 > max_target_length:
            raise DataError(f"pair {i} has {len(source)} source and {len(target)} target tokens: with end tokens "
                            f"that exceeds the maximum lengths {max_source_length} / {max_target_length}; "
                            "filter the pairs by length first")


def _teacher_forcing(source_ids, target_ids, max_source_length, max_target_length, start_id, end_id, pad_id):
    """Fixed-shape arrays for rows of token ids: the source with its end token and its padding
    mask; decoder inputs [start] + target; labels target + [end]; weights 1 on the labels."""
    _check_lengths(source_ids, target_ids, max_source_length, max_target_length)
    n = len(source_ids)
    sources = np.full((n, max_source_length), pad_id, dtype=np.int32)
    inputs = np.full((n, max_target_length), pad_id, dtype=np.int32)
    labels = np.full((n, max_target_length), pad_id, dtype=np.int32)
    weights = np.zeros((n, max_target_length), dtype=np.float32)
    for row, (source, target) in enumerate(zip(source_ids, target_ids)):
        sources[row, :len(source) + 1] = [*source, end_id]
        inputs[row, :len(target) + 1] = [start_id, *target]
        labels[row, :len(target) + 1] = [*target, end_id]
        weights[row, :len(target) + 1] = 1.0
    padding_mask = np.arange(max_source_length)[None, :] < np.asarray([len(s) + 1 for s in source_ids])[:, None]
    return {"source_ids": sources, "source_padding_mask": padding_mask, "target_ids": inputs}, labels, weights


class PairBatches:
    """Teacher-forcing batches of pairs, a pure function of (seed, step), like BlockBatches.

    Each epoch visits every pair once, in an order drawn from `seed` and the epoch number, so a
    resumed run sees exactly the data the uninterrupted run would have seen. Every batch has the
    same shapes (padded to the maximum lengths), so a compiled train step never retraces.
    `.batch(step)` -> (inputs, labels, sample_weight); see `_teacher_forcing`.
    """

    def __init__(self, source_ids, target_ids, max_source_length, max_target_length, batch_size, seed=0,
                 start_id=0, end_id=0, pad_id=0):
        if len(source_ids) != len(target_ids):
            raise ValueError(f"{len(source_ids)} sources but {len(target_ids)} targets")
        if not source_ids:
            raise DataError("the training split has no pairs")
        self.source_ids, self.target_ids = list(source_ids), list(target_ids)
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.batch_size, self.seed = batch_size, seed
        self.ids = dict(start_id=start_id, end_id=end_id, pad_id=pad_id)
        self._epoch, self._order = None, None
        _check_lengths(self.source_ids, self.target_ids, max_source_length, max_target_length)  # fail now, not mid-run

    @property
    def seq_len(self):
        return self.max_target_length

    @property
    def tokens_per_batch(self):
        """Target tokens (labels with weight 1) in a batch, on average over the data: for tokens/s.
        Padding is not counted, as it is not trained on."""
        return round(self.batch_size * (sum(map(len, self.target_ids)) / len(self.target_ids) + 1))

    def _epoch_order(self, epoch):
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source_ids))
            self._epoch = epoch
        return self._order

    def batch(self, step):
        chosen = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, position = divmod(i, len(self.source_ids))
            chosen.append(self._epoch_order(epoch)[position])
        return _teacher_forcing([self.source_ids[i] for i in chosen], [self.target_ids[i] for i in chosen],
                                self.max_source_length, self.max_target_length, **self.ids)

    def epoch_of(self, step):
        return step * self.batch_size / len(self.source_ids)


def validation_pairs(source_ids, target_ids, max_source_length, max_target_length, start_id=0, end_id=0, pad_id=0,
                     max_pairs=None):
    """(inputs, labels, sample_weight) for the validation pairs (up to `max_pairs`, spread evenly)."""
    if not source_ids:
        raise DataError("the validation split has no pairs; use more data or a larger --val-fraction")
    chosen = range(len(source_ids))
    if max_pairs is not None and max_pairs < len(source_ids):
        chosen = np.linspace(0, len(source_ids) - 1, num=max_pairs).astype(int)
    return _teacher_forcing([source_ids[i] for i in chosen], [target_ids[i] for i in chosen],
                            max_source_length, max_target_length, start_id, end_id, pad_id)
