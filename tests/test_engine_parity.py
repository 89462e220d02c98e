"""Every generating family on the current backend's decode engine: the logits of prefill and of
each decode step equal the uncached model's, with the rows of one cache at different positions
(requests joining mid-way, as in continuous batching), for GPT (learned and rotary positions) and
seq2seq."""

import keras
import numpy as np
import pytest

from zoo.engine import new_engine
from zoo.families.gpt.model import gpt_from_preset
from zoo.families.seq2seq.model import Seq2Seq

VOCAB = 61
START = 0  # the seq2seq decoder's start token in this test


def _scaled(model):
    """Larger weights than the usual init, so that the logits differ clearly from token to token
    (at init they are nearly equal, and a tolerance would test little)."""
    rng = np.random.default_rng(0)
    for variable in model.weights:
        if len(variable.shape) >= 2:
            fan_in = variable.shape[0]
            std = 0.5 if "embedding" in variable.path else fan_in ** -0.5
            variable.assign(rng.normal(0, std, variable.shape).astype("float32"))
    return model


def _gpt(position_embedding):
    keras.utils.set_random_seed(1)
    return _scaled(gpt_from_preset("nano", VOCAB, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
                                   max_length=24, position_embedding=position_embedding))


def _seq2seq():
    keras.utils.set_random_seed(1)
    model = Seq2Seq(VOCAB + 3, VOCAB, num_encoder_layers=1, num_decoder_layers=2, num_heads=2, hidden_dim=32,
                    intermediate_dim=64, max_source_length=9, max_target_length=12)
    model.build()
    return _scaled(model)


class GPTCase:
    """A GPT's engine prompt is the prompt; its uncached logits those of prompt + fed tokens."""

    def __init__(self, model):
        self.model = model

    def prompt(self, rng, length):
        return rng.integers(1, VOCAB, length).tolist()

    def reference(self, prompt, fed):
        """Uncached logits at every position of prompt + fed, padded to the context (one shape)."""
        sequence = np.zeros((1, self.model.max_length), "int32")
        sequence[0, :len(prompt) + len(fed)] = prompt + fed
        return keras.ops.convert_to_numpy(self.model(sequence))[0]


class Seq2SeqCase:
    """A seq2seq engine prompt is the start token and the source; its uncached logits those of
    the whole model on the source and the target [start] + fed tokens."""

    def __init__(self, model):
        self.model = model

    def prompt(self, rng, length):
        return [START] + rng.integers(1, self.model.source_vocabulary_size, length).tolist()

    def reference(self, prompt, fed):
        model, source = self.model, prompt[1:]
        source_ids = np.zeros((1, model.max_source_length), "int32")
        source_ids[0, :len(source)] = source
        target = np.zeros((1, model.max_target_length), "int32")
        target[0, :1 + len(fed)] = [START] + fed
        inputs = {"source_ids": source_ids, "source_padding_mask": np.arange(model.max_source_length)[None] < len(source),
                  "target_ids": target}
        return keras.ops.convert_to_numpy(model(inputs))[0]


PACKED_WAYS = ["oneDNN", "MKL"] if keras.backend.backend() == "torch" else [None]


@pytest.fixture(autouse=True, params=PACKED_WAYS)
def packed_torch_products(request, monkeypatch):
    """On torch, these small models' kernels go through each packed product a large model's may take
    on a CPU where it is faster (zoo.layers.torch_weights.PackedLinear, oneDNN's and MKL's), in turn;
    the other tests' small models keep addmm's."""
    if request.param:
        monkeypatch.setattr("zoo.layers.torch_weights.PackedLinear.MIN_SIZE", 0)
        monkeypatch.setattr("zoo.layers.torch_weights.PackedLinear.PACK", request.param)


@pytest.fixture(scope="module", params=["gpt-learned", "gpt-rotary", "seq2seq"])
def case(request):
    if request.param == "seq2seq":
        return Seq2SeqCase(_seq2seq())
    return GPTCase(_gpt(request.param.split("-")[1]))


