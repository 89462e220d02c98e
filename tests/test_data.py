"""Corpus reading, splitting and block packing."""

import json

import numpy as np
import pytest

from zoo.data import (DEFAULT_CORPUS, BlockBatches, encode_documents, read_documents, split_documents,
                      validation_blocks)
from zoo.errors import DataError
from zoo.tokenizers import train_char

pytestmark = pytest.mark.backend_independent


def test_shipped_corpus_is_real_text_of_the_promised_size():
    size = DEFAULT_CORPUS.stat().st_size
    assert 1_000_000 <= size <= 5_000_000
    text = DEFAULT_CORPUS.read_text(encoding="utf-8")
    assert "To be, or not to be" in text and "ROMEO" in text
    assert (DEFAULT_CORPUS.parent / "SOURCE.md").is_file()


def test_reads_txt_directory_and_jsonl(tmp_path):
    (tmp_path / "one.txt").write_text("first file\n", encoding="utf-8")
    nested = tmp_path / "sub"
    nested.mkdir()
    (nested / "two.txt").write_text("second file\n", encoding="utf-8")
    (nested / "ignored.bin").write_bytes(b"\x00\x01")
    assert read_documents(tmp_path / "one.txt") == ["first file\n"]
    assert read_documents(tmp_path) == ["first file\n", "second file\n"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["a b", "c d"])) + "\n")
    assert read_documents(jsonl) == ["a b", "c d"]
    jsonl.write_text(json.dumps({"body": "x"}) + "\n")
    assert read_documents(jsonl, text_field="body") == ["x"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("", "is empty"),
    ("   \n\n", "is empty"),
])
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_documents(path)


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        read_documents(path)
    path.write_text('{"text": "ok"}\n{"other": "x"}\n')
    with pytest.raises(DataError, match="line 2: no 'text' field"):
        read_documents(path)


def test_non_utf8_and_empty_directory(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_documents(tmp_path / "latin1.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no .txt"):
        read_documents(empty)


def test_split_is_deterministic_on_line_boundaries_and_loses_nothing():
    docs = ["line one\nline two\n" * 30, "another doc\n" * 20]
    train, val = split_documents(docs, 0.1)
    assert (train, val) == split_documents(docs, 0.1)
    assert "".join(train) + "".join(val) == "".join(docs)
    assert all(part.endswith("\n") for part in train)
    share = sum(map(len, val)) / sum(map(len, docs))
    assert 0.05 < share < 0.15


def test_single_document_splits_too():
    train, val = split_documents(["x\n" * 1000], 0.2)
    assert len(train) == 1 and len(val) == 1 and len(val[0]) == 400


def test_blocks_are_a_function_of_the_step_and_shifted_by_one():
    tokens = np.arange(1000, dtype=np.int32)
    a, b = BlockBatches(tokens, 16, 4, seed=3), BlockBatches(tokens, 16, 4, seed=3)
    for step in [0, 5, 17, 100, 3]:  # out of order, across epochs
        x, y = a.batch(step)
        x2, y2 = b.batch(step)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
        assert x.shape == (4, 16)
    seen = np.concatenate([a.batch(s)[0][:, 0] for s in range(a.blocks_per_epoch // 4)])
    assert len(set(seen.tolist())) == len(seen)  # an epoch never repeats a block
    assert not np.array_equal(BlockBatches(tokens, 16, 4, seed=4).batch(0)[0], a.batch(0)[0])


def test_too_little_data_for_one_block():
    with pytest.raises(DataError, match="fewer than the 33 needed"):
        BlockBatches(np.arange(20, dtype=np.int32), 16, 2)
    with pytest.raises(DataError, match="validation split has 10 tokens"):
        validation_blocks(np.arange(10, dtype=np.int32), 16, 8)


def test_encode_documents_separates_documents_with_the_end_token():
    tokenizer = train_char(["abc"])
    stream = encode_documents(tokenizer, ["ab", "ca"])
    assert stream.tolist() == tokenizer.encode("ab") + [tokenizer.end_token_id] + tokenizer.encode("ca") + [tokenizer.end_token_id]


def test_character_tokens_come_from_numpy_exactly_as_from_the_tokenizer():
    """encode_documents encodes with a character tokenizer's vocabulary in NumPy (a twentieth of the
    time): the tokenizer's own ids, unseen characters as their UTF-8 bytes' tokens included, and a
    document holding the end token's text left to the tokenizer."""
    tokenizer = train_char(["the quick brown fox\n"])
    documents = ["quick fox\nthe end", "unseen: é, 日本, 😀 and tabs\t", "a <|endoftext|> b"]
    expected = []
    for doc in documents:
        expected += tokenizer.encode(doc) + [tokenizer.end_token_id]
    assert encode_documents(tokenizer, documents).tolist() == expected
    shipped = read_documents()[0][:200_000]
    tokenizer = train_char([shipped[:150_000]])
    assert encode_documents(tokenizer, [shipped]).tolist() == tokenizer.encode(shipped) + [tokenizer.end_token_id]
