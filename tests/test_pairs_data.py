"""Parallel data: reading .tsv/.csv/.jsonl pairs, every error message, length filtering, the
split, and teacher-forcing batches that are a pure function of (seed, step)."""

import json

import numpy as np
import pytest

from zoo.data import (DEFAULT_PAIRS, PairBatches, encode_pairs, filter_pairs_by_length, read_pairs, split_pairs,
                      validation_pairs)
from zoo.errors import DataError
from zoo.tokenizers import train_char


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def test_the_shipped_pairs():
    pairs = read_pairs()
    assert len(pairs) == 1587
    assert pairs[1] == ("File", "Fichier")
    assert all(s.strip() and t.strip() for s, t in pairs)
    assert read_pairs(DEFAULT_PAIRS) == pairs


def test_tsv_with_and_without_header(tmp_path):
    headed = write(tmp_path, "a.tsv", "source\ttarget\nhello\tbonjour\n\n\"quoted\" yes\t« oui »\n")
    assert read_pairs(headed) == [("hello", "bonjour"), ('"quoted" yes', "« oui »")]  # TSV: quotes are text
    bare = write(tmp_path, "b.tsv", "hello\tbonjour\r\ncat\tchat\r\n")
    assert read_pairs(bare) == [("hello", "bonjour"), ("cat", "chat")]
    assert read_pairs(headed, header=False)[0] == ("source", "target")  # told: the first row is data


def test_columns_by_name_or_index(tmp_path):
    path = write(tmp_path, "c.tsv", "id\ten\tfr\n1\tdog\tchien\n2\tcat\tchat\n")
    assert read_pairs(path, source_column="en", target_column="fr") == [("dog", "chien"), ("cat", "chat")]
    assert read_pairs(path, source_column="fr", target_column=1) == [("chien", "dog"), ("chat", "cat")]
    assert read_pairs(path, source_column=2, target_column=0, header=True)[0] == ("chien", "1")
    assert read_pairs(path, source_column=1, target_column=2, header=False)[0] == ("en", "fr")


def test_csv_quoting_and_byte_order_mark(tmp_path):
    text = 'target,source\n"Oui, vraiment","Yes, really"\n"deux\nlignes",two lines\n'
    path = write(tmp_path, "d.csv", "\ufeff" + text)
    assert read_pairs(path) == [("Yes, really", "Oui, vraiment"), ("two lines", "deux\nlignes")]


