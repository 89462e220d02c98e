"""Pre-tokenized corpora: `zoo prepare` tokenizes a corpus once into token files that later runs
memory-map (`zoo train gpt --data PREPARED`), so no run re-tokenizes and a corpus larger than
memory trains: only each batch's rows are ever read.

A prepared directory holds `meta.json` (format, dtype, token counts, checksums, the source's
settings), `tokenizer.json` (trained on the training split), and `train.bin` / `val.bin`: the
token stream of each split as raw little-endian uint16 (uint32 when the vocabulary needs it).

The corpus is streamed in pieces, never held whole: one pass measures the documents (to place
the validation cut), one trains the tokenizer on the training split, one encodes. The split,
the document separators and the 1 MB encoding pieces follow `split_documents` and
`encode_documents` exactly, so a prepared corpus holds the same tokens as the in-memory path
given the same tokenizer.
"""

import array
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from zoo.atomic import fsync_dir
from zoo.data.blocks import PIECE_CHARS
from zoo.data.text import DEFAULT_CORPUS, _corpus_files  # the same files, in the same order, as read_documents
from zoo.errors import DataError, ZooError

META = "meta.json"
FORMAT = "zoo-prepared-tokens"
VERSION = 1
SPLITS = ("train", "val")
_READ_CHARS = 1 << 20
_PIECES_PER_ENCODE = 8  # ~8 MB of text per encode_batch call: parallel, and a bounded id list


def is_prepared(path):
    return path is not None and Path(path, META).is_file()


