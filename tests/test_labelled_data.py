"""Labelled text for classification: .csv, .tsv (GLUE), .jsonl, labels, splits and every data error."""

import json

import numpy as np
import pytest

from zoo.data import DEFAULT_LABELLED, class_names, encode_labels, read_labelled, split_labelled
from zoo.errors import DataError


@pytest.fixture
def tsv(tmp_path):
    """Writes a GLUE-layout .tsv of (sentence, label) rows; returns its path."""
    def write(name, rows):
        return _write(tmp_path, name, "sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    return write


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_shipped_language_id_data():
    data = read_labelled(DEFAULT_LABELLED)
    assert len(data) == 2223 and data.pairs is None
    assert class_names(data) == ["dutch", "english", "french", "german", "italian", "portuguese", "spanish"]
    assert (data.texts[0], data.labels[0], data.lines[0]) == ("Nascondi i conteggi", "italian", 2)
    assert (DEFAULT_LABELLED.parent / "SOURCE.md").read_text().count("ui_messages_language_id.tsv") >= 1


def test_glue_tsv_with_integer_labels_and_unbalanced_quotes(tmp_path):
    path = _write(tmp_path, "train.tsv", 'sentence\tlabel\nit \'s a "charming journey\t1\nflat\t0\n\nfine\t10\n')
    data = read_labelled(path)
    assert data.texts == ['it \'s a "charming journey', "flat", "fine"] and data.labels == ["1", "0", "10"]
    assert data.lines == [2, 3, 5]
    assert class_names(data) == ["0", "1", "10"]  # numerically: "10" after "1"
    np.testing.assert_array_equal(encode_labels(data, class_names(data)), [1, 0, 2])


def test_csv_with_quoted_commas_named_columns_and_pairs(tmp_path):
    path = _write(tmp_path, "pairs.csv", 'id,premise,hypothesis,gold\n1,"A man, a plan",A canal,entail\n'
                                         '2,It rains,"It is dry, sunny",contradict\n')
    data = read_labelled(path, text_column="premise", pair_column="hypothesis", label_column="gold")
    assert data.texts == ["A man, a plan", "It rains"] and data.pairs == ["A canal", "It is dry, sunny"]
    assert data.labels == ["entail", "contradict"] and class_names(data) == ["contradict", "entail"]
    assert read_labelled(_write(tmp_path, "t.csv", "text,label\nhello,pos\nbye,neg\n")).texts == ["hello", "bye"]
    assert read_labelled(_write(tmp_path, "bom.csv", "\ufefftext,label\nhi,a\n")).labels == ["a"]


def test_jsonl_with_string_and_integer_labels(tmp_path):
    records = [{"text": "good", "label": 1}, {"text": "bad", "label": "0"}, {"text": "meh", "label": 2, "extra": 1}]
    path = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    data = read_labelled(path)
    assert data.texts == ["good", "bad", "meh"] and data.labels == ["1", "0", "2"]
    assert class_names(data) == ["0", "1", "2"]
    pairs = _write(tmp_path, "p.jsonl", json.dumps({"q": "a?", "passage": "b.", "label": "yes"}) + "\n")
    assert read_labelled(pairs, text_column="q", pair_column="passage").pairs == ["b."]


def test_split_is_stratified_deterministic_and_keeps_every_class_in_training(tsv):
    data = read_labelled(DEFAULT_LABELLED)
    train, val = split_labelled(data, 0.1, seed=0)
    again, _ = split_labelled(data, 0.1, seed=0)
    other, _ = split_labelled(data, 0.1, seed=1)
    assert train.texts == again.texts and train.texts != other.texts
    assert len(train) + len(val) == len(data) and not set(train.lines) & set(val.lines)
    assert class_names(train) == class_names(data)
    for name in class_names(data):
        assert val.labels.count(name) == round(data.labels.count(name) * 0.1)
    assert train.lines == sorted(train.lines)  # file order kept
    small = read_labelled(tsv("x.tsv", [("a", "p"), ("b", "p"), ("c", "q")]))
    with pytest.raises(DataError, match="leave none for validation"):
        split_labelled(small, 0.1, 0)


@pytest.mark.parametrize("name, content, message", [
    ("missing.tsv", None, r"missing.tsv: no such file"),
    ("empty.csv", "", r"empty.csv: is empty"),
    ("blank.tsv", "\n  \n", r"blank.tsv: is empty"),
    ("header.tsv", "sentence\tlabel\n", r"header.tsv: has no rows after its header"),
    ("empty.jsonl", "\n\n", r"empty.jsonl: is empty"),
    ("nolabel.tsv", "sentence\tclass\nhi\ta\n", r"nolabel.tsv: no column 'label' \(columns: sentence, class\)"),
    ("notext.csv", "body,label\nhi,a\n",
     r"notext.csv: no text column: expected 'sentence' or 'text'.*\(columns: body, label\)"),
    ("fields.tsv", "sentence\tlabel\nok\ta\nbad\ta\textra\n", r"fields.tsv, line 3: 3 fields, the header has 2"),
    ("fields.csv", "text,label\nok,a\n\nshort\n", r"fields.csv, line 4: 1 fields, the header has 2"),
    ("latin1.tsv", "sentence\tlabel\nok\ta\ncaf\xe9\tb\n".encode("latin-1"), r"latin1.tsv, line 3: not UTF-8"),
    ("nolabel.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n',
     r"nolabel.jsonl, line 2: no 'label' field \(fields: text\)"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": \n', r"bad.jsonl, line 2: not valid JSON"),
    ("float.jsonl", '{"text": "a", "label": 1.5}\n',
     r"float.jsonl, line 1: the 'label' value 1.5 is not a string or an integer"),
    ("nottext.jsonl", '{"text": 3, "label": "a"}\n', r"nottext.jsonl, line 1: the 'text' field is not a string"),
    ("emptylabel.tsv", "sentence\tlabel\nhi\ta\nho\t \n", r"emptylabel.tsv, line 3: empty label in column 'label'"),
    ("data.txt", "hi\n", r"data.txt: unsupported file type '.txt'"),
])
def test_bad_files_name_the_file_line_and_column(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        _write(tmp_path, name, content)
    with pytest.raises(DataError, match=message):
        read_labelled(path)


def test_a_named_column_that_is_missing(tmp_path):
    path = _write(tmp_path, "d.csv", "text,label\nhi,a\n")
    with pytest.raises(DataError, match=r"d.csv: no column 'premise' \(columns: text, label\)"):
        read_labelled(path, text_column="premise")
    with pytest.raises(DataError, match=r"d.csv: no column 'hypothesis'"):
        read_labelled(path, pair_column="hypothesis")


def test_a_single_class_is_refused(tsv):
    data = read_labelled(tsv("one.tsv", [("a", "spam"), ("b", "spam")]))
    with pytest.raises(DataError, match=r"one.tsv: every row has the label 'spam'; a classifier needs at least two"):
        class_names(data)


def test_a_label_unseen_in_training_names_its_line(tsv):
    train = read_labelled(tsv("train.tsv", [("a", "pos"), ("b", "neg")]))
    val = read_labelled(tsv("val.tsv", [("c", "pos"), ("d", "neutral")]))
    with pytest.raises(DataError, match=r"val.tsv, line 3: label 'neutral' does not occur in the training data "
                                        r"\(classes: neg, pos\)"):
        encode_labels(val, class_names(train))
