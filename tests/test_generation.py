"""The generation engine: cached greedy decoding equals recomputation, sampling options, stops."""

import keras
import numpy as np
import pytest

from zoo.engine import FINISH_END, FINISH_LENGTH, FINISH_STOP, EagerEngine, SamplingConfig
from zoo.engine.sampling import sample
from zoo.families.gpt.generator import Generator
from zoo.errors import ZooError
from zoo.families.gpt.model import gpt_from_preset
from zoo.tokenizers import train_char


@pytest.fixture(scope="module")
def generator(small_corpus):
    tokenizer = train_char([small_corpus.read_text(encoding="utf-8")])
    keras.utils.set_random_seed(0)
    model = gpt_from_preset("nano", tokenizer.vocabulary_size, num_layers=2, hidden_dim=64, max_length=64)
    # At the usual init each token predicts itself (the tied embedding), so greedy text repeats
    # the prompt's last character whatever the cache holds; larger weights give varied text, as in
    # test_engine_compiled (here 3, not 2, times 1/sqrt(fan-in): 15 different tokens in 20, not 3).
    # The 256 byte-fallback tokens (ids 1-256) get zero embeddings, hence logit 0, and are never
    # picked greedily: the text is characters, not stray bytes that decode differently alone.
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if len(variable.shape) == 2:
            std = 1.0 if "embedding" in variable.path else 3 * variable.shape[0] ** -0.5
            value = rng.normal(0, std, variable.shape).astype("float32")
            if "token_embedding" in variable.path:
                value[1:257] = 0.0
            variable.assign(value)
    return Generator(model, tokenizer)


def _plain_logits(model, ids):
    """The logits after `ids` from the model's plain forward pass (no cache), padded to the
    context (causal: padding after a token cannot change its logits) so eager backends see one shape."""
    padded = np.zeros((1, model.max_length), dtype="int32")
    padded[0, :len(ids)] = ids
    return keras.ops.convert_to_numpy(model(padded))[0, len(ids) - 1]


def test_greedy_equals_uncached_recomputation(generator):
    result = generator.generate("ROMEO.", SamplingConfig(max_new_tokens=20, temperature=0))
    ids = [generator.tokenizer.end_token_id] + generator.tokenizer.encode("ROMEO.")
    # The whole sequence through the plain forward pass at every step.
    expected = []
    for _ in range(20):
        expected.append(int(np.argmax(_plain_logits(generator.model, ids + expected))))
    assert result.token_ids == expected
    assert result.text == generator.tokenizer.decode(expected)
    assert result.prompt_tokens == len(ids)
    assert len(set(expected)) > 5, expected  # a real test: varied text, not one character repeated


def test_generators_share_the_compiled_engine_and_prompt_lengths_do_not_recompile(generator):
    again = Generator(generator.model, generator.tokenizer)
    assert again.engine is generator.engine
    greedy = SamplingConfig(max_new_tokens=3, temperature=0)
    again.generate("To be", greedy)
    compiled = generator.engine.compile_count
    for prompt in ["A", "To be, or not", "KING. What say you?", "ROMEO. Peace, peace, Mercutio, peace!"]:
        again.generate(prompt, greedy)  # 2, 15, 20 and 38 tokens: all within buckets 16, 32, 64
    assert generator.engine.compile_count <= compiled + 2


def test_the_eager_reference_engine_gives_the_same_text(generator):
    config = SamplingConfig(max_new_tokens=12, temperature=0.9, seed=4)
    eager = Generator(generator.model, generator.tokenizer, engine=EagerEngine(generator.model))
    reference, compiled = eager.generate("KING.", config), generator.generate("KING.", config)
    assert (reference.token_ids, reference.text) == (compiled.token_ids, compiled.text)
    np.testing.assert_allclose(reference.logprobs, compiled.logprobs, atol=1e-5)


def _reference_sampling(generator, prompt, new_tokens, temperature, seed):
    """Seeded sampling recomputed without the engine, its cache or `sample`: each token drawn by
    numpy's default_rng(seed), as the Continuation seeds it, from the softmax of the plain forward
    pass's logits / temperature; the end token ends it."""
    rng, ids = np.random.default_rng(seed), [generator.tokenizer.end_token_id] + generator.tokenizer.encode(prompt)
    out = []
    while len(out) < new_tokens:
        z = _plain_logits(generator.model, ids + out).astype(np.float64) / temperature
        probs = np.exp(z - z.max())
        token = int(rng.choice(probs.size, p=probs / probs.sum()))
        if token == generator.tokenizer.end_token_id:
            break
        out.append(token)
    return out


def test_seeded_sampling_is_reproducible_and_seeds_differ(generator):
    config = dict(max_new_tokens=30, temperature=1.5)
    a = generator.generate("To be", SamplingConfig(**config, seed=1))
    assert a.token_ids == _reference_sampling(generator, "To be", 30, 1.5, seed=1)
    assert generator.generate("To be", SamplingConfig(**config, seed=1)).token_ids == a.token_ids
    c = generator.generate("To be", SamplingConfig(**config, seed=2))
    assert a.token_ids != c.token_ids


