"""The sequence-to-sequence model and its decoding: cached decoding equals recomputation, padding
is invisible, beam search of width 1 is greedy, and a tiny reversal task is learnt exactly."""

import keras
import numpy as np
import pytest

from zoo.data.pairs import PairBatches, encode_pairs
from zoo.engine import FINISH_END, FINISH_LENGTH, FINISH_STOP, SamplingConfig, engine_for, run_stream
from zoo.families.seq2seq.generator import Seq2SeqGenerator, evaluate_translations
from zoo.errors import ZooError
from zoo.families.seq2seq.model import PRESETS, Seq2Seq, seq2seq_from_preset
from zoo.tokenizers import train_char

LETTERS = "abcdef"
# Every model here has this shape (JAX prepares each new shape op by op, seconds each time).
TINY = dict(num_encoder_layers=1, num_decoder_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
            max_source_length=7, max_target_length=7)


def reversal_pairs(count, seed):
    rng = np.random.default_rng(seed)
    words = ("".join(rng.choice(list(LETTERS), rng.integers(2, 6))) for _ in range(count))
    return [(w, w[::-1]) for w in words]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tensors this small gain nothing from torch's intra-op threads, and on a busy CPU their
    spinning makes a training step some 20 times slower."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return train_char([LETTERS])


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def untrained(tokenizer):
    keras.utils.set_random_seed(0)
    vocab = tokenizer.vocabulary_size
    model = Seq2Seq(vocab + 5, vocab, **TINY, dropout=0.3)  # separate vocabularies of different sizes
    model.build()
    return model