def test_jsonl_fields(tmp_path):
    lines = [{"source": "a", "target": "b", "id": 1}, {"source": "c", "target": "d"}]
    path = write(tmp_path, "e.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert read_pairs(path) == [("a", "b"), ("c", "d")]
    other = write(tmp_path, "f.jsonl", json.dumps({"en": "dog", "de": "Hund"}) + "\n")
    assert read_pairs(other, source_column="en", target_column="de") == [("dog", "Hund")]


@pytest.mark.parametrize("name, content, options, message", [
    ("empty.tsv", "", {}, r"empty\.tsv: is empty \(no pairs\)"),
    ("blank.csv", "\n  \n", {}, r"blank\.csv: is empty \(no pairs\)"),
    ("empty.jsonl", "\n", {}, r"empty\.jsonl: is empty \(no pairs\)"),
    ("header.tsv", "source\ttarget\n", {}, "has a header but no pairs"),
    ("columns.tsv", "en\tfr\na\tb\n", {"source_column": "src"},
     r"columns\.tsv: no source column 'src'; the header \(line 1\) has 'en', 'fr'"),
    ("columns2.csv", "source,target\na,b\n", {"target_column": "french"},
     r"no target column 'french'; the header \(line 1\) has 'source', 'target'"),
    ("named.tsv", "a\tb\n", {"source_column": "en", "header": False}, r"columns chosen by name \('en'\) need a header"),
    ("index.tsv", "source\ttarget\na\tb\n", {"target_column": 5},
     r"target column 5 is out of range: the header \(line 1\) has 2 columns \('source', 'target'\)"),
    ("index2.tsv", "a\tb\tc\n", {"source_column": 3, "target_column": 0},
     r"index2\.tsv, line 1: column 3 is out of range: the row has 3 fields"),
    ("three.tsv", "source\ttarget\na\tb\nc\td\te\n", {},
     r"three\.tsv, line 3: expected 2 tab-separated fields \(as many as the header\), found 3"),
    ("one.tsv", "a\tb\n\njust one\n", {},
     r"one\.tsv, line 3: expected 2 tab-separated fields \(a source and a target\), found 1"),
    ("one.csv", "a,b\nc\n", {},
     r"one\.csv, line 2: expected 2 comma-separated fields \(a source and a target\), found 1"),
    ("wide.csv", "x,a,b\ny,c\n", {"source_column": 1, "target_column": 2},
     r"wide\.csv, line 2: expected 3 comma-separated fields \(as many as the first row\), found 2"),
    ("side.tsv", "source\ttarget\na\tb\nc\t  \n", {}, r"side\.tsv, line 3: the target is empty"),
    ("side.csv", ",b\n", {}, r"side\.csv, line 1: the source is empty"),
    ("quote.csv", 'a,"b"x\n', {}, r"quote\.csv, line 1: not valid CSV"),
    ("json.jsonl", '{"source": "a", "target": "b"}\n{"source": \n', {}, r"json\.jsonl, line 2: not valid JSON"),
    ("list.jsonl", '["a", "b"]\n', {}, r"list\.jsonl, line 1: not a JSON object"),
    ("field.jsonl", '{"source": "a", "target": "b"}\n{"src": "a", "target": "b"}\n', {},
     r"field\.jsonl, line 2: no 'source' field \(fields: src, target\)"),
    ("number.jsonl", '{"source": "a", "target": 3}\n', {}, r"number\.jsonl, line 1: the 'target' field is not a string"),
    ("blank.jsonl", '{"source": "", "target": "b"}\n', {}, r"blank\.jsonl, line 1: the source is empty"),
    ("index.jsonl", '{"source": "a", "target": "b"}\n', {"source_column": 0}, "chosen by name, not by index"),
    ("notes.txt", "a\tb\n", {}, r"notes\.txt: unsupported file type '\.txt'; use \.tsv, \.csv or \.jsonl"),
])
def test_data_errors(tmp_path, name, content, options, message):
    with pytest.raises(DataError, match=message):
        read_pairs(write(tmp_path, name, content), **options)


def test_missing_file_directory_and_bad_utf8(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.tsv: no such file"):
        read_pairs(tmp_path / "nothere.tsv")
    (tmp_path / "dir.tsv").mkdir()
    with pytest.raises(DataError, match=r"dir\.tsv: not a file"):
        read_pairs(tmp_path / "dir.tsv")
    latin = write(tmp_path, "latin.tsv", "a\tb\nc\td\ncaf\xe9\tcoffee\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"latin\.tsv, line 3: not UTF-8 text \(byte 11: invalid continuation byte\)"):
        read_pairs(latin)


@pytest.fixture(scope="module")
def tokenizer():
    return train_char(["abcdefgh "])


def test_length_filter_counts_what_it_drops(tokenizer):
    pairs = [("abc", "ab"), ("abcdefg", "a"), ("a", "abcdefgh"), ("abcdef", "abcdef"), ("", "")]
    kept, dropped = filter_pairs_by_length(pairs, tokenizer, tokenizer, max_source_length=7, max_target_length=7)
    assert kept == [("abc", "ab"), ("abcdef", "abcdef"), ("", "")]  # each side + its end token must fit
    assert dropped == 2


def test_split_takes_the_end():
    pairs = [(str(i), str(i)) for i in range(20)]
    train, validation = split_pairs(pairs, 0.1)
    assert train == pairs[:18] and validation == pairs[18:]
    assert split_pairs(pairs[:3], 0.01) == (pairs[:2], pairs[2:3])  # at least one for validation
    with pytest.raises(DataError, match="validation fraction 1.5 must be between 0 and 1"):
        split_pairs(pairs, 1.5)
    with pytest.raises(DataError, match="1 pairs are too few to split"):
        split_pairs(pairs[:1], 0.1)


def make_batches(tokenizer, seed=0, count=10):
    pairs = [("abcdefgh"[:1 + i % 5], "hgfedcba"[:1 + i % 6]) for i in range(count)]
    sources, targets = encode_pairs(pairs, tokenizer, tokenizer)
    end = tokenizer.end_token_id
    return PairBatches(sources, targets, 8, 9, batch_size=4, seed=seed, start_id=end, end_id=end, pad_id=end)


def test_batches_are_teacher_forcing_with_fixed_shapes(tokenizer):
    batches = make_batches(tokenizer)
    end = tokenizer.end_token_id
    inputs, labels, weights = batches.batch(0)
    assert inputs["source_ids"].shape == inputs["source_padding_mask"].shape == (4, 8)
    assert inputs["target_ids"].shape == labels.shape == weights.shape == (4, 9)
    for row in range(4):
        source = inputs["source_ids"][row][inputs["source_padding_mask"][row]]
        assert source[-1] == end and end not in source[:-1]  # the source, then its end token
        n = int(weights[row].sum())
        target = labels[row, :n - 1]
        assert list(labels[row, :n]) == [*target, end]
        assert list(inputs["target_ids"][row, :n]) == [end, *target]  # shifted right behind the start token
        assert not weights[row, n:].any() and (labels[row, n:] == end).all()
    assert inputs["source_ids"].dtype == labels.dtype == np.int32 and weights.dtype == np.float32
    assert batches.seq_len == 9
    assert batches.tokens_per_batch == round(4 * (np.mean([1 + i % 6 for i in range(10)]) + 1))


def test_batches_are_a_function_of_seed_and_step(tokenizer):
    a, b = make_batches(tokenizer, seed=1), make_batches(tokenizer, seed=1)
    for step in (7, 0, 3, 7):  # any order: a resumed run sees what the uninterrupted one saw
        for x, y in zip(a.batch(step), b.batch(step)):
            if isinstance(x, dict):
                assert all(np.array_equal(x[k], y[k]) for k in x)
            else:
                assert np.array_equal(x, y)
    other = make_batches(tokenizer, seed=2)
    assert not np.array_equal(a.batch(0)[1], other.batch(0)[1])
    assert a.epoch_of(5) == pytest.approx(2.0)
    # Each epoch (10 pairs; steps 0-4 hold two) visits every pair once, in its own order.
    seen = [tuple(row) for step in range(5) for row in np.concatenate([a.batch(step)[0]["source_ids"],
                                                                       a.batch(step)[1]], axis=1)]
    assert len(set(seen[:10])) == 10 and set(seen[10:]) == set(seen[:10]) and seen[10:] != seen[:10]


def test_batch_errors(tokenizer):
    sources, targets = encode_pairs([("abcdefgh", "a")], tokenizer, tokenizer)
    with pytest.raises(DataError, match="pair 0 has 8 source and 1 target tokens: .* exceeds the maximum lengths 8 / 9"):
        PairBatches(sources, targets, 8, 9, batch_size=2)
    with pytest.raises(DataError, match="the training split has no pairs"):
        PairBatches([], [], 8, 9, batch_size=2)


def test_validation_pairs(tokenizer):
    sources, targets = encode_pairs([("ab", "ba"), ("abc", "cba"), ("a", "a"), ("abcd", "dcba")], tokenizer, tokenizer)
    inputs, labels, weights = validation_pairs(sources, targets, 6, 6, 0, 0, 0)
    assert labels.shape == (4, 6) and weights.sum(axis=1).tolist() == [3, 4, 2, 5]
    assert inputs["source_padding_mask"].sum(axis=1).tolist() == [3, 4, 2, 5]
    some = validation_pairs(sources, targets, 6, 6, 0, 0, 0, max_pairs=2)
    assert some[2].sum(axis=1).tolist() == [3, 5]  # the first and the last
    with pytest.raises(DataError, match="the validation split has no pairs"):
        validation_pairs([], [], 6, 6)
