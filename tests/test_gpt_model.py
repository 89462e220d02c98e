"""The GPT model: causality, cached decoding, configuration, preset shapes."""

import keras
import numpy as np
import pytest

from zoo.families.gpt.model import GPT, PRESETS, gpt_from_preset


def _model(position_embedding="learned", **overrides):
    keras.utils.set_random_seed(1)
    config = dict(num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128, max_length=48,
                  position_embedding=position_embedding)
    return gpt_from_preset("nano", 101, **{**config, **overrides})


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
def test_changing_a_token_leaves_earlier_logits_unchanged(position_embedding):
    model = _model(position_embedding)
    tokens = np.random.default_rng(0).integers(0, 101, (2, 24)).astype("int32")
    changed = tokens.copy()
    changed[:, 11] = (changed[:, 11] + 7) % 101
    before, after = _numpy(model(tokens)), _numpy(model(changed))
    np.testing.assert_array_equal(before[:, :11], after[:, :11])
    assert np.abs(before[:, 11:] - after[:, 11:]).max() > 1e-3  # the change is seen from position 11 on


@pytest.mark.parametrize("spelled_out", [False, True])
def test_causal_attention_is_keras_dot_product_attention(monkeypatch, spelled_out):
    """zoo.layers.attention.causal_attention, both ways it may run on this backend (Keras's
    dot_product_attention, or the batched matmuls it uses under XLA on a CPU), against Keras's
    causal dot_product_attention, and causal."""
    from zoo.layers import attention

    monkeypatch.setattr(attention, "jax_or_tensorflow_on_cpu", lambda: spelled_out)
    inputs = np.random.default_rng(0).standard_normal((3, 2, 12, 4, 8)).astype("float32")
    q, k, v = (keras.ops.convert_to_tensor(x) for x in inputs)
    np.testing.assert_allclose(_numpy(attention.causal_attention(q, k, v)),
                               _numpy(keras.ops.dot_product_attention(q, k, v, is_causal=True)), atol=2e-6)
    # Each query sees itself and what precedes it only: the last key changes the last position alone.
    changed = keras.ops.concatenate([k[:, :-1], k[:, -1:] + 1.0], axis=1)
    before, after = _numpy(attention.causal_attention(q, k, v)), _numpy(attention.causal_attention(q, changed, v))
    np.testing.assert_array_equal(before[:, :-1], after[:, :-1])
    assert np.abs(before[:, -1] - after[:, -1]).max() > 1e-4


# Each position embedding once, each with its own prefill length (one token; several at once).
@pytest.mark.parametrize("position_embedding, prefill", [("learned", 9), ("rotary", 1)])
def test_cached_decoding_equals_full_recomputation(position_embedding, prefill):
    model = _model(position_embedding)
    tokens = np.random.default_rng(1).integers(0, 101, (2, 24)).astype("int32")
    full = _numpy(model(tokens))
    cache = model.init_cache(2)
    logits, cache = model.call_with_cache(tokens[:, :prefill], cache, 0)
    steps = [_numpy(logits)]
    for position in range(prefill, tokens.shape[1]):
        logits, cache = model.call_with_cache(tokens[:, position:position + 1], cache, position)
        steps.append(_numpy(logits))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=0)


def test_config_round_trip_and_safe_deserialization():
    model = _model("rotary", dropout=0.1)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model), safe_mode=True)
    assert isinstance(restored, GPT)
    assert restored.get_config() == model.get_config()
    assert restored.count_params() == model.count_params()


def test_output_projection_is_tied_to_the_token_embedding():
    model = _model()
    # Tied: no separate (hidden, vocab) output matrix among the weights.
    shapes = [tuple(w.shape) for w in model.weights]
    assert (101, 64) in shapes and (64, 101) not in shapes


@pytest.mark.backend_independent  # a count of weights, not of what they compute
def test_gpt2_preset_has_gpt2_parameter_count():
    model = gpt_from_preset("gpt2", 50257)
    assert model.count_params() == 124_439_808  # GPT-2 small, as published
    assert PRESETS["small"] == dict(num_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536, max_length=256,
                                    dropout=0.2)


def test_unknown_preset_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown preset"):
        gpt_from_preset("huge", 10)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        gpt_from_preset("nano", 10, hidden_dim=30, num_heads=4)
