"""The BERT-style encoder: shapes, padding mask, tied MLM head, serialization, weight carry-over,
reproducible dropout, a falling MLM loss on real text, and the BERT-base parameter count."""

import keras
import numpy as np
import pytest

from zoo.data import MLMBatches, mlm_sequences
from zoo.errors import ZooError
from zoo.families.bert.model import BertClassifier, BertMaskedLM, bert_from_preset, copy_encoder_weights
from zoo.tokenizers import train_wordpiece

VOCAB = 300
TINY = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=32)


def _mlm(seed=1, **overrides):
    keras.utils.set_random_seed(seed)
    return bert_from_preset("nano", VOCAB, **{**TINY, **overrides})


def _classifier(seed=2, num_classes=3, **overrides):
    keras.utils.set_random_seed(seed)
    return bert_from_preset("nano", VOCAB, task="classify", num_classes=num_classes, **{**TINY, **overrides})


def _inputs(lengths=(16, 10), length=16, seed=0):
    """Random ordinary tokens (ids 5..VOCAB-1), [CLS]=2 first, padding (id 0) after each row's length."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, VOCAB, (len(lengths), length)).astype("int32")
    token_ids[:, 0] = 2
    padding_mask = np.arange(length)[None, :] < np.array(lengths)[:, None]
    token_ids[~padding_mask] = 0
    segment_ids = np.zeros_like(token_ids)
    segment_ids[:, length // 2:] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask,
            "mask_positions": np.array([[1, 3, 5]] * len(lengths), dtype="int32")}


def _numpy(x):
    return keras.ops.convert_to_numpy(x.value if isinstance(x, keras.Variable) else x)


def test_output_shapes_and_float32_logits_also_under_mixed_precision():
    x = _inputs()
    assert _numpy(_mlm()(x)).shape == (2, 3, VOCAB)
    classifier = _classifier()
    assert _numpy(classifier(x)).shape == (2, 3)
    assert _numpy(classifier.embed(x)).shape == (2, 32)
    assert classifier.max_length == 32 and classifier.num_classes == 3
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _mlm()  # the classifier's head is a Dense layer and a cast
        assert model.encoder.token_embedding.compute_dtype == "bfloat16"
        assert model.predict_on_batch(x).dtype == np.float32  # compiled: cheaper than op by op on JAX
    finally:
        keras.config.set_dtype_policy("float32")


def test_padding_mask_hides_padded_positions():
    model = _classifier()
    x = _inputs(lengths=(16, 10))
    changed = {**x, "token_ids": x["token_ids"].copy()}
    changed["token_ids"][1, 10:] = 7  # only under row 1's padding
    before, after = model.encoder(x), model.encoder(changed)
    np.testing.assert_allclose(_numpy(after["sequence_output"])[1, :10], _numpy(before["sequence_output"])[1, :10],
                               atol=1e-6, rtol=0)
    np.testing.assert_allclose(_numpy(after["pooled_output"]), _numpy(before["pooled_output"]), atol=1e-6, rtol=0)
    # The same change on unpadded positions is seen everywhere: the comparison above can fail.
    changed["token_ids"][1, 5:10] = 7
    moved = _numpy(model.encoder(changed)["sequence_output"])[1, :5] - _numpy(before["sequence_output"])[1, :5]
    assert np.abs(moved).max() > 1e-3


def test_masked_lm_head_is_tied_to_the_token_embedding():
    model = _mlm()
    shapes = [tuple(w.shape) for w in model.weights]
    assert shapes.count((VOCAB, 32)) == 1 and (32, VOCAB) not in shapes
    x = _inputs()
    token = 4  # [MASK]'s id: not among the inputs, so its embedding row feeds only the output
    embeddings = model.encoder.token_embedding.embeddings
    bias = _numpy(next(w for w in model.mlm_head.weights if w.path.endswith("output_bias")))[token]
    row = _numpy(embeddings)[token].copy()
    once = _numpy(model(x))[..., token] - bias
    embeddings.assign(_numpy(embeddings) * np.where(np.arange(VOCAB) == token, 2.0, 1.0)[:, None])
    twice = _numpy(model(x))[..., token] - bias
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-4, atol=1e-5)  # the logit is the row . hidden
    assert np.abs(once).max() > 1e-3 and np.allclose(_numpy(embeddings)[token], 2 * row)


@pytest.mark.parametrize("make", [_mlm, _classifier])
def test_serialization_round_trip_gives_identical_outputs(make):
    model = make(dropout=0.2)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model), safe_mode=True)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    restored.set_weights(model.get_weights())
    x = _inputs()
    np.testing.assert_array_equal(_numpy(restored(x)), _numpy(model(x)))


def test_copy_encoder_weights_carries_the_encoder_and_leaves_the_head():
    pretrained, classifier = _mlm(seed=1), _classifier(seed=2)
    head_before = [_numpy(w) for w in classifier.classifier.weights]
    assert not np.array_equal(_numpy(pretrained.encoder.weights[0]), _numpy(classifier.encoder.weights[0]))
    copy_encoder_weights(pretrained, classifier)
    # 39 weights: 5 in the embeddings, 16 in each block, 2 in the pooler.
    assert len(classifier.encoder.weights) == len(pretrained.encoder.weights) == 39
    for source, target in zip(pretrained.encoder.weights, classifier.encoder.weights):
        np.testing.assert_array_equal(_numpy(target), _numpy(source))
    for before, after in zip(head_before, classifier.classifier.weights):
        np.testing.assert_array_equal(_numpy(after), before)
    x = _inputs()
    np.testing.assert_array_equal(_numpy(classifier.embed(x)), _numpy(pretrained.encoder(x)["pooled_output"]))


@pytest.mark.parametrize("overrides, message", [
    (dict(max_length=64), r"position_embedding/embeddings has shape \(32, 32\), the new encoder's "
                          r"position_embedding/embeddings has shape \(64, 32\)"),
    (dict(num_layers=3), "the pretrained encoder has 39 weights"),
])
def test_copy_encoder_weights_names_a_mismatch(overrides, message):
    target = _classifier(**overrides)
    before = [_numpy(w) for w in target.weights]
    with pytest.raises(ZooError, match=message):
        copy_encoder_weights(_mlm(), target)
    for value, weight in zip(before, target.weights):
        np.testing.assert_array_equal(_numpy(weight), value)  # nothing half-copied


def _values(variables):
    return [_numpy(v) for v in variables]


def test_mlm_loss_falls_on_real_text_and_restored_variables_replay_training_exactly(small_corpus):
    text = small_corpus.read_text(encoding="utf-8")[:60_000]
    tokenizer = train_wordpiece([text], VOCAB)
    sequences = mlm_sequences(tokenizer, [text], 32)
    batches = MLMBatches(sequences, 16, 0, tokenizer.vocabulary_size, tokenizer.special_ids, tokenizer.mask_token_id)
    keras.utils.set_random_seed(0)
    model = BertMaskedLM(tokenizer.vocabulary_size, **{**TINY, "dropout": 0.1})
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, w = batches.fixed(64)
    before = model.evaluate(x, y, sample_weight=w, batch_size=64, verbose=0)
    for step in range(16):
        model.train_on_batch(*batches.batch(step))
    after = model.evaluate(x, y, sample_weight=w, batch_size=64, verbose=0)
    # The loss averages over all prediction slots, unused ones (weight 0) included: hence `* w.mean()`.
    assert before > 0.8 * np.log(tokenizer.vocabulary_size) * w.mean()  # starts near chance
    assert after < before - 0.25 * w.mean(), (before, after)  # 5.7 -> 5.3 per prediction in a run

    # What an exact --resume needs: the variables (optimizer and dropout seed generators included)
    # determine the next steps, on every backend (torch too: see _seed_dropout).
    variables = model.variables + model.optimizer.variables
    saved = _values(variables)
    for step in range(16, 18):
        model.train_on_batch(*batches.batch(step))
    trained, advanced = _values(model.trainable_variables), _values(variables)
    for variable, value in zip(variables, saved):
        variable.assign(value)
    for step in range(16, 18):
        model.train_on_batch(*batches.batch(step))
    for a, b in zip(_values(model.trainable_variables), trained, strict=True):
        np.testing.assert_array_equal(a, b)
    # And dropout is at work: with its seed generators left where they were, the same steps differ.
    for variable, value, moved in zip(variables, saved, advanced):
        variable.assign(moved if "seed_generator" in variable.path else value)
    for step in range(16, 18):
        model.train_on_batch(*batches.batch(step))
    assert any(not np.array_equal(a, b) for a, b in zip(_values(model.trainable_variables), trained))


@pytest.mark.backend_independent  # a count of weights, not of what they compute
def test_base_preset_has_the_bert_base_shape():
    vocab, layers, hidden, intermediate, positions = 30522, 12, 768, 3072, 512
    embeddings = vocab * hidden + positions * hidden + 2 * hidden + 2 * hidden  # token, position, segment, norm
    block = 4 * (hidden * hidden + hidden) + 2 * hidden + (hidden * intermediate + intermediate) \
        + (intermediate * hidden + hidden) + 2 * hidden
    encoder = embeddings + layers * block + (hidden * hidden + hidden)  # + the pooler
    head = hidden * hidden + hidden + 2 * hidden + vocab  # transform, its norm, output bias (matrix tied)
    assert encoder == 109_482_240  # BERT-base, as published
    model = bert_from_preset("base", vocab)
    assert model.encoder.count_params() == encoder
    assert model.count_params() == encoder + head == 110_104_890
    assert (model.num_layers, model.num_heads, model.max_length) == (12, 12, 512)


def test_unknown_preset_task_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        bert_from_preset("huge", 10)
    with pytest.raises(ValueError, match="unknown task"):
        bert_from_preset("nano", 10, task="generate")
    with pytest.raises(ValueError, match="needs num_classes"):
        bert_from_preset("nano", 10, task="classify")
    with pytest.raises(ValueError, match="at least 2"):
        BertClassifier(10, 1, **TINY)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        bert_from_preset("nano", 10, hidden_dim=30, num_heads=4)
