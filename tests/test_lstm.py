"""The LSTM family: the model (state-cached steps equal the whole sequence, tying), `zoo train lstm`
(loss falls, resume), `zoo export` / `zoo generate`, serving over gRPC, and its errors. Its
cross-backend agreement is in test_cross_backend.py."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from conftest import TINY_LSTM, run_zoo, zoo_json
from zoo.engine import SamplingConfig
from zoo.engine.sampling import log_softmax
from zoo.errors import ZooError
from zoo.families.lstm.model import LSTMLanguageModel


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _model(**overrides):
    keras.utils.set_random_seed(1)
    model = LSTMLanguageModel(**{**dict(vocabulary_size=101, num_layers=2, hidden_dim=24, embedding_dim=24,
                                        max_length=48), **overrides})
    model.build()
    return model


# --- the model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tie_embeddings, embedding_dim", [(True, 24), (False, 16)], ids=["tied", "untied"])
def test_state_cached_steps_equal_the_whole_sequence(tie_embeddings, embedding_dim):
    model = _model(tie_embeddings=tie_embeddings, embedding_dim=embedding_dim)
    tokens = np.random.default_rng(0).integers(0, 101, (2, 20)).astype("int32")
    full = _numpy(model(tokens))
    # A prompt of 7 tokens padded to 16, one row at a time into a 3-slot cache (the engines' prefill).
    cache = model.init_cache(3)
    for row in range(2):
        padded = np.zeros((1, 16), "int32")
        padded[0, :7] = tokens[row, :7]
        logits, row_cache = model.prefill_with_cache(padded, 7)
        np.testing.assert_allclose(_numpy(logits)[0], full[row, 6], atol=1e-5, rtol=0)
        cache = [(keras.ops.slice_update(h, (row, 0), rh), keras.ops.slice_update(c, (row, 0), rc))
                 for (h, c), (rh, rc) in zip(cache, row_cache)]
    steps = []
    for position in range(7, 20):  # then one token per row at a time, through the cells
        logits, cache = model.call_with_cache(tokens[:, position:position + 1], cache, position, logits_at=0)
        steps.append(_numpy(logits))
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 7:], atol=1e-5, rtol=0)
    assert len(cache) == 2 and not np.any(_numpy(cache[0][0])[2])  # the third slot was left alone
    # Both prompts at once, each with its own length (the engines' prefill of several prompts).
    padded = np.zeros((2, 16), "int32")
    padded[0, :7], padded[1, :4] = tokens[0, :7], tokens[1, :4]
    logits, state = model.prefill_with_cache(padded, np.asarray([7, 4], "int32"))
    np.testing.assert_allclose(_numpy(logits), full[[0, 1], [6, 3]], atol=1e-5, rtol=0)
    logits, _ = model.call_with_cache(np.asarray([[tokens[0, 7]], [tokens[1, 4]]], "int32"), state, 0, logits_at=0)
    np.testing.assert_allclose(_numpy(logits), full[[0, 1], [7, 4]], atol=1e-5, rtol=0)
    # Several tokens at once from a state (through the layers) agree too.
    _, state = model.call_with_cache(tokens[:, :7], model.init_cache(2), 0)
    logits, _ = model.call_with_cache(tokens[:, 7:], state, 7)
    np.testing.assert_allclose(_numpy(logits), full[:, 7:], atol=1e-5, rtol=0)


def test_tied_and_untied_output_projection_and_safe_round_trip():
    tied, untied = _model(dropout=0.1), _model(tie_embeddings=False, embedding_dim=16)
    # Tied: no (hidden, vocab) matrix; untied: a Dense of its own, the embedding narrower than the LSTM.
    assert (24, 101) not in [tuple(w.shape) for w in tied.weights]
    assert {(101, 16), (24, 101), (101,)} <= {tuple(w.shape) for w in untied.weights}
    for model in (tied, untied):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model), safe_mode=True)
        assert isinstance(restored, LSTMLanguageModel) and restored.get_config() == model.get_config()
        assert restored.count_params() == model.count_params()
    with pytest.raises(ValueError, match="tie_embeddings needs hidden_dim equal to embedding_dim"):
        _model(embedding_dim=16)


@pytest.mark.backend_independent  # a count of weights, not what they compute
def test_presets_have_about_the_gpt_presets_parameters():
    from zoo.families.gpt.model import gpt_from_preset
    from zoo.families.lstm.presets import PRESETS

    for preset in ("nano", "small"):
        lstm = LSTMLanguageModel(vocabulary_size=2048, **PRESETS[preset])
        lstm.build()
        gpt = gpt_from_preset(preset, 2048)
        assert 0.9 < lstm.count_params() / gpt.count_params() < 1.02, preset
        assert PRESETS[preset]["max_length"] == gpt.max_length


# --- training, export, generation --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, small_corpus):
    """A tiny LSTM trained through the real CLI on this backend: 20 steps, then resumed to 30
    (evaluated every 10), and its bundle."""
    run = tmp_path_factory.mktemp("lstm") / "run"
    common = ["--out", run, "--eval-every", "10", "--lr", "3e-3"]
    run_zoo("train", "lstm", "--data", small_corpus, *TINY_LSTM, *common, "--max-steps", "20", check=True)
    summary = zoo_json("train", "lstm", *common, "--resume", "--max-steps", "30")
    bundle = run.parent / "bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle, summary


@pytest.fixture(scope="module")
def generator(lstm_run):
    from zoo.bundle import load_runtime

    return load_runtime(lstm_run[1])[0]


def test_training_lowers_validation_loss_and_resumes(lstm_run):
    run, bundle, summary = lstm_run
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val_loss" in m]
    assert [m["step"] for m in evals] == [10, 20, 30] and summary["step"] == 30
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["val_loss"] < math.log(300) - 0.5  # well below an untrained model's
    assert all(m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"])) for m in evals)
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "lstm" and config["command"][:3] == ["zoo", "train", "lstm"]
    assert config["model"] == dict(num_layers=2, hidden_dim=32, embedding_dim=32, max_length=32, dropout=0.0,
                                   tie_embeddings=True, vocabulary_size=300)
    info = json.loads((bundle / "zoo.json").read_text())
    assert (info["kind"], info["task"], info["max_length"]) == ("lstm", "generate", 32)
    assert info["provenance"]["steps"] == 30


def test_greedy_generation_equals_recomputing_the_whole_sequence(lstm_run, generator):
    result = generator.generate("ROMEO.", SamplingConfig(max_new_tokens=12, temperature=0))
    assert len(result.token_ids) == 12 and result.finish_reason == "length"
    ids = [generator.tokenizer.end_token_id] + generator.tokenizer.encode("ROMEO.")
    assert result.prompt_tokens == len(ids)
    # The whole sequence at once, from zero state: each generated token is the argmax after what came
    # before it, and its log-prob (the cached step's logits) is the full pass's.
    full = _numpy(generator.model(np.asarray([ids + result.token_ids], dtype="int32")))[0]
    rows = full[len(ids) - 1:-1]
    assert result.token_ids == [int(np.argmax(row)) for row in rows]
    expected = [log_softmax(row)[token] for row, token in zip(rows, result.token_ids)]
    np.testing.assert_allclose(result.logprobs, expected, atol=1e-4, rtol=0)
    # And through `zoo generate --json`, on the bundle.
    printed = zoo_json("generate", lstm_run[1], "--prompt", "ROMEO.", "--temperature", "0", "--max-new-tokens", "12")
    assert (printed["text"], printed["token_ids"]) == (result.text, result.token_ids)


def test_sampling_stops_and_the_context(generator):
    settings = dict(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=10)
    a = generator.generate("KING.", SamplingConfig(seed=7, **settings))
    assert generator.generate("KING.", SamplingConfig(seed=7, **settings)).token_ids == a.token_ids
    others = [generator.generate("KING.", SamplingConfig(seed=s, **settings)).token_ids for s in (8, 9, 10)]
    assert any(other != a.token_ids for other in others), "the seed changes nothing"

    chunks = []
    greedy = generator.generate("KING.", SamplingConfig(temperature=0, max_new_tokens=10), on_text=chunks.append)
    assert "".join(chunks) == greedy.text
    stop = greedy.text[2:4]
    stopped = generator.generate("KING.", SamplingConfig(temperature=0, max_new_tokens=10, stop=(stop,)))
    assert stopped.finish_reason == "stop" and stopped.text == greedy.text[:greedy.text.find(stop)]

    # The context (32 tokens) holds the prompt, its start token and the output.
    long_prompt = "KING. " * 40
    with pytest.raises(ZooError, match="exceeds the model's context of 32"):
        generator.generate(long_prompt, SamplingConfig(max_new_tokens=4))
    cut = generator.generate(long_prompt, SamplingConfig(max_new_tokens=4, temperature=0, truncate_prompt=True))
    assert cut.prompt_tokens == 28 and len(cut.token_ids) <= 4
    whole = generator.generate("KING.", SamplingConfig(temperature=0))  # by default: to the end of the context
    assert whole.prompt_tokens + len(whole.token_ids) <= 32
    assert whole.finish_reason == "end_token" or whole.prompt_tokens + len(whole.token_ids) == 32


# --- serving ---------------------------------------------------------------------------------------


@pytest.mark.backend_independent  # the server runs the generator and engine zoo generate runs, tested per backend
def test_served_over_grpc_as_generated_locally(lstm_run, generator, backend):
    import grpc

    from server.client import FINISH_REASONS, ZooClient
    from server_process import ServerProcess

    process = ServerProcess(lstm_run[1], "--no-warmup", backend=backend)
    try:
        with ZooClient(process.address, timeout=60) as client:
            name = lstm_run[1].name
            info = client.model_info(name)
            assert (info.context_length, info.max_new_tokens) == (32, 31)
            expected = generator.generate("ROMEO.", SamplingConfig(temperature=0, max_new_tokens=10))
            response = client.generate(name, "ROMEO.", temperature=0, max_new_tokens=10)
            assert (response.text, list(response.token_ids)) == (expected.text, expected.token_ids)
            assert FINISH_REASONS[response.finish_reason] == expected.finish_reason
            messages = list(client.stream(name, "ROMEO.", temperature=0, max_new_tokens=10))
            assert "".join(m.chunk.text for m in messages[:-1]) == messages[-1].final.text == expected.text
            with ThreadPoolExecutor(4) as pool:  # batched together, each with its own state slot
                prompts = ["ROMEO.", "KING.", "ROMEO.", "To be"]
                texts = list(pool.map(lambda p: client.generate(name, p, temperature=0, max_new_tokens=10).text,
                                      prompts))
            assert texts == [generator.generate(p, SamplingConfig(temperature=0, max_new_tokens=10)).text
                             for p in prompts]
            sampled = dict(temperature=0.9, top_k=20, seed=3, max_new_tokens=8)
            assert (list(client.generate(name, "KING.", **sampled).token_ids)
                    == generator.generate("KING.", SamplingConfig(**sampled)).token_ids)
            with pytest.raises(grpc.RpcError) as refused:
                client.generate(name, "ROMEO.", max_new_tokens=40)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "max_new_tokens" in refused.value.details()
    finally:
        process.stop()


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.backend_independent
@pytest.mark.parametrize("flags, message", [
    (["--hidden-dim", "64"], "--tie-embeddings needs --hidden-dim equal to --embedding-dim"),
    (["--seq-len", "64", "--max-length", "32"], "--seq-len 64 exceeds the model's context (--max-length 32)"),
    (["--data", "no/such/corpus.txt"], "no/such/corpus.txt"),
], ids=["tie", "seq-len", "data"])
def test_bad_settings_are_one_line_errors(tmp_path, flags, message):
    result = run_zoo("train", "lstm", *flags, "--out", tmp_path / "run")
    assert result.returncode != 0 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.backend_independent
def test_help_has_examples_and_the_family_is_listed():
    assert "zoo train lstm --preset nano" in run_zoo("train", "lstm", "--help", check=True).stdout
    assert "lstm" in run_zoo("train", "--help", check=True).stdout
    refused = run_zoo("train", "lstm", "--dropout", "1.5")
    assert refused.returncode == 2 and "--dropout" in refused.stderr
