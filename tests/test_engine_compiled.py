"""The decode engine on the current backend: compiled greedy decoding equals full recomputation,
rows at different positions equal each prompt alone (also when one joins mid-way, as in
continuous batching), prompt-length buckets compile once, seeded sampling repeats."""

import keras
import numpy as np
import pytest

from zoo.engine import SamplingConfig, new_engine, prompt_buckets
from zoo.engine.interface import PAIRED_KERNEL_SIZE
from zoo.families.gpt.model import gpt_from_preset
from zoo.layers.quantized import quantize_model

VOCAB = 97


def _model(position_embedding, intermediate_dim=64, max_length=32):
    keras.utils.set_random_seed(3)
    model = gpt_from_preset("nano", VOCAB, num_layers=2, num_heads=2, hidden_dim=32,
                            intermediate_dim=intermediate_dim, max_length=max_length,
                            position_embedding=position_embedding)
    # At the usual init every logit is nearly equal (argmax would hang on rounding) and the tied
    # embedding makes each token predict itself; larger weights give clear winners and varied text.
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if len(variable.shape) == 2:
            std = 1.0 if "embedding" in variable.path else 2 * variable.shape[0] ** -0.5
            variable.assign(rng.normal(0, std, variable.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def models():
    models = {kind: _model(kind) for kind in ("learned", "rotary")}
    # MLP kernels of PAIRED_KERNEL_SIZE elements: TensorFlow's engine steps its single rows paired,
    # in float32 and in int4 (run as its float copy on a CPU: zoo.layers.quantized.inference_model).
    models["wide"] = _model("learned", intermediate_dim=PAIRED_KERNEL_SIZE // 32)
    models["wide int4"] = _model("learned", intermediate_dim=PAIRED_KERNEL_SIZE // 32)
    quantize_model(models["wide int4"], "int4")
    models["long"] = _model("rotary", max_length=96)  # a cache of two blocks (zoo.layers.attention)
    return models


@pytest.fixture(scope="module")
def engines(models):
    return {kind: new_engine(model) for kind, model in models.items()}


@pytest.fixture(scope="module")
def engine(engines):
    return engines["learned"]


def _prompt(length, seed=0):
    return np.random.default_rng(seed).integers(1, VOCAB, length).tolist()


def _uncached_greedy(model, ids, new_tokens):
    """The reference: the whole sequence through the model's plain forward pass at every step.
    Padded to the context (causal, so padding after a token cannot change its logits) so that
    eager backends see one shape, not a new one per step."""
    out, padded = [], np.zeros((1, model.max_length), "int32")
    for _ in range(new_tokens):
        sequence = ids + out
        padded[0, :len(sequence)] = sequence
        logits = keras.ops.convert_to_numpy(model(padded))
        out.append(int(np.argmax(logits[0, len(sequence) - 1])))
    return out


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_greedy_equals_uncached_recomputation(models, engines, kind):
    ids = _prompt(5)
    expected = _uncached_greedy(models[kind], ids, 24)
    assert engines[kind].generate_batch([ids], 24) == [expected]
    assert len(set(expected)) > 3  # a real test: not one token repeated


def test_a_prompt_past_the_caches_first_block_decodes_as_itself(models, engines):
    """A prompt longer than the cache's first block (64 positions) is prefilled into both blocks
    and decodes on the model's own tokens, into the second block."""
    ids = _prompt(70, seed=8)
    expected = _uncached_greedy(models["long"], ids, 8)
    assert engines["long"].generate_batch([ids], 8) == [expected] and len(set(expected)) > 3


@pytest.mark.parametrize("kind", ["wide", "wide int4"])
def test_a_single_row_stepped_paired_decodes_as_itself_through_the_context(models, engines, kind):
    """On a CPU, TensorFlow's engine steps a single row of a model with a large float (or int4)
    kernel as two tokens, its own and a copy at the next position
    (zoo.engine.interface.pairs_single_rows), and a small model's alone; the tokens are the model's
    own, also through the context's last position, where the copy falls past the cache."""
    on_tensorflow = keras.backend.backend() == "tensorflow"
    assert getattr(engines[kind], "_pair_single_rows", False) == on_tensorflow
    assert not getattr(engines["learned"], "_pair_single_rows", False)
    model, engine = models[kind], engines[kind]
    ids = _prompt(5)
    expected = _uncached_greedy(model, ids, 24)
    assert engine.generate_batch([ids], 24) == [expected] and len(set(expected)) > 3
    ids = _prompt(model.max_length - 4, seed=1)
    assert engine.generate_batch([ids], 5) == [_uncached_greedy(model, ids, 5)]


def test_batch_rows_at_their_own_positions_equal_each_prompt_alone(engine):
    prompts = [_prompt(3, 1), _prompt(11, 2), _prompt(20, 3)]  # buckets 16, 16, 32
    together = engine.generate_batch(prompts, 12)
    assert together == [engine.generate_batch([p], 12)[0] for p in prompts]
    assert len({tuple(t) for t in together}) == 3


def test_eager_call_with_cache_takes_a_position_per_row(models, engine):
    """The model's own call_with_cache, uncompiled (the reference engine's path): prompts padded
    to one length and prefilled together, then decoded with each row at its own position, give
    the compiled engine's tokens. (Two call shapes only: eager JAX compiles every op per shape.)"""
    model, prompts = models["learned"], [_prompt(3, 1), _prompt(8, 2)]
    padded = np.zeros((2, 8), "int32")
    for row, ids in enumerate(prompts):
        padded[row, :len(ids)] = ids
    logits, cache = model.call_with_cache(padded, model.init_cache(2), 0)
    logits = keras.ops.convert_to_numpy(logits)
    tokens = np.asarray([logits[row, len(ids) - 1].argmax() for row, ids in enumerate(prompts)], "int32")
    positions, out = np.asarray([len(ids) for ids in prompts], "int32"), [tokens]
    for _ in range(7):
        logits, cache = model.call_with_cache(tokens[:, None], cache, positions)
        tokens, positions = keras.ops.convert_to_numpy(logits)[:, 0].argmax(axis=-1).astype("int32"), positions + 1
        out.append(tokens)
    assert np.stack(out, axis=1).tolist() == engine.generate_batch(prompts, 8)


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_a_request_joining_mid_way_decodes_as_if_alone(engines, kind):
    """Continuous batching with the slot primitives: slot 1 is prefilled after slot 0 has
    decoded 5 tokens, then both step together, each at its own position."""
    engine = engines[kind]
    a, b = _prompt(7, 4), _prompt(13, 5)
    alone_a, alone_b = engine.generate_batch([a], 14)[0], engine.generate_batch([b], 9)[0]
    cache = engine.new_cache(2)
    logits, cache = engine.prefill_slot(cache, 0, a)
    tokens, positions, out = np.asarray([np.argmax(logits), 0]), np.asarray([len(a), 0]), [[], []]
    for step in range(13):
        if step == 5:  # b arrives: prefilled into the idle slot, it joins the next step
            logits, cache = engine.prefill_slot(cache, 1, b)
            tokens[1], positions[1] = np.argmax(logits), len(b)
        out[0].append(int(tokens[0]))
        if step >= 5:
            out[1].append(int(tokens[1]))
        logits, cache = engine.decode(tokens, cache, positions)
        tokens, positions = logits.argmax(axis=-1), positions + 1
    out[0].append(int(tokens[0]))
    out[1].append(int(tokens[1]))
    assert out == [alone_a, alone_b]


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_stepping_the_first_rows_of_a_larger_cache_leaves_the_rest_alone(engines, kind):
    """A server steps only as many rows as its busy slots need: 2 of 4 here, while a request in
    slot 3 waits; the waiting one then decodes as if it had been alone all along."""
    engine = engines[kind]
    a, b, c = _prompt(6, 9), _prompt(10, 10), _prompt(4, 11)
    alone = [engine.generate_batch([p], 8)[0] for p in (a, b, c)]
    cache = engine.new_cache(4)
    tokens, positions, out = np.zeros(4, "int32"), np.zeros(4, "int32"), [[], [], []]
    for slot, ids in ((0, a), (1, b), (3, c)):
        logits, cache = engine.prefill_slot(cache, slot, ids)
        tokens[slot], positions[slot] = np.argmax(logits), len(ids)
    for step in range(7):  # slots 0 and 1 only: slot 3 is left alone
        out[0].append(int(tokens[0]))
        out[1].append(int(tokens[1]))
        logits, cache = engine.decode(tokens[:2], cache, positions[:2])
        assert logits.shape == (2, VOCAB)
        tokens[:2], positions[:2] = logits.argmax(axis=-1), positions[:2] + 1
    out[0].append(int(tokens[0]))
    out[1].append(int(tokens[1]))
    for step in range(7):  # now all four rows: slot 3 carries on from its prompt
        out[2].append(int(tokens[3]))
        logits, cache = engine.decode(tokens, cache, positions)
        tokens, positions = logits.argmax(axis=-1).astype("int32"), positions + 1
    out[2].append(int(tokens[3]))
    assert out == alone
    with pytest.raises(ValueError, match="first n <= 4 slots"):
        engine.decode(np.zeros(5, "int32"), cache, np.zeros(5, "int32"))


def test_reordered_rows_carry_on_as_the_rows_they_copy(engine):
    """Beam search's primitive: after reorder([2, 0, 0]) rows 0, 1, 2 of the cache hold what rows
    2, 0, 0 held, and decode on as those prompts do alone."""
    prompts = [_prompt(5, 12), _prompt(9, 13), _prompt(3, 14)]
    alone = [engine.generate_batch([p], 6)[0] for p in prompts]
    cache = engine.new_cache(3)
    for slot, ids in enumerate(prompts):
        _, cache = engine.prefill_slot(cache, slot, ids)
    cache = engine.reorder(cache, [2, 0, 0])
    order = [prompts[2], prompts[0], prompts[0]]
    tokens = np.asarray([alone[2][0], alone[0][0], alone[0][0]], "int32")
    positions, out = np.asarray([len(p) for p in order], "int32"), [[int(t)] for t in tokens]
    for _ in range(5):
        logits, cache = engine.decode(tokens, cache, positions)
        tokens, positions = logits.argmax(axis=-1).astype("int32"), positions + 1
        for row, token in enumerate(tokens):
            out[row].append(int(token))
    assert out == [alone[2], alone[0], alone[0]]


def test_twenty_prompt_lengths_compile_each_bucket_once(engine):
    before = {(what, shape) for what, shape, _ in engine.compile_log}
    lengths = np.random.default_rng(6).choice(np.arange(1, 31), 20, replace=False)
    for n in lengths:
        engine.generate_batch([_prompt(int(n), int(n))], 2)
    buckets_used = {engine.bucket(int(n)) for n in lengths}
    assert buckets_used == set(prompt_buckets(32)) == {16, 32}
    compiled = [(what, shape) for what, shape, _ in engine.compile_log]
    assert len(compiled) == len(set(compiled))  # nothing compiled twice
    if engine.compiled:
        # generate_batch greedy: its steps run as a compiled greedy chunk, not one decode at a time.
        assert set(compiled) == before | {("greedy", (1, 1, 32))} | {("prefill", b) for b in buckets_used}
    else:  # torch runs eagerly: nothing to compile, nothing to recompile
        assert compiled == []
    # Every trace was a compilation we asked for: the backend never retraced on its own.
    assert engine.trace_count == engine.compile_count == len(compiled)
    # compile_seconds is the compilations' time: each logged one's, none for an eager engine.
    logged = sum(seconds for *_, seconds in engine.compile_log)
    assert engine.compile_seconds == pytest.approx(logged, abs=1e-3 * len(compiled))  # the log rounds to 1 ms
    assert engine.compile_seconds > 0 if engine.compiled else engine.compile_seconds == 0
    seconds = engine.compile_seconds
    for n in lengths:  # a second round with other prompts compiles nothing more
        engine.generate_batch([_prompt(int(n), int(n) + 1)], 2)
    assert engine.compile_count == engine.trace_count == len(compiled)
    assert engine.compile_seconds == seconds  # cached functions cost no compile time


def test_warmup_compiles_all_that_a_cache_of_that_many_slots_runs(models):
    """A server warms its engine up for its cache's size; its requests then compile nothing: a
    prompt of each bucket into any slot, prompts arriving together (a group of four, padded to
    the longest's bucket), the decode step and greedy chunk of each row count."""
    engine = new_engine(models["rotary"])
    engine.warmup(slots=(5,), greedy=True)
    compiled = engine.compile_count
    assert compiled > 0 if engine.compiled else compiled == 0
    cache = engine.new_cache(5)
    for slot, length in ((2, 20), (0, 5), (1, 16)):  # buckets 32, 16, 16
        _, cache = engine.prefill_slot(cache, slot, _prompt(length, slot))
    for lengths in ((3, 20, 18, 1, 17), (2, 4, 6, 8)):  # four at bucket 32 and one alone; four at 16
        _, cache = engine.prefill_slots(cache, range(len(lengths)), [_prompt(n, n) for n in lengths])
    if engine.compiled:
        assert {shape for what, shape, _ in engine.compile_log if what == "prefills"} == {(4, 16, 5), (4, 32, 5)}
    for rows in (1, 2, 4, 5):
        positions = np.arange(20, 20 + rows, dtype="int32")
        _, cache = engine.decode(np.ones(rows, "int32"), cache, positions)
        *_, cache = engine.decode_greedy(np.ones(rows, "int32"), cache, positions + 1, 4)
    assert engine.compile_count == compiled, engine.compile_log[compiled:]


def test_seeded_sampling_is_reproducible_per_row(engine):
    prompts = [_prompt(4, 7), _prompt(9, 8)]
    configs = [SamplingConfig(temperature=1.0, top_k=20, seed=1), SamplingConfig(temperature=0.8, top_p=0.9, seed=2)]
    first = engine.generate_batch(prompts, 16, sampling=configs)
    assert engine.generate_batch(prompts, 16, sampling=configs) == first
    assert first[1] == engine.generate_batch([prompts[1]], 16, sampling=[configs[1]])[0]
    other = engine.generate_batch(prompts, 16, sampling=SamplingConfig(temperature=1.0, seed=3))
    assert other != first


def test_end_token_stops_a_row(engine):
    ids = _prompt(6, 9)
    free = engine.generate_batch([ids], 10)[0]
    end = free[4]
    stopped = engine.generate_batch([ids, _prompt(3, 10)], 10, end_token_id=end)
    assert stopped[0] == free[:free.index(end)]


def test_lengths_and_positions_are_checked(engine):
    with pytest.raises(ValueError, match="does not fit the context of 32"):
        engine.prefill(_prompt(33))
    with pytest.raises(ValueError, match="exceed the context of 32"):
        engine.generate_batch([_prompt(30)], 5)
    with pytest.raises(ValueError, match=r"decode positions must be in \[0, 32\)"):
        engine.decode([1], engine.new_cache(1), [32])
    for slots in ([0, 0, 1, 2], [0, 1, 2, 4], [0, 1, 2]):  # a row twice, a row past the cache, one short
        with pytest.raises(ValueError, match=r"one distinct slot in \[0, 4\) for each of 4 prompts"):
            engine.prefill_slots(engine.new_cache(4), slots, [_prompt(3)] * 4)
    with pytest.raises(ValueError, match="does not fit the context of 32"):  # before any prompt runs
        engine.prefill_slots(engine.new_cache(4), range(4), [_prompt(3)] * 3 + [_prompt(33)])


def _prefilled(engine, prompts, slots):
    """A cache of `slots` rows with prompts[i] in row i, and each row's first greedy token."""
    cache, tokens = engine.new_cache(slots), []
    for slot, ids in enumerate(prompts):
        logits, cache = engine.prefill_slot(cache, slot, ids)
        tokens.append(int(np.argmax(logits)))
    return cache, np.asarray(tokens, "int32"), np.asarray([len(p) for p in prompts], "int32")


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_greedy_steps_in_one_call_equal_decoding_step_by_step(engines, kind):
    """decode_greedy (a compiled engine's chunk of greedy steps on the device) against decode and
    the host's argmax, step by step: the same tokens, their log-probs, a row already finished,
    the end token ending the call once every row has it, and a cache that carries on the same."""
    from zoo.engine.sampling import logprob

    engine = engines[kind]
    prompts = [_prompt(3, 20), _prompt(9, 21), _prompt(5, 22)]
    steps = engine.decode_chunk + 4  # two chunks
    cache, tokens, positions = _prefilled(engine, prompts, 3)
    expected, scores, step_tokens = [], [], tokens
    for i in range(steps):
        logits, cache = engine.decode(step_tokens, cache, positions + i)
        step_tokens = logits.argmax(axis=-1).astype("int32")
        expected.append(step_tokens)
        scores.append([logprob(row, token) for row, token in zip(logits, step_tokens)])
    expected, follow = np.stack(expected), engine.decode(step_tokens, cache, positions + steps)[0]

    cache, *_ = _prefilled(engine, prompts, 3)
    chosen, logprobs, cache = engine.decode_greedy(tokens, cache, positions, steps)
    np.testing.assert_array_equal(chosen, expected)
    np.testing.assert_allclose(logprobs, scores, atol=1e-5)
    assert len({tuple(column) for column in chosen.T}) == 3 and len(set(chosen[:, 0])) > 3  # varied
    # The cache holds every step's keys and values: the next step's logits are step by step's.
    np.testing.assert_allclose(engine.decode(chosen[-1], cache, positions + steps)[0], follow, atol=1e-4)
    if engine.compiled:  # the chunk ran on the device, one compiled loop, not decode after decode
        assert ("greedy", (3, 3, engine.reach(positions + engine.decode_chunk - 1))) in {
            (what, shape) for what, shape, _ in engine.compile_log}

    # Ending: the call stops once every row has made the end token or was finished already.
    def ended(end, finished):
        cache, *_ = _prefilled(engine, prompts, 3)
        chosen, logprobs, _ = engine.decode_greedy(tokens, cache, positions, steps, end_token_id=end,
                                                   finished=finished)
        assert chosen.shape == logprobs.shape
        np.testing.assert_array_equal(chosen, expected[:len(chosen)])
        return len(chosen)

    end = int(expected[5, 0])
    assert ended(end, [False, True, True]) == list(expected[:, 0]).index(end) + 1 <= 6
    # Row 1 never makes row 0's end token: the call runs on to the last step.
    end = next(int(t) for t in expected[:, 0] if t not in expected[:, 1])
    assert ended(end, [False, False, True]) == steps


def test_greedy_steps_are_checked(engine):
    cache, tokens, positions = _prefilled(engine, [_prompt(20, 23)], 1)
    with pytest.raises(ValueError, match=r"decode positions must be in \[0, 32\), got \[20\] and 12 more steps"):
        engine.decode_greedy(tokens, cache, positions, 13)
    with pytest.raises(ValueError, match="steps >= 1"):
        engine.decode_greedy(tokens, cache, positions, 0)
    with pytest.raises(ValueError, match="one finished flag per token"):
        engine.decode_greedy(tokens, cache, positions, 2, finished=[False, False])
    chosen, logprobs, cache = engine.decode_greedy(tokens, cache, positions, 3, finished=[True])
    assert chosen.shape == logprobs.shape == (0, 1)  # every row finished already: no step
    assert engine.decode_greedy(tokens, cache, positions, 12)[0].shape == (12, 1)  # to the context's end