def test_prefill_and_decode_logits_equal_the_uncached_model(case):
    """Three requests share a 4-slot cache: slot 0 from the start, slot 2 joins after 2 steps,
    slot 1 after 4, so the rows step at different positions (slot 3 stays idle). Each is fed
    random tokens; every logits row must be the uncached model's at that request's position."""
    engine, rng = new_engine(case.model), np.random.default_rng(5)
    prompts = {0: case.prompt(rng, 5), 2: case.prompt(rng, 2), 1: case.prompt(rng, 7)}
    joins = {0: 0, 2: 2, 1: 4}
    cache = engine.new_cache(4)
    tokens, positions = np.zeros(3, "int32"), np.zeros(3, "int32")
    fed = {slot: [] for slot in prompts}
    got = {slot: {} for slot in prompts}  # slot -> {position: logits}
    for step in range(7):
        for slot, when in joins.items():
            if when == step:
                logits, cache = engine.prefill_slot(cache, slot, prompts[slot])
                first = engine.first_position(prompts[slot])
                got[slot][first - 1] = logits
                positions[slot] = first
        active = [slot for slot, when in joins.items() if when <= step]
        for slot in active:
            tokens[slot] = rng.integers(1, VOCAB)
        logits, cache = engine.decode(tokens, cache, positions)
        assert logits.shape == (3, VOCAB) and logits.dtype == np.float32
        for slot in active:
            fed[slot].append(int(tokens[slot]))
            got[slot][int(positions[slot])] = logits[slot]
            positions[slot] += 1
    assert len(set(positions.tolist())) == 3  # the rows really are at different positions
    for slot, rows in got.items():
        expected = case.reference(prompts[slot], fed[slot])
        scale = np.abs(expected).max()
        assert scale > 1  # logits that differ clearly
        for position, row in rows.items():
            np.testing.assert_allclose(row, expected[position], atol=2e-5 * scale, rtol=0,
                                       err_msg=f"slot {slot} position {position}")


def test_prompts_prefilled_together_equal_the_uncached_model(case):
    """A server's waiting requests, prefilled at once into scattered slots of a 6-slot cache
    (`prefill_slots`: a compiled engine runs the four shortest as one padded group, the fifth
    alone): each prompt's logits, and the next step's, are the uncached model's, and the row
    of a request already decoding is left alone."""
    engine, rng = new_engine(case.model), np.random.default_rng(8)
    lengths = [7, 2, 5, 1, 8, 3] if isinstance(case, Seq2SeqCase) else [9, 2, 5, 1, 20, 3]  # two buckets
    prompts, slots = [case.prompt(rng, n) for n in lengths], [3, 0, 5, 1, 2]
    cache = engine.new_cache(6)
    _, cache = engine.prefill_slot(cache, 4, prompts[5])  # a request already in slot 4
    logits, cache = engine.prefill_slots(cache, slots, prompts[:5])
    assert logits.shape == (5, VOCAB) and logits.dtype == np.float32
    fed = rng.integers(1, VOCAB, 6).astype("int32")
    positions = np.zeros(6, "int32")
    for slot, prompt in zip(slots + [4], prompts):
        positions[slot] = engine.first_position(prompt)
    step, cache = engine.decode(fed, cache, positions)
    for i, (slot, prompt) in enumerate(zip(slots + [4], prompts)):
        expected = case.reference(prompt, [int(fed[slot])])
        scale = np.abs(expected).max()
        first = engine.first_position(prompt)
        if i < 5:
            np.testing.assert_allclose(logits[i], expected[first - 1], atol=2e-5 * scale, rtol=0, err_msg=f"prompt {i}")
        np.testing.assert_allclose(step[slot], expected[first], atol=2e-5 * scale, rtol=0, err_msg=f"slot {slot}")
    groups = sorted(shape for what, shape, _ in engine.compile_log if what == "prefills")
    if engine.compiled:  # the four shortest, padded to the longest's bucket, then the one left alone
        assert groups == [(4, engine.bucket(sorted(map(len, prompts[:5]))[3]), 6)], engine.compile_log
    else:
        assert groups == []


def test_an_engine_sees_weights_changed_after_it_was_made(case, monkeypatch):
    """Training after an engine was made (or a LoRA merge) changes the model's variables in place:
    the next request's logits are the changed model's, on every backend (the torch engine keeps
    packed copies of its float32 weights, and a seq2seq's fused query/key/value kernels, and must
    notice each: so on torch also with nothing packed)."""
    model, rng = case.model, np.random.default_rng(7)
    prompt = case.prompt(rng, 4)
    packings = [None]
    if keras.backend.backend() == "torch":
        from zoo.layers.torch_weights import ADDMM, PackedLinear

        packings.append(ADDMM)
    for packing in packings:
        if packing is not None:
            monkeypatch.setattr(PackedLinear, "PACK", packing)
        engine = new_engine(model)
        if keras.backend.backend() == "torch" and packing is None:  # the products really are packed ones here
            assert isinstance(engine.output, PackedLinear) == bool(PackedLinear.packed_ways())
        engine.prefill(prompt)
        original = [keras.ops.convert_to_numpy(variable) for variable in model.weights]
        try:
            for variable, value in zip(model.weights, original):
                variable.assign(value * 0.5 if value.ndim >= 2 else value)
            logits, _ = engine.prefill(prompt)
            expected = case.reference(prompt, [])[engine.first_position(prompt) - 1]
            np.testing.assert_allclose(logits, expected, atol=2e-5 * np.abs(expected).max(), rtol=0,
                                       err_msg=f"packing {packing}")
        finally:
            for variable, value in zip(model.weights, original):
                variable.assign(value)