def test_sampling_filters():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 2.9, -1.0])
    greedy = SamplingConfig(temperature=0)
    assert sample(logits, greedy, rng) == 1
    assert {sample(logits, SamplingConfig(temperature=5, top_k=1), rng) for _ in range(20)} == {1}
    assert {sample(logits, SamplingConfig(temperature=5, top_k=2), rng) for _ in range(200)} == {1, 2}
    assert {sample(logits, SamplingConfig(temperature=1, top_p=0.01), rng) for _ in range(20)} == {1}
    assert len({sample(logits, SamplingConfig(temperature=100), rng) for _ in range(300)}) == 4


def test_max_new_tokens_and_finish_reason(generator):
    result = generator.generate("A", SamplingConfig(max_new_tokens=7, temperature=1.0, seed=3))
    assert result.finish_reason in (FINISH_LENGTH, FINISH_END)
    if result.finish_reason == FINISH_LENGTH:
        assert len(result.token_ids) == 7


def test_streamed_chunks_add_up_to_the_text(generator):
    chunks = []
    result = generator.generate("KING.", SamplingConfig(max_new_tokens=25, temperature=1.0, seed=5), chunks.append)
    assert "".join(chunks) == result.text


def test_stop_string_truncates_and_is_never_streamed(generator):
    free = generator.generate("X", SamplingConfig(max_new_tokens=40, temperature=1.0, seed=11))
    stop = free.text[10:12]  # a stop string that certainly occurs
    chunks = []
    result = generator.generate("X", SamplingConfig(max_new_tokens=40, temperature=1.0, seed=11, stop=(stop,)), chunks.append)
    assert result.finish_reason == FINISH_STOP
    assert result.text == free.text[:free.text.find(stop)]
    assert "".join(chunks) == result.text


def test_prompt_too_long_is_refused_or_truncated_on_request(generator):
    long_prompt = "word " * 40  # 200 characters, context 64
    with pytest.raises(ZooError, match="exceeds the model's context of 64"):
        generator.generate(long_prompt, SamplingConfig(max_new_tokens=5, temperature=0))
    result = generator.generate(long_prompt, SamplingConfig(max_new_tokens=5, temperature=0, truncate_prompt=True))
    assert result.prompt_tokens == 64 - 5


@pytest.mark.parametrize("config, message", [
    (SamplingConfig(max_new_tokens=0), "max_new_tokens must be positive"),
    (SamplingConfig(temperature=-1), "temperature must be >= 0"),
    (SamplingConfig(top_k=-2), "top_k must be >= 0"),
    (SamplingConfig(top_p=0), r"top_p must be in \(0, 1\]"),
    (SamplingConfig(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (SamplingConfig(max_new_tokens=64), "must be below the context length 64"),
])
def test_bad_sampling_settings(generator, config, message):
    with pytest.raises(ZooError, match=message):
        generator.generate("a", config)


def test_prompts_run_together_on_a_few_slots_each_get_what_they_get_alone(generator):
    """zoo.engine.slots.generate_all (`zoo generate --input`): seven requests on three slots, greedy
    and sampled with seeds, of their own lengths, budgets and stop strings. Waiting requests take the
    slots finished ones free, greedy chunks run once none waits; each gets what it gets alone."""
    from zoo.engine.generation import Continuation
    from zoo.engine.slots import generate_all

    prompts = ["ROMEO.", "KING.", "First Citizen:", "To be, or not", "O", "JULIET.", "X"]
    stop = generator.generate(prompts[0], SamplingConfig(temperature=1.0, top_k=20, seed=0, max_new_tokens=12)).text[4:6]
    configs = [SamplingConfig(temperature=0, max_new_tokens=5 + 3 * i) if i % 2 else
               SamplingConfig(temperature=1.0, top_k=20, seed=i, max_new_tokens=12, stop=(stop,)) for i in range(7)]
    alone = [generator.generate(p, c) for p, c in zip(prompts, configs)]
    together = dict(generate_all(generator.engine, [generator.start(p, c) for p, c in zip(prompts, configs)], slots=3))
    assert sorted(together) == list(range(7))
    for i, result in enumerate(alone):
        assert (together[i].token_ids, together[i].text, together[i].finish_reason) == \
               (result.token_ids, result.text, result.finish_reason), prompts[i]
    assert {result.finish_reason for result in alone} >= {FINISH_STOP, FINISH_LENGTH}  # the test covers both
    too_long = Continuation(generator.tokenizer, [1] * (generator.engine.max_prompt_length + 1), configs[1], 4)
    with pytest.raises(ValueError, match="does not fit the context"):
        list(generate_all(generator.engine, [generator.start("KING.", configs[1]), too_long], slots=2))
