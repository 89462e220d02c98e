"""Reading a text corpus: a .txt file, a directory of .txt files, or .jsonl with a text field."""

import hashlib
import json
from pathlib import Path

from zoo.errors import DataError

DEFAULT_CORPUS = Path(__file__).parent / "corpora" / "shakespeare.txt"
TEXT_SUFFIXES = (".txt", ".text", ".md")


def _read_utf8(path):
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def jsonl_records(path, text, fields, string_fields=None):
    """(line number, record) for each non-blank line of the .jsonl `text` read from `path`.

    Each record must be a JSON object holding every one of `fields` (None entries are skipped),
    the `string_fields` among them strings (default: all of them); anything else is a DataError
    naming the file, the line and the field.
    """
    fields = [f for f in fields if f is not None]
    string_fields = fields if string_fields is None else [f for f in string_fields if f is not None]
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: not a JSON object")
        for field in fields:
            if field not in record:
                raise DataError(f"{path}, line {number}: no {field!r} field (fields: {', '.join(record) or 'none'})")
        for field in string_fields:
            if not isinstance(record[field], str):
                raise DataError(f"{path}, line {number}: the {field!r} field is not a string")
        yield number, record


def _read_jsonl(path, text_field):
    return [record[text_field] for _, record in jsonl_records(path, _read_utf8(path), [text_field])]


def _corpus_files(path):
    """The files a corpus path stands for, in a fixed order."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.suffix == ".jsonl"))
        if not files:
            raise DataError(f"{path}: directory holds no .txt or .jsonl files")
        return files
    return [path]


def read_documents(path=None, text_field="text"):
    """The documents of a corpus as a list of strings; `path=None` is the shipped default corpus.

    A .jsonl file gives one document per line (its `text_field`); any other file is one document.
    Raises DataError naming the file for a missing path, bad UTF-8, bad JSON or no text at all.
    """
    path = Path(path) if path is not None else DEFAULT_CORPUS
    documents = []
    for file in _corpus_files(path):
        if file.suffix == ".jsonl":
            documents.extend(_read_jsonl(file, text_field))
        else:
            documents.append(_read_utf8(file))
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise DataError(f"{path}: is empty (no text to train on)")
    return documents


def split_documents(documents, val_fraction=0.1):
    """A deterministic (train, validation) split: the last `val_fraction` of the characters.

    The cut falls on a line boundary inside whichever document straddles it, so a single-file
    corpus splits as well as a directory of many files.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
    total = sum(len(d) for d in documents)
    cut = int(total * (1 - val_fraction))
    train, seen = [], 0
    for i, doc in enumerate(documents):
        if seen + len(doc) <= cut:
            train.append(doc)
            seen += len(doc)
            continue
        at = doc.rfind("\n", 0, cut - seen) + 1 or (cut - seen)
        head, tail = doc[:at], doc[at:]
        return train + ([head] if head.strip() else []), ([tail] if tail.strip() else []) + documents[i + 1:]
    return train, []


def data_checksum(path=None):
    """sha256 of the corpus files' bytes in reading order, for the run and bundle provenance."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    digest = hashlib.sha256()
    for file in _corpus_files(path):
        digest.update(file.read_bytes())
    return digest.hexdigest()