@pytest.mark.backend_independent
def test_torch_products_multiply_by_the_way_measured_fastest(monkeypatch):
    """The torch engines multiply each large float32 kernel by one way at a single row and one at
    more: addmm on the variable's own tensor, or a packed copy (oneDNN's, MKL's); which wins depends
    on the CPU and the kernel, so each product is measured, once per set of product shapes, among
    the model's own products, and keeps only the copies its ways read. MKL's beyond MKL_MAX_ROWS
    rows take addmm. PACK forces a way. Plain torch tensors: the same whatever the Keras backend."""
    import types

    import torch

    from zoo.layers import torch_weights
    from zoo.layers.torch_weights import ADDMM, MKL, ONEDNN, PackedLinear, Weights

    assert PackedLinear.packed_ways() == [ONEDNN, MKL]  # torch's x86 CPU wheels have both
    # A real measurement: 16 x 16 products take addmm ~2 us, a oneDNN call ~15 us more.
    small = [PackedLinear(torch.randn(16, 16), torch.randn(16)) for _ in range(4)]
    assert torch_weights.fastest_ways(small, 1, [ONEDNN]) == [ADDMM] * 4
    assert all(set(product.copies) == {ONEDNN} and product.one_row == product.more_rows == ADDMM
               for product in small)

    def variable(value):
        return types.SimpleNamespace(value=value, dtype="float32", shape=tuple(value.shape))

    kernel, bias, table = variable(torch.randn(512, 768)), variable(torch.randn(768)), variable(torch.randn(900, 512))
    layer, embedding = types.SimpleNamespace(kernel=kernel, bias=bias), types.SimpleNamespace(embeddings=table)
    model = types.SimpleNamespace(dtype_policy=types.SimpleNamespace(compute_dtype="float32"))
    measured, calls = [], []

    def measure(products, rows, ways):
        assert ways == [ONEDNN, MKL]
        measured.append(([(tuple(p.weight.shape), p.bias is None) for p in products], rows))
        return fastest[rows]

    def recorded(way, op):  # records the way and rows of each packed product taken
        def call(*args):
            calls.append((way, args[0].shape[0]))
            return op(*args)
        return call

    monkeypatch.setattr(torch_weights, "fastest_ways", measure)
    monkeypatch.setattr(torch_weights.torch.ops.mkldnn, "_linear_pointwise",
                        recorded(ONEDNN, torch.ops.mkldnn._linear_pointwise))
    monkeypatch.setattr(torch_weights.torch.ops.mkl, "_mkl_linear", recorded(MKL, torch.ops.mkl._mkl_linear))
    monkeypatch.setattr(PackedLinear, "MIN_SIZE", 1024)
    monkeypatch.setattr(PackedLinear, "PACK", None)  # as the engines run (this file's fixture sets it on torch)
    shapes = [((768, 512), False), ((900, 512), True)]
    one, more = PackedLinear.MEASURED_AT
    # The fastest (dense product, tied output) at a single row and at more -> their (one_row, more_rows).
    for fastest, expected in (({one: [MKL, ADDMM], more: [MKL, ONEDNN]}, [(MKL, MKL), (ADDMM, ONEDNN)]),
                              ({one: [ADDMM, ONEDNN], more: [ONEDNN, MKL]}, [(ADDMM, ONEDNN), (ONEDNN, MKL)]),
                              ({one: [ADDMM, ADDMM], more: [ADDMM, ADDMM]}, [(ADDMM, ADDMM), (ADDMM, ADDMM)])):
        monkeypatch.setattr(PackedLinear, "_measured", {})
        for _ in range(2):  # a second engine of the same shapes is not measured again
            weights = Weights(model)
            product, output = weights.dense(layer), weights.tied_output(embedding)
            weights.settle()
            assert [(product.one_row, product.more_rows), (output.one_row, output.more_rows)] == expected
            # A product keeps only the packed copies its ways read.
            assert [set(product.copies), set(output.copies)] == [set(ways) - {ADDMM} for ways in expected]
            for rows in (*range(1, PackedLinear.ROWS + 2), PackedLinear.MKL_MAX_ROWS, PackedLinear.MKL_MAX_ROWS + 1):
                x = torch.randn(rows, 512)
                calls.clear()
                torch.testing.assert_close(product(x), x @ kernel.value + bias.value, rtol=1e-5, atol=1e-4)
                np.testing.assert_allclose(output.logits(x), (x @ table.value.T).numpy(), rtol=1e-5, atol=1e-4)
                ways = [one_row if rows == 1 else more_rows for one_row, more_rows in expected]
                assert calls == [(way, rows) for way in ways
                                 if way == ONEDNN or (way == MKL and rows <= PackedLinear.MKL_MAX_ROWS)], rows
            assert weights.stale() is False
            kernel.value.add_(0.0)  # an in-place update, as training makes: a packed copy of it is then stale
            assert weights.stale() == bool(product.copies)
        assert measured == [(shapes, one), (shapes, more)]
        measured.clear()
    for forced in (ONEDNN, MKL, ADDMM):  # PACK decides without measuring
        monkeypatch.setattr(PackedLinear, "PACK", forced)
        weights = Weights(model)
        product = weights.dense(layer)
        weights.settle()
        assert product.one_row == product.more_rows == forced and set(product.copies) == {forced} - {ADDMM}
    assert measured == []