def _events(path, text_field):
    """(document index, text chunk) for every document, then (index, None) at its end."""
    index = 0
    for file in _corpus_files(path):
        try:
            with open(file, encoding="utf-8") as f:  # universal newlines, as Path.read_text
                if file.suffix == ".jsonl":
                    for number, line in enumerate(f, 1):
                        if line.strip():
                            yield index, _jsonl_text(file, number, line, text_field)
                            yield index, None
                            index += 1
                else:
                    while chunk := f.read(_READ_CHARS):
                        yield index, chunk
                    yield index, None
                    index += 1
        except UnicodeDecodeError as e:
            raise DataError(f"{file}: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise DataError(f"{file}: cannot read ({e.strerror})") from None


def _jsonl_text(file, number, line, text_field):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{file}, line {number}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or text_field not in record:
        raise DataError(f"{file}, line {number}: no {text_field!r} field")
    if not isinstance(record[text_field], str):
        raise DataError(f"{file}, line {number}: the {text_field!r} field is not a string")
    return record[text_field]


class _Plan:
    """Document lengths and the validation cut, as `split_documents` places it: the training split
    ends at the last line break before `val_fraction` of the characters from the end."""

    def __init__(self, path, text_field, val_fraction):
        if not 0 < val_fraction < 1:
            raise DataError(f"validation fraction {val_fraction} must be between 0 and 1")
        # Compact per-document arrays (9 bytes a document), not lists: a corpus may hold many millions.
        lengths, kept, length, has_text = array.array("q"), bytearray(), 0, False
        for _, chunk in _events(path, text_field):
            if chunk is None:
                lengths.append(length)
                kept.append(has_text)  # whitespace-only documents are dropped, as read_documents does
                length, has_text = 0, False
            else:
                length += len(chunk)
                has_text = has_text or bool(chunk.strip())
        if not any(kept):
            raise DataError(f"{path}: is empty (no text to train on)")
        self.path, self.text_field, self.kept = path, text_field, kept
        self.characters = sum(n for n, k in zip(lengths, kept) if k)
        self.documents = sum(kept)
        cut, seen = int(self.characters * (1 - val_fraction)), 0
        self.straddling, self.cut_in_doc = len(kept), 0  # past the end: no validation text
        for i, (n, k) in enumerate(zip(lengths, kept)):
            if k and seen + n > cut:
                self.straddling, self.cut_in_doc = i, cut - seen
                break
            seen += n if k else 0

    def segments(self):
        """("train" | "val", text) chunks, and ("end", split) closing each logical document: the
        documents before the cut, the straddling one's head, its tail, the ones after."""
        state = {"offset": 0, "pending": "", "newline": False, "done": False}
        for index, chunk in _events(self.path, self.text_field):
            if not self.kept[index]:
                continue
            if index != self.straddling:
                split = "train" if index < self.straddling else "val"
                yield ("end", split) if chunk is None else (split, chunk)
            elif chunk is not None:
                yield from self._straddle(chunk, state)
            else:
                yield "end", "val"

    def _straddle(self, chunk, state):
        # The head ends after the last "\n" before the cut (at the cut when there is none); text
        # after the newest "\n" waits in `pending` until the cut shows which split it joins.
        if state["done"]:
            yield "val", chunk
            return
        room = self.cut_in_doc - state["offset"]
        before, after = chunk[:room], chunk[room:]
        newline = before.rfind("\n")
        if newline >= 0:
            yield "train", state["pending"] + before[:newline + 1]
            state["pending"], state["newline"] = before[newline + 1:], True
        else:
            state["pending"] += before
        state["offset"] += len(chunk)
        if state["offset"] >= self.cut_in_doc:
            state["done"] = True
            if state["newline"]:
                yield "end", "train"
                yield "val", state["pending"] + after
            else:
                yield "train", state["pending"]
                yield "end", "train"
                yield "val", after


class _Pieces:
    """Cuts one logical document, fed in chunks, into `encode_documents`'s pieces: each ends at the
    first line break at least PIECE_CHARS in. A document that is only whitespace gives nothing."""

    def __init__(self):
        self.buffer, self.has_text = "", False

    def feed(self, text):
        self.buffer += text
        self.has_text = self.has_text or bool(text.strip())
        pieces = []
        while self.has_text and (end := self.buffer.find("\n", PIECE_CHARS)) >= 0:
            pieces.append(self.buffer[:end + 1])
            self.buffer = self.buffer[end + 1:]
        return pieces

    def end(self):
        """The last piece(s), or None for a whitespace-only document (no end token either)."""
        if not self.has_text:
            return None
        return [self.buffer] if self.buffer else []


def _documents(plan, only=None):
    """(split, pieces, finished) per step of the stream; `finished` closes a kept document."""
    pieces = _Pieces()
    for kind, value in plan.segments():
        if kind == "end":
            tail = pieces.end()
            pieces = _Pieces()
            if tail is not None and (only is None or value == only):
                yield value, tail, True
            if only is not None and value != only:
                return  # the training split is a prefix of the stream
        elif only is None or kind == only:
            done = pieces.feed(value)
            if done:
                yield kind, done, False
        else:
            return


def _train_tokenizer(plan, kind, vocabulary_size):
    from zoo.tokenizers import train_text_tokenizer

    texts = (piece for _, pieces, _ in _documents(plan, only="train") for piece in pieces)
    return train_text_tokenizer(texts, kind, vocabulary_size)


class _TokenWriter:
    """Encodes queued pieces in batches and appends their ids, and an end token after each
    document, to one file per split; hashes the bytes as it goes."""

    def __init__(self, directory, tokenizer, dtype):
        self.tokenizer, self.dtype, self.digest = tokenizer, dtype, hashlib.sha256()
        self.files = {split: open(directory / f"{split}.bin", "wb") for split in SPLITS}
        self.counts = dict.fromkeys(SPLITS, 0)
        self.queue = []  # (split, piece or None for an end token)

    def add(self, split, pieces, finished):
        self.queue.extend((split, piece) for piece in pieces)
        if finished:
            self.queue.append((split, None))
        if sum(piece is not None for _, piece in self.queue) >= _PIECES_PER_ENCODE:
            self.flush()

    def flush(self):
        encoded = iter(self.tokenizer.encode_batch([p for _, p in self.queue if p is not None]))
        for split, piece in self.queue:
            ids = next(encoded) if piece is not None else [self.tokenizer.end_token_id]
            data = np.asarray(ids, dtype=self.dtype).tobytes()
            self.files[split].write(data)
            self.digest.update(data)  # all training bytes come before any validation bytes
            self.counts[split] += len(ids)
        self.queue = []

    def close(self):
        self.flush()
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()


def _file_checksum(path):
    digest = hashlib.sha256()
    for file in _corpus_files(path):
        with open(file, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()  # = zoo.data.data_checksum, without reading a file whole


def prepare_corpus(out, data=None, tokenizer_kind="bpe", vocabulary_size=2048, val_fraction=0.1, text_field="text"):
    """Tokenizes the corpus at `data` (default: the shipped one) into the prepared directory `out`,
    written beside it under a temporary name and renamed into place. Returns its meta dict."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooError(f"{out}: already exists and is not empty (choose another --out)")
    source = Path(data) if data is not None else DEFAULT_CORPUS
    plan = _Plan(source, text_field, val_fraction)
    tokenizer = _train_tokenizer(plan, tokenizer_kind, vocabulary_size)
    dtype = np.dtype("<u2" if tokenizer.vocabulary_size <= 1 << 16 else "<u4")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = _TokenWriter(tmp, tokenizer, dtype)
        try:
            for split, pieces, finished in _documents(plan):
                writer.add(split, pieces, finished)
        finally:
            writer.close()
        tokenizer.save(tmp)
        meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "sha256": writer.digest.hexdigest(),
                "train_tokens": writer.counts["train"], "val_tokens": writer.counts["val"],
                "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size,
                              "end_token_id": tokenizer.end_token_id},
                "source": {"path": str(data) if data is not None else "shipped:" + source.name,
                           "sha256": _file_checksum(source), "text_field": text_field, "val_fraction": val_fraction,
                           "documents": plan.documents, "characters": plan.characters}}
        (tmp / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        fsync_dir(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(path):
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path / META}: cannot read ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{path}: not a zoo prepared corpus of version {VERSION} (re-run zoo prepare)")
    return meta


class PreparedCorpus:
    """A prepared directory opened for training: `meta`, `tokenizer`, and `train` / `val`, the
    token streams as read-only memory maps."""

    def __init__(self, path):
        from zoo.tokenizers import TextTokenizer

        self.path = Path(path)
        self.meta = read_meta(self.path)
        dtype = np.dtype(self.meta["dtype"])
        self.tokenizer = TextTokenizer.load(self.path)
        for split in SPLITS:
            file, count = self.path / f"{split}.bin", self.meta[f"{split}_tokens"]
            if not file.is_file() or file.stat().st_size != count * dtype.itemsize:
                raise DataError(f"{file}: missing or not the {count} tokens meta.json records (re-run zoo prepare)")
            # np.memmap cannot map an empty file; an empty split is refused later with its reason.
            setattr(self, split, np.memmap(file, dtype=dtype, mode="r") if count else np.zeros(0, dtype))
