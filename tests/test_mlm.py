"""Masked-LM masking and batches, classification batches, and the WordPiece tokenizer."""

import json

import numpy as np
import pytest

from zoo.data import ClassificationBatches, MLMBatches, class_weights_balanced, mask_tokens, mlm_sequences
from zoo.errors import DataError, ZooError
from zoo.tokenizers import TextTokenizer, WordPieceTokenizer, load_tokenizer, train_char, train_wordpiece

VOCAB, SPECIALS, MASK = 1000, [0, 1, 2, 3, 4], 4  # [PAD] [UNK] [CLS] [SEP] [MASK]


def _sequences(rows, length, seed=0, min_length=20):
    """[CLS] ordinary tokens [SEP] then padding, rows of random lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min(min_length, length), length + 1, rows)
    token_ids = rng.integers(len(SPECIALS), VOCAB, (rows, length)).astype(np.int32)
    padding_mask = np.arange(length)[None, :] < lengths[:, None]
    token_ids[np.arange(rows), lengths - 1] = 3
    token_ids[:, 0] = 2
    token_ids[~padding_mask] = 0
    return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}


def test_masking_statistics_follow_bert():
    seqs = _sequences(2000, 128)
    inputs, targets, weight = mask_tokens(seqs["token_ids"], seqs["padding_mask"], np.random.default_rng(0),
                                          VOCAB, SPECIALS, MASK)
    original, positions, used = seqs["token_ids"], inputs["mask_positions"], weight > 0
    assert positions.shape == targets.shape == weight.shape == (2000, 20)  # ceil(128 * 0.15)
    ordinary = seqs["padding_mask"] & ~np.isin(original, SPECIALS)
    assert abs(used.sum() / ordinary.sum() - 0.15) < 0.01
    rows = np.nonzero(used)[0]
    chosen_original = original[rows, positions[used]]
    assert not np.isin(chosen_original, SPECIALS).any()  # never [CLS], [SEP] or padding
    assert seqs["padding_mask"][rows, positions[used]].all()
    np.testing.assert_array_equal(targets[used], chosen_original)
    # Each row's chosen positions are distinct and in order; unused slots point at 0 with weight 0.
    assert all(np.all(np.diff(p[u]) > 0) for p, u in zip(positions, used))
    assert (positions[~used] == 0).all() and (targets[~used] == 0).all()
    now = inputs["token_ids"][rows, positions[used]]
    masked, kept = now == MASK, now == chosen_original
    randomised = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02 and abs(kept.mean() - 0.1) < 0.02 and abs(randomised.mean() - 0.1) < 0.02
    assert not np.isin(now[randomised], SPECIALS).any()
    # Nothing but the chosen positions changes.
    changed = inputs["token_ids"] != original
    changed[rows, positions[used]] = False
    assert not changed.any()
    np.testing.assert_array_equal(inputs["padding_mask"], seqs["padding_mask"])


def test_every_row_with_ordinary_tokens_gets_a_prediction_and_others_none():
    token_ids = np.array([[2, 9, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0], [2, 9, 10, 11, 12, 3]], dtype=np.int32)
    inputs, targets, weight = mask_tokens(token_ids, token_ids != 0, np.random.default_rng(1), VOCAB, SPECIALS, MASK)
    assert weight.sum(axis=1).tolist() == [1, 0, 1]  # round(4 * 0.15) = 1, and at least one
    assert targets[0, 0] == 9 and inputs["mask_positions"][0, 0] == 1


def _assert_same_batch(a, b):
    (inputs_a, *arrays_a), (inputs_b, *arrays_b) = a, b
    assert inputs_a.keys() == inputs_b.keys()
    for key in inputs_a:
        np.testing.assert_array_equal(inputs_a[key], inputs_b[key])
    for x, y in zip(arrays_a, arrays_b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_masks_are_dynamic_and_a_pure_function_of_seed_and_step():
    seqs = _sequences(1, 64, min_length=64)
    batches = MLMBatches(seqs, 1, seed=3, vocabulary_size=VOCAB, special_ids=SPECIALS, mask_token_id=MASK)
    assert batches.seq_len == 64 and batches.tokens_per_batch == 64 and batches.max_predictions == 10
    step_0, step_1 = batches.batch(0), batches.batch(1)  # the same row, another epoch
    assert not np.array_equal(step_0[0]["mask_positions"], step_1[0]["mask_positions"])
    resumed = MLMBatches(seqs, 1, seed=3, vocabulary_size=VOCAB, special_ids=SPECIALS, mask_token_id=MASK)
    _assert_same_batch(resumed.batch(1), step_1)
    other_seed = MLMBatches(seqs, 1, seed=4, vocabulary_size=VOCAB, special_ids=SPECIALS, mask_token_id=MASK)
    assert not np.array_equal(other_seed.batch(1)[0]["mask_positions"], step_1[0]["mask_positions"])
    # The validation batch is fixed: the one a fresh object gives before any training batch, after
    # the training batches above (which moved it to another epoch), and after a resume.
    fresh = MLMBatches(seqs, 1, seed=3, vocabulary_size=VOCAB, special_ids=SPECIALS, mask_token_id=MASK).fixed(10)
    _assert_same_batch(batches.fixed(10), fresh)
    _assert_same_batch(resumed.fixed(10), fresh)
    assert fresh[2].sum() > 0  # it masks something to predict


def test_batches_visit_every_row_once_per_epoch_in_a_fresh_order():
    seqs = _sequences(10, 16)
    batches = ClassificationBatches(seqs, np.arange(10), batch_size=5, seed=0)
    epochs = [np.concatenate([batches.batch(s)[1] for s in (2 * e, 2 * e + 1)]) for e in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert epochs[0].tolist() != epochs[1].tolist()
    assert batches.epoch_of(4) == 2.0 and batches.tokens_per_batch == 80
    inputs, labels = batches.batch(7)
    np.testing.assert_array_equal(inputs["token_ids"], seqs["token_ids"][labels])
    assert len(batches.batch(0)) == 2


def test_class_weights():
    labels = np.array([0, 0, 0, 1, 2, 2])
    weights = class_weights_balanced(labels, 3)
    np.testing.assert_allclose(weights, [6 / 9, 6 / 3, 6 / 6])
    for label in range(3):  # every class weighs the same in all: 6 rows / 3 classes
        assert weights[labels][labels == label].sum() == pytest.approx(2)
    np.testing.assert_allclose(class_weights_balanced(labels, 4), [6 / 12, 6 / 4, 6 / 8, 0.0])  # a class without rows
    batches = ClassificationBatches(_sequences(6, 8), labels, batch_size=3, seed=0, class_weights=weights)
    _, batch_labels, sample_weight = batches.batch(0)
    np.testing.assert_array_equal(sample_weight, weights[batch_labels])


@pytest.fixture(scope="module")
def tokenizer(small_corpus):
    return train_wordpiece([small_corpus.read_text(encoding="utf-8")[:60_000]], 400)


def test_mlm_sequences_pack_whole_lines_within_documents(tokenizer):
    documents = ["First line here.\nSecond line.\n\nThird line!\n", "Another document\n" + "word " * 40]
    seqs = mlm_sequences(tokenizer, documents, 16)
    token_ids, mask = seqs["token_ids"], seqs["padding_mask"]
    assert token_ids.shape[1] == 16 and not seqs["segment_ids"].any()
    inner = []
    for row, row_mask in zip(token_ids, mask):
        real = row[row_mask].tolist()
        assert real[0] == tokenizer.cls_token_id and real[-1] == tokenizer.sep_token_id
        assert not row[~row_mask].any() and row_mask[:len(real)].all()
        inner.append(real[1:-1])
    first, second, third, another, words = tokenizer.encode_ids_batch(
        ["First line here.", "Second line.", "Third line!", "Another document", "word " * 40])
    assert (len(first), len(second), len(third), len(another), len(words)) == (8, 7, 7, 8, 80)
    # Whole lines while they fit in 16 - 2 tokens, a new row for a new document, a long line in pieces.
    pieces = [words[i:i + 14] for i in range(0, 80, 14)]
    assert inner == [first, second + third, another, *pieces]
    with pytest.raises(DataError, match="no text"):
        mlm_sequences(tokenizer, ["\n \n"], 16)


def test_wordpiece_special_tokens_pairs_and_the_bert_template(tokenizer):
    assert tokenizer.special_ids == [0, 1, 2, 3, 4] and tokenizer.mask_token_id == 4 and tokenizer.kind == "wordpiece"
    assert tokenizer.vocabulary_size == 400
    ids, segments, truncated = tokenizer.encode("To be, or not to be", "that is the question")
    reference = tokenizer.tokenizer.encode("To be, or not to be", "that is the question")  # the saved template
    assert (ids, segments, truncated) == (reference.ids, reference.type_ids, False)
    assert ids.count(tokenizer.sep_token_id) == 2 and segments[-1] == 1 and ids[0] == tokenizer.cls_token_id
    assert tokenizer.decode(ids) == "to be, or not to be that is the question"  # lower-cased


def test_wordpiece_truncation_keeps_cls_and_sep(tokenizer):
    ids, segments, truncated = tokenizer.encode("word " * 50, max_length=8)
    assert truncated and len(ids) == 8 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    ids, segments, truncated = tokenizer.encode("word " * 50, "short", max_length=10)  # "short": 3 tokens
    assert truncated and len(ids) == 10 and segments == [0] * 6 + [1] * 4  # the longer part gives way
    ids, segments, truncated = tokenizer.encode("a b", "word " * 50, max_length=10)
    assert truncated and segments == [0] * 4 + [1] * 6
    arrays, truncated = tokenizer.encode_batch(["a b", "word " * 50], pairs=["c", "d"], max_length=12)
    assert truncated.tolist() == [False, True]
    assert {k: (v.shape, v.dtype.name) for k, v in arrays.items()} == {
        "token_ids": ((2, 12), "int32"), "segment_ids": ((2, 12), "int32"), "padding_mask": ((2, 12), "bool")}
    assert arrays["padding_mask"].sum(axis=1).tolist() == [6, 12]
    assert arrays["token_ids"][0, 6:].tolist() == [0] * 6
    with pytest.raises(ZooError, match="no room"):
        tokenizer.encode("a", "b", max_length=3)


def test_tokenizers_save_and_load_by_kind(tmp_path, tokenizer):
    tokenizer.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["zoo"] == {"kind": "wordpiece", "lowercase": True}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, WordPieceTokenizer) and loaded.lowercase
    assert loaded.encode("Hark, a pair", "of texts") == tokenizer.encode("Hark, a pair", "of texts")
    cased = train_wordpiece(["Hello hello HELLO"] * 5, 60, lowercase=False)
    assert cased.encode("Hello")[0] != cased.encode("hello")[0]
    cased.save(tmp_path)
    assert load_tokenizer(tmp_path).lowercase is False
    train_char(["abc"]).save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), TextTokenizer)
    with pytest.raises(ZooError, match="not a WordPiece"):
        WordPieceTokenizer.load(tmp_path)
    with pytest.raises(ZooError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ZooError, match="too small"):
        train_wordpiece(["abc"], 5)
