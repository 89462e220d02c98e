"""Speculative decoding (zoo.engine.speculative) on the current backend's engines: the target's
check of several tokens equals its uncached forward pass, greedy output equals the target's own
greedy output token for token (for drafts that agree and that disagree), seeded sampling is
reproducible, the acceptance rule keeps the target's distribution, and `zoo generate --draft` and
`zoo serve --draft` run it."""

import keras
import numpy as np
import pytest

from conftest import TINY_MODEL, run_zoo, zoo_json
from zoo.engine import EagerEngine, SamplingConfig, new_engine
from zoo.engine.generation import LanguageModelGenerator
from zoo.engine.sampling import probabilities
from zoo.engine.speculative import SpeculativeGenerator, _check
from zoo.errors import ZooError
from zoo.families.gpt.model import gpt_from_preset
from zoo.tokenizers import train_text_tokenizer

TEXT = "the quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!\n"


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer([TEXT], "char", 100)


def _gpt(vocabulary_size, seed, max_length=48, num_layers=2, position_embedding="learned"):
    """A GPT with larger weights than at init, so that its logits differ clearly from token to
    token (at init they are nearly equal) and greedy choices are no near-ties."""
    keras.utils.set_random_seed(seed)
    model = gpt_from_preset("nano", vocabulary_size, num_layers=num_layers, num_heads=2, hidden_dim=32,
                            intermediate_dim=64, max_length=max_length, position_embedding=position_embedding)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if len(variable.shape) >= 2:
            std = 0.5 if "embedding" in variable.path else variable.shape[0] ** -0.5
            variable.assign(rng.normal(0, std, variable.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def target(tokenizer):
    return LanguageModelGenerator(_gpt(tokenizer.vocabulary_size, 0), tokenizer)


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
@pytest.mark.parametrize("engine_kind", ["compiled", "eager"])
def test_verify_equals_the_uncached_forward_pass(tokenizer, position_embedding, engine_kind):
    model = _gpt(tokenizer.vocabulary_size, 3, position_embedding=position_embedding)
    engine = new_engine(model) if engine_kind == "compiled" else EagerEngine(model)
    rng = np.random.default_rng(0)
    sequence = rng.integers(1, tokenizer.vocabulary_size, 20).tolist()
    reference = keras.ops.convert_to_numpy(model(np.asarray([sequence], "int32")))[0]
    _, cache = engine.prefill(sequence[:7])
    # Checked from position 7, then again from 9 over what the first check left beyond (as after
    # a rejection), then a decode step on top.
    logits, cache = engine.verify(sequence[7:12], cache, 7)
    np.testing.assert_allclose(logits, reference[7:12], rtol=1e-4, atol=1e-4)
    logits, cache = engine.verify(sequence[9:15], cache, 9)
    np.testing.assert_allclose(logits, reference[9:15], rtol=1e-4, atol=1e-4)
    logits, cache = engine.decode([sequence[15]], cache, [15])
    np.testing.assert_allclose(logits[0], reference[15], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="verify takes"):
        engine.verify([1, 2, 3], cache, model.max_length - 2)


@pytest.mark.parametrize("draft_kind", ["itself", "another model", "a shorter context"])
@pytest.mark.parametrize("draft_tokens", [1, 4])
def test_greedy_output_is_the_targets_own(tokenizer, target, draft_kind, draft_tokens):
    vocabulary = tokenizer.vocabulary_size
    draft = {"itself": lambda: target,
             "another model": lambda: LanguageModelGenerator(_gpt(vocabulary, 1, num_layers=1), tokenizer),
             "a shorter context": lambda: LanguageModelGenerator(_gpt(vocabulary, 2, max_length=20), tokenizer)}[draft_kind]()
    speculative = SpeculativeGenerator(target, draft, draft_tokens)
    for prompt, new_tokens in (("the quick", 30), ("", 47), ("THE LAZY DOG over the fox jumps the quick", 5)):
        config = SamplingConfig(temperature=0, max_new_tokens=new_tokens)
        expected = target.generate(prompt, config)
        result = speculative.generate(prompt, config)
        assert (result.token_ids, result.text, result.finish_reason) == \
               (expected.token_ids, expected.text, expected.finish_reason), prompt
        np.testing.assert_allclose(result.logprobs, expected.logprobs, rtol=1e-4, atol=1e-4)
    stats = speculative.stats
    assert stats.proposed > 0 and stats.committed > stats.verifies
    if draft_kind == "itself":
        assert stats.accepted == stats.proposed
    elif draft_kind == "another model":
        assert 0 < stats.accepted < stats.proposed  # proposals were rejected, and output still equal


def test_seeded_sampling_is_reproducible(tokenizer, target):
    draft = LanguageModelGenerator(_gpt(tokenizer.vocabulary_size, 1, num_layers=1), tokenizer)
    speculative = SpeculativeGenerator(target, draft, 3)
    config = SamplingConfig(temperature=0.8, top_k=20, top_p=0.95, seed=7, max_new_tokens=36)
    first = speculative.generate("the quick", config)
    assert 0 < speculative.last_stats.accepted < speculative.last_stats.proposed
    again = speculative.generate("the quick", config)
    assert (again.token_ids, again.text) == (first.token_ids, first.text)
    other = speculative.generate("the quick", SamplingConfig(temperature=0.8, top_k=20, top_p=0.95, seed=8,
                                                             max_new_tokens=36))
    assert other.token_ids != first.token_ids


def test_a_draft_that_is_the_target_keeps_every_sampled_proposal(tokenizer, target):
    # p = q, so min(1, p/q) keeps every proposal: in every pass, also those after all were kept,
    # whose first proposal comes from the draft's catch-up pass (its last row).
    speculative = SpeculativeGenerator(target, target, 3)
    speculative.generate("the quick", SamplingConfig(temperature=0.8, seed=3, max_new_tokens=30))
    stats = speculative.last_stats
    assert stats.proposed > 3 and stats.accepted == stats.proposed


@pytest.mark.backend_independent
@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=4), dict(top_p=0.8)])
def test_the_acceptance_rule_keeps_the_targets_distribution(settings):
    # Tokens a draft proposes from q, kept or replaced by the rule, are distributed as the target's
    # p: the whole point of the rule, checked by counting over many draws.
    config = SamplingConfig(**settings)
    rng = np.random.default_rng(0)
    target_row, draft_row = rng.normal(0, 1.5, 6), rng.normal(0, 1.5, 6)
    p, q = probabilities(target_row, config), probabilities(draft_row, config)
    draws, counts = 40_000, np.zeros(6)
    for _ in range(draws):
        proposal = int(rng.choice(6, p=q))
        counts[_check(target_row, proposal, q, config, rng)[1]] += 1
    np.testing.assert_allclose(counts / draws, p, atol=0.01)
    assert np.abs(q - p).max() > 0.05  # the draft's own distribution would fail the check above