@pytest.fixture(scope="module")
def reverser(tokenizer):
    """A tiny model trained to reverse strings of 2-5 letters, through PairBatches as in training."""
    keras.utils.set_random_seed(0)
    vocab, end = tokenizer.vocabulary_size, tokenizer.end_token_id
    model = Seq2Seq(vocab, vocab, **TINY, shared_embeddings=True)
    model.build()
    model.compile(optimizer=keras.optimizers.AdamW(3e-3, weight_decay=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sources, targets = encode_pairs(reversal_pairs(3000, seed=1), tokenizer, tokenizer)
    batches = PairBatches(sources, targets, 7, 7, batch_size=64, seed=0, start_id=end, end_id=end, pad_id=end)
    for step in range(200):  # 1.0 exact match by step 150 on every backend and seed tried
        model.train_on_batch(*batches.batch(step))
    return Seq2SeqGenerator(model, tokenizer, tokenizer)


def batch(model, rows=3, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.integers(1, model.source_vocabulary_size, (rows, model.max_source_length)).astype("int32")
    mask = np.arange(model.max_source_length)[None, :] < rng.integers(3, model.max_source_length, (rows, 1))
    target = rng.integers(1, model.target_vocabulary_size, (rows, model.max_target_length)).astype("int32")
    return {"source_ids": source, "source_padding_mask": mask, "target_ids": target}


def engine_prompts(inputs):
    """Each row of a batch as an engine prompt: its first target token (standing for the start
    token), then its source without the padding."""
    mask = inputs["source_padding_mask"]
    return [[int(inputs["target_ids"][row, 0])] + inputs["source_ids"][row][mask[row]].tolist()
            for row in range(len(mask))]


def test_cached_decoding_logits_equal_teacher_forcing(untrained):
    """The model's own cache protocol, uncompiled: three sources prefilled, each with its first
    target token at position 0; then 3 target tokens at once from one position for all rows, then
    one at a time with a position per row."""
    inputs = batch(untrained)
    full = numpy(untrained(inputs))
    assert full.shape == (3, 7, untrained.target_vocabulary_size) and full.dtype == np.float32
    targets, prompts = inputs["target_ids"], engine_prompts(inputs)
    padded = np.zeros((3, untrained.max_prompt_length), "int32")  # one call: eager JAX prepares each shape
    for row, prompt in enumerate(prompts):
        padded[row, :len(prompt)] = prompt
    logits, cache = untrained.prefill_with_cache(padded, np.asarray([len(p) for p in prompts], "int32"))
    pieces = [numpy(logits)[:, None]]
    logits, cache = untrained.call_with_cache(targets[:, 1:4], cache, 1)  # 3 at once
    pieces.append(numpy(logits))
    for i in range(4, 7):  # then one at a time
        logits, cache = untrained.call_with_cache(targets[:, i:i + 1], cache, np.full(3, i, "int32"))
        pieces.append(numpy(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)


def test_source_padding_is_invisible(untrained):
    inputs = batch(untrained)
    before = numpy(untrained(inputs))
    mask = inputs["source_padding_mask"]
    changed = {**inputs, "source_ids": np.where(mask, inputs["source_ids"], 7).astype("int32")}
    np.testing.assert_allclose(numpy(untrained(changed)), before, atol=1e-6)
    visible = {**inputs, "source_ids": np.where(mask, 7, inputs["source_ids"]).astype("int32")}
    assert np.abs(numpy(untrained(visible)) - before).max() > 1e-4  # the source does matter


def test_serialization_round_trip(untrained):
    config = keras.saving.serialize_keras_object(untrained)
    restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
    assert isinstance(restored, Seq2Seq) and restored.get_config() == untrained.get_config()
    restored.set_weights(untrained.get_weights())
    inputs = batch(untrained, seed=3)
    np.testing.assert_allclose(numpy(restored(inputs)), numpy(untrained(inputs)), atol=1e-6)


def test_shared_embeddings_and_presets(reverser, untrained, tokenizer):
    shared = reverser.model
    assert shared.source_embedding is shared.target_embedding
    assert len(shared.weights) == len(untrained.weights) - 1  # one embedding matrix fewer
    assert untrained.source_embedding.embeddings.shape == (tokenizer.vocabulary_size + 5, 32)
    with pytest.raises(ValueError, match="shared_embeddings needs one vocabulary"):
        Seq2Seq(50, 60, **TINY, shared_embeddings=True)
    assert PRESETS["base"] == dict(num_encoder_layers=6, num_decoder_layers=6, num_heads=8, hidden_dim=512,
                                   intermediate_dim=2048, max_source_length=256, max_target_length=256, dropout=0.1)
    vocab = tokenizer.vocabulary_size
    model = seq2seq_from_preset("nano", vocab, **TINY)
    assert (model.dropout, model.shared_embeddings, model.target_vocabulary_size) == (0.0, False, vocab)
    assert model.count_params() == untrained.count_params() - 5 * 32
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        seq2seq_from_preset("huge", 300)


def test_dropout_is_seeded_state(untrained):
    """Every dropout, keras-hub's included, draws from seed state that is a model variable (so a
    checkpoint resumes it): the same state gives the same masks, on torch too."""
    inputs = batch(untrained)
    state = [numpy(v.value) for v in untrained.variables]
    first = numpy(untrained(inputs, training=True))
    for variable, value in zip(untrained.variables, state):
        variable.assign(value)
    np.testing.assert_array_equal(numpy(untrained(inputs, training=True)), first)
    assert np.abs(first - numpy(untrained(inputs))).max() > 1e-3  # dropout was on


def test_reversal_is_learnt(reverser):
    pairs = reversal_pairs(64, seed=2)
    translations = reverser.translate_batch([source for source, _ in pairs])
    assert np.mean([t == target for t, (_, target) in zip(translations, pairs)]) >= 0.95
    for (source, _), translation in list(zip(pairs, translations))[:3]:  # one at a time, streamed: the same
        assert reverser.generate(source, SamplingConfig(temperature=0)).text == translation
    greedy = evaluate_translations(reverser, pairs[:20])
    assert greedy["n"] == 20 and greedy["chrf"] > 90
    beam = evaluate_translations(reverser, pairs[:2], beam_width=3, examples=2)
    assert beam["n"] == 2 and beam["chrf"] > 90
    assert beam["examples"] == [{"source": s, "reference": t, "hypothesis": t} for s, t in pairs[:2]]


class _Echo:
    """A stand-in generator that answers from a table."""

    def __init__(self, answers):
        self.answers = answers

    def translate_batch(self, sources, batch_size=32):
        return [self.answers[s] for s in sources]

    def beam_search(self, source, beam_width, truncate_prompt):
        return type("R", (), {"text": self.answers[source]})


def test_evaluation_scores_with_sacrebleu():
    pairs = [("one", "the cat sat on the mat"), ("two", "a dog ran in the park today")]
    perfect = evaluate_translations(_Echo(dict(pairs)), pairs)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    wrong = evaluate_translations(_Echo({"one": "the cat sat on a hat", "two": "dogs run"}), pairs, beam_width=2)
    assert 0 < wrong["chrf"] < 100 and wrong["bleu"] < 50
    with pytest.raises(ZooError, match="no pairs"):
        evaluate_translations(_Echo({}), [])


def test_rouge_is_rouge_score_s_mean_f_measure_as_computed_by_hand():
    from zoo.families.seq2seq.metrics import corpus_scores

    references = ["the cat sat on the mat", "a dog ran in the park today"]
    scores = corpus_scores(["the cat on the mat", "Dogs run!"], references)
    # Pair 1: 5 of 6 unigrams (precision 1), 3 of 5 bigrams (precision 3/4), LCS 5.
    # Pair 2: "dogs" stems to "dog" (1 of 2 unigrams, recall 1/7); no bigram; LCS 1.
    f = lambda p, r: 2 * p * r / (p + r) if p + r else 0.0  # noqa: E731
    assert scores["rouge1"] == pytest.approx(100 * (f(1, 5 / 6) + f(1 / 2, 1 / 7)) / 2)
    assert scores["rouge2"] == pytest.approx(100 * (f(3 / 4, 3 / 5) + 0) / 2)
    assert scores["rougeL"] == pytest.approx(scores["rouge1"])  # here the LCS is the unigram overlap
    perfect = corpus_scores(references, references)
    assert all(perfect[m] == pytest.approx(100) for m in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"))
    with pytest.raises(ZooError, match="1 hypotheses for 2 references"):
        corpus_scores(["x"], references)


def test_cached_greedy_equals_uncached_recomputation(reverser, untrained, tokenizer):
    end = tokenizer.end_token_id
    for generator, source in ((reverser, "fedca"), (Seq2SeqGenerator(untrained, tokenizer, tokenizer), "abc")):
        model = generator.model
        result = generator.generate(source, SamplingConfig(temperature=0))
        ids = tokenizer.encode(source) + [end]
        padding = [end] * (model.max_source_length - len(ids))
        decoded = []
        while len(decoded) < model.max_target_length:
            # The whole model again for every token, no cache. Shapes are kept to those used
            # elsewhere (JAX prepares each new shape op by op, which takes seconds): 3 rows, and
            # padding (invisible, as tested above) up to the maximum lengths.
            target = [end] + decoded + [end] * (model.max_target_length - 1 - len(decoded))
            inputs = {"source_ids": np.asarray([ids + padding] * 3, dtype="int32"),
                      "source_padding_mask": np.asarray([[True] * len(ids) + [False] * len(padding)] * 3),
                      "target_ids": np.asarray([target] * 3, dtype="int32")}
            token = int(np.argmax(numpy(model(inputs))[0, len(decoded)]))
            if token == end:
                break
            decoded.append(token)
        assert result.token_ids == decoded
        assert result.text == tokenizer.decode(decoded)
        assert result.finish_reason == (FINISH_END if len(decoded) < model.max_target_length else FINISH_LENGTH)


def test_beam_width_one_is_greedy(reverser, untrained, tokenizer):
    untrained_generator = Seq2SeqGenerator(untrained, tokenizer, tokenizer)
    assert untrained_generator.engine is engine_for(untrained)  # generators of one model share its engine
    for generator, source in ((reverser, "abcde"), (reverser, "fab"), (untrained_generator, "ddd")):
        greedy = generator.generate(source, SamplingConfig(temperature=0))
        beam = generator.beam_search(source, beam_width=1)
        assert (beam.token_ids, beam.finish_reason) == (greedy.token_ids, greedy.finish_reason)
        np.testing.assert_allclose(beam.logprobs, greedy.logprobs, atol=1e-5)


def teacher_forced_logprobs(model, tokenizer, source, outputs):
    """For each output (token ids): the log-prob of each of its tokens and then of the end token,
    by the whole model without a cache, 3 rows at a time."""
    end, rows = tokenizer.end_token_id, []
    ids = tokenizer.encode(source) + [end]
    source_row = ids + [end] * (model.max_source_length - len(ids))
    for first in range(0, len(outputs), 3):
        chunk = outputs[first:first + 3]
        targets = [([end] + out + [end] * model.max_target_length)[:model.max_target_length] for out in chunk]
        targets += [targets[0]] * (3 - len(targets))
        inputs = {"source_ids": np.asarray([source_row] * 3, dtype="int32"),
                  "source_padding_mask": np.asarray([[True] * len(ids) + [False] * (len(source_row) - len(ids))] * 3),
                  "target_ids": np.asarray(targets, dtype="int32")}
        logits = numpy(keras.ops.log_softmax(model(inputs), axis=-1))
        for row, out in enumerate(chunk):
            wanted = out + [end]
            rows.append([float(logits[row, i, t]) for i, t in enumerate(wanted[:model.max_target_length])])
    return rows


def test_beam_scores(reverser, untrained, tokenizer):
    penalty = lambda length: ((5 + length) / 6) ** 0.6  # noqa: E731  GNMT's, with length_penalty 0.6
    for generator, source in ((reverser, "feed"), (Seq2SeqGenerator(untrained, tokenizer, tokenizer), "abc")):
        quick = generator.beam_search(source, beam_width=3, length_penalty=0.6)
        thorough = generator.beam_search(source, beam_width=3, length_penalty=0.6, early_stopping=False)
        for result in (quick, thorough):
            assert [s for _, s in result.beams] == sorted((s for _, s in result.beams), reverse=True)
            assert (result.score, result.token_ids) == (result.beams[0][1], result.beams[0][0])
            # Every beam's score is what the model without a cache gives its tokens (and its end
            # token, unless it ran out of room): the cache followed each beam as beams were reordered.
            outputs = [tokens for tokens, _ in result.beams]
            for (tokens, score), logprobs in zip(result.beams, teacher_forced_logprobs(generator.model, tokenizer,
                                                                                       source, outputs)):
                ended = len(tokens) < generator.max_length
                expected = sum(logprobs[:len(tokens) + ended]) / penalty(len(tokens) + ended)
                assert score == pytest.approx(expected, abs=1e-4)
            np.testing.assert_allclose(result.logprobs, teacher_forced_logprobs(
                generator.model, tokenizer, source, [result.token_ids])[0][:len(result.token_ids)], atol=1e-4)
        assert thorough.score >= quick.score - 1e-9  # searching on can only find a better beam
    assert reverser.beam_search("abcd", beam_width=3).text == "dcba"
    assert len(reverser.beam_search("abcd", beam_width=3, max_new_tokens=2).token_ids) == 2


def test_seeded_sampling_is_reproducible_and_seeds_differ(untrained, tokenizer):
    generator = Seq2SeqGenerator(untrained, tokenizer, tokenizer)
    config = dict(temperature=2.0, top_k=50, top_p=0.95)
    a = generator.generate("abc", SamplingConfig(**config, seed=1))
    b = generator.generate("abc", SamplingConfig(**config, seed=1))
    c = generator.generate("abc", SamplingConfig(**config, seed=2))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert len(generator.generate("abc", SamplingConfig(max_new_tokens=3, temperature=2, seed=4)).token_ids) <= 3


def test_streaming_and_stop_strings(untrained, tokenizer):
    generator = Seq2SeqGenerator(untrained, tokenizer, tokenizer)
    free = generator.generate("abc", SamplingConfig(temperature=2.0, seed=11))
    assert len(free.text) >= 4 and free.prompt_tokens == 4
    stop = free.text[2:4]
    chunks = []
    result = generator.generate("abc", SamplingConfig(temperature=2.0, seed=11, stop=(stop,)), chunks.append)
    assert result.finish_reason == FINISH_STOP
    assert result.text == free.text[:free.text.find(stop)] == "".join(chunks)


def test_source_and_length_limits(untrained, tokenizer):
    generator = Seq2SeqGenerator(untrained, tokenizer, tokenizer)
    long_source = "abcdef"  # 6 tokens + end, maximum 7: fits
    assert generator.generate(long_source, SamplingConfig(temperature=0)).prompt_tokens == 7
    assert generator.prompt_ids(long_source, SamplingConfig()) == tokenizer.encode(long_source) + [tokenizer.end_token_id]
    with pytest.raises(ZooError, match="the source has 8 tokens"):  # the check the server runs before streaming
        generator.prompt_ids(long_source + "a", SamplingConfig())
    with pytest.raises(ZooError, match="the source has 8 tokens .* maximum source length of 7"):
        generator.generate(long_source + "a", SamplingConfig(temperature=0))
    with pytest.raises(ZooError, match="maximum source length of 7"):
        generator.beam_search(long_source + "a")
    result = generator.generate(long_source * 3, SamplingConfig(temperature=0, truncate_prompt=True))
    assert result.prompt_tokens == 7
    with pytest.raises(ZooError, match="max_new_tokens 8 exceeds the model's maximum target length 7"):
        generator.generate("abc", SamplingConfig(max_new_tokens=8))
    with pytest.raises(ZooError, match="temperature must be >= 0"):
        generator.generate("abc", SamplingConfig(temperature=-1))
    with pytest.raises(ZooError, match="beam_width must be at least 1"):
        generator.beam_search("abc", beam_width=0)


def test_the_decoder_step_is_traced_once_for_sources_of_every_length(tokenizer):
    """On JAX and TensorFlow the engine compiles the model's prefill (one prompt bucket here) and
    decode step (one row count and reach here) once each, whose Python runs when it is traced,
    not at each step: twenty sources of 1 to 6 letters trace the decoder twice (prefill runs the
    start token through it). On torch a plain-torch twin steps instead, and the Keras decoder
    never runs."""
    keras.utils.set_random_seed(0)
    vocab = tokenizer.vocabulary_size
    model = Seq2Seq(vocab, vocab, **TINY)
    model.build()
    runs, decode = [], model.call_with_cache
    model.call_with_cache = lambda *args, **kwargs: runs.append(len(runs)) or decode(*args, **kwargs)
    generator = Seq2SeqGenerator(model, tokenizer, tokenizer)
    for i in range(20):  # sampled: an untrained model's greedy choice may end every time at once
        source = "".join(LETTERS[(i + j) % len(LETTERS)] for j in range(1 + i % 6))
        assert generator.generate(source, SamplingConfig(seed=i)).finish_reason in (FINISH_END, FINISH_LENGTH)
    engine = generator.engine
    if keras.backend.backend() == "torch":
        assert len(runs) == 0 and engine.compile_count == 0
    else:
        assert len(runs) == 2
        assert sorted(what for what, _, _ in engine.compile_log) == ["decode", "prefill"]
        assert engine.trace_count == engine.compile_count == 2


def test_a_request_joining_mid_way_gets_the_tokens_it_gets_alone(untrained, tokenizer):
    """Continuous batching as the server's batcher does it: each request a Continuation of
    `start` in its own slot of one cache, prefilled when it arrives, then stepped together each
    at its own position. Greedy and seeded sampling alike give what each request gets alone."""
    generator = Seq2SeqGenerator(untrained, tokenizer, tokenizer)
    engine = generator.engine
    requests = [("abc", SamplingConfig(temperature=0)), ("fedcba", SamplingConfig(temperature=1.5, seed=3)),
                ("da", SamplingConfig(temperature=0.8, top_k=5, seed=7))]
    alone = [generator.generate(source, config) for source, config in requests]
    cache, busy, results, together = engine.new_cache(4), {}, {}, 0
    for step in range(40):
        if step in (0, 2, 3):  # arrivals, into the lowest free slot
            index = (0, 2, 3).index(step)
            slot = min(set(range(4)) - set(busy))
            continuation = generator.start(*requests[index])
            logits, cache = engine.prefill_slot(cache, slot, continuation.prompt_ids)
            busy[slot] = (index, continuation)
            list(continuation.feed(logits))
        for slot, (index, continuation) in list(busy.items()):
            if continuation.done:
                results[index] = run_stream(continuation.close())
                del busy[slot]
        if not busy:
            if step > 3:
                break
            continue
        rows, together = max(busy) + 1, max(together, len(busy))
        tokens, positions = np.zeros(rows, "int32"), np.zeros(rows, "int32")
        for slot, (_, continuation) in busy.items():
            tokens[slot], positions[slot] = continuation.last_token, continuation.position
        logits, cache = engine.decode(tokens, cache, positions)
        for slot, (_, continuation) in busy.items():
            list(continuation.feed(logits[slot]))
    assert [results[i].token_ids for i in range(3)] == [result.token_ids for result in alone]
    assert [results[i].prompt_tokens for i in range(3)] == [4, 7, 3]
    assert together >= 2 and sum(len(result.token_ids) for result in alone) >= 6  # they did overlap