def test_a_cache_in_blocks_decodes_across_them():
    """The self-attention cache is kept in blocks of positions (zoo.layers.attention), whose ends
    are the engines' reach buckets, so that a step reads whole blocks. Two rows of a 150-position
    GPT (blocks 0-63, 64-127, 128-149) decode across the blocks' boundaries, at positions 60-67 and
    124-131, each step reading only the blocks below its reach: their logits are the uncached
    model's, through the model's own cache protocol and through the engine."""
    from zoo.engine.interface import reach_buckets
    from zoo.layers.attention import block_bounds

    assert [end for _, end in block_bounds(150)] == list(reach_buckets(150)) == [64, 128, 150]
    assert [end for _, end in block_bounds(1024)] == list(reach_buckets(1024))
    assert block_bounds(40) == [(0, 40)]
    keras.utils.set_random_seed(1)
    model = _scaled(gpt_from_preset("nano", VOCAB, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
                                    max_length=150))
    rng = np.random.default_rng(3)
    prompts = [rng.integers(1, VOCAB, 60).tolist(), rng.integers(1, VOCAB, 124).tolist()]
    fed = rng.integers(1, VOCAB, (2, 8)).astype("int32")
    expected = [GPTCase(model).reference(prompt, row.tolist()) for prompt, row in zip(prompts, fed)]
    scale = max(np.abs(e).max() for e in expected)

    def check(row, position, logits):
        np.testing.assert_allclose(logits, expected[row][position], atol=2e-5 * scale, rtol=0,
                                   err_msg=f"row {row} position {position}")

    padded = np.zeros((2, 124), "int32")
    for row, prompt in enumerate(prompts):
        padded[row, :len(prompt)] = prompt
    logits, cache = model.call_with_cache(padded, model.init_cache(2), 0)
    for row, prompt in enumerate(prompts):
        check(row, len(prompt) - 1, keras.ops.convert_to_numpy(logits)[row, len(prompt) - 1])
    engine = new_engine(model)
    engine_cache = engine.new_cache(2)
    for slot, prompt in enumerate(prompts):
        engine_logits, engine_cache = engine.prefill_slot(engine_cache, slot, prompt)
        check(slot, len(prompt) - 1, engine_logits)
    positions = np.asarray([60, 124], "int32")
    for step in range(fed.shape[1]):
        reach = next(r for r in reach_buckets(150) if r > positions.max())
        logits, cache = model.call_with_cache(fed[:, step:step + 1], cache, positions, reach=reach)
        engine_logits, engine_cache = engine.decode(fed[:, step], engine_cache, positions)
        for row in range(2):
            check(row, positions[row], keras.ops.convert_to_numpy(logits)[row, 0])
            check(row, positions[row], engine_logits[row])
        positions = positions + 1