def test_drafts_that_cannot_serve_are_refused(tokenizer, target):
    from zoo.families.lstm.model import LSTMLanguageModel

    other = train_text_tokenizer(["abcdefghij"], "char", 100)
    with pytest.raises(ZooError, match="draft's tokenizer differs from the target's"):
        SpeculativeGenerator(target, LanguageModelGenerator(_gpt(other.vocabulary_size, 1), other))
    lstm = LSTMLanguageModel(vocabulary_size=tokenizer.vocabulary_size, num_layers=1, hidden_dim=16,
                             embedding_dim=16, max_length=32)
    lstm.build()
    with pytest.raises(ZooError, match="recurrent state"):
        SpeculativeGenerator(target, LanguageModelGenerator(lstm, tokenizer))
    with pytest.raises(ZooError, match="at least 1"):
        SpeculativeGenerator(target, target, 0)


@pytest.fixture(scope="module")
def draft_run(tiny_run, small_corpus, tmp_path_factory):
    """A 1-layer draft trained on the tiny run's corpus with its tokenizer settings, and its bundle."""
    run = tmp_path_factory.mktemp("draft") / "run"
    flags = list(TINY_MODEL)
    flags[flags.index("--num-layers") + 1] = "1"
    run_zoo("train", "gpt", "--data", small_corpus, "--out", run, *flags, "--max-steps", "10", check=True)
    bundle = run.parent / "bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return bundle


def test_zoo_generate_with_a_draft(tiny_run, draft_run):
    bundle = tiny_run[1]
    flags = ["--prompt", "ROMEO.", "--max-new-tokens", "20"]
    alone = zoo_json("generate", bundle, *flags, "--temperature", "0")
    with_draft = zoo_json("generate", bundle, *flags, "--temperature", "0", "--draft", draft_run, "--draft-tokens", "3")
    assert (with_draft["token_ids"], with_draft["text"]) == (alone["token_ids"], alone["text"])
    speculation = with_draft["speculation"]
    assert speculation["proposed"] > 0 and 0 <= speculation["acceptance_rate"] <= 1
    sampled = ["--temperature", "0.9", "--seed", "4", "--draft", draft_run]
    first = zoo_json("generate", bundle, *flags, *sampled)
    assert zoo_json("generate", bundle, *flags, *sampled)["token_ids"] == first["token_ids"]
    printed = run_zoo("generate", bundle, *flags, "--temperature", "0", "--draft", draft_run, check=True)
    assert printed.stdout == "ROMEO." + alone["text"] + "\n"
    assert "draft tokens accepted" in printed.stderr


@pytest.mark.backend_independent
def test_zoo_generate_draft_errors(tiny_run, tmp_path):
    bundle = tiny_run[1]
    for flags, message in ((["--draft", tmp_path / "none"], "none"),
                           (["--draft", bundle, "--beam-width", "2"], "--draft speeds up sampling"),
                           (["--draft", bundle, "--draft-tokens", "0"], "--draft-tokens")):
        result = run_zoo("generate", bundle, "--prompt", "a", *flags)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert message in result.stderr, result.stderr


@pytest.mark.backend_independent  # the server runs the generator zoo generate runs, tested per backend
def test_served_with_a_draft(tiny_run, draft_run, backend):
    from server.client import ZooClient
    from server_process import ServerProcess

    bundle = tiny_run[1]
    name = bundle.name
    expected = zoo_json("generate", bundle, "--prompt", "KING.", "--max-new-tokens", "12", "--temperature", "0")
    bad = run_zoo("serve", bundle, "--port", "0", "--draft", f"nosuchmodel={draft_run}", own_process=True,
                  timeout=300)
    assert bad.returncode != 0 and "no model 'nosuchmodel' is served" in bad.stderr
    assert "Traceback" not in bad.stderr
    process = ServerProcess(bundle, "--draft", f"{name}={draft_run}", "--draft-tokens", "3", backend=backend)
    try:
        with ZooClient(process.address, timeout=60) as client:
            response = client.generate(name, "KING.", temperature=0, max_new_tokens=12)
            assert list(response.token_ids) == expected["token_ids"]
            messages = list(client.stream(name, "KING.", temperature=0, max_new_tokens=12))
            assert "".join(m.chunk.text for m in messages[:-1]) == messages[-1].final.text == expected["text"]
        proposed = process.metric("zoo_draft_tokens_proposed", model=name, version="1")
        accepted = process.metric("zoo_draft_tokens_accepted", model=name, version="1")
        assert proposed > 0 and 0 <= accepted <= proposed
    finally:
        process.stop()
