"""Decode engines: prefill a prompt once, then decode one token per row per step from a
static-shape KV cache, with the step compiled once per backend.

One engine per model (`engine_for(model)` keeps it), reused by every request. Its primitives work
on *slots*, the rows of a shared cache, each at its own position, so that a server can batch
requests continuously (a new request is prefilled into a free slot and joins the next step):

    cache = engine.new_cache(slots)                          # an empty cache of `slots` rows
    logits, cache = engine.prefill_slot(cache, slot, ids)    # run a prompt into one slot: (vocab,)
    logits, cache = engine.prefill_slots(cache, slots, prompts)  # several prompts at once: (n, vocab)
    logits, cache = engine.decode(tokens, cache, positions)  # one token per slot: (n, vocab)
    chosen, logprobs, cache = engine.decode_greedy(tokens, cache, positions, steps)  # greedy steps at once

`tokens` and `positions` are (n,) int vectors for the cache's first n rows (n <= slots; the rest
are left alone): row r's token is written at positions[r] and attends to its own cache up to there
(an idle slot among the first n simply computes garbage nobody reads). A server keeps its busy
slots low and steps only as many rows as it needs (`slot_buckets`), so one request on an
8-slot cache costs a 1-row step, not an 8-row one.
`decode_greedy` runs several greedy steps in one call: a compiled engine loops on the device
(up to `decode_chunk` steps a call), so the host's round trip per token (dispatch, copying the
logits back, picking the token: ~0.1 ms on the CPU machine, the whole step of a small model; more on
a GPU) is paid once per chunk. Greedy decoding needs nothing from the host between steps; sampling
does (the request's seeded generator lives there), so it steps one token at a time.
`prefill_slots` runs prompts that arrive together (a server's waiting requests, a batch's prompts)
through the model together, in groups of 4, 16, ... rows (`prefill_groups`), each padded to its
longest prompt's bucket (torch's GPT engine: to its longest prompt): on the CPU machine 16 short
prompts of a nano model in 3.8 ms instead of 8.2 (JAX; TensorFlow 4.5 instead of 12.8, torch 2.7
instead of 9.7: benchmarks/prefill_together.py), where one prompt's call costs about what a 16-row
decode step does.
`prefill(ids)` is the one-request shortcut: (logits, a fresh 1-slot cache); `reorder(cache, rows)`
copies rows into rows (beam search). Logits come back as float32 NumPy arrays, since sampling runs
on the host. Caches are opaque and consumed: always use the returned one (the compiled engines
update the cache in place; the argument is invalid after). The first generated token is decoded
at `first_position(ids)`: after a GPT's prompt, after a seq2seq decoder's start token.

The engines know no family: they run a model's cache protocol, which GPT, Seq2Seq and the LSTM have
(an LSTM's cache is its recurrent state):

    model.init_cache(slots)                      # the empty cache: arrays, each with a row per slot
    model.prefill_with_cache(ids, lengths)       # (rows, padded) prompts -> (logits (rows, vocab), their cache)
    model.call_with_cache(tokens, cache, positions, logits_at=0, reach=...)  # a decode step
    model.max_length, model.max_prompt_length, model.first_position(prompt_length)

and on torch the model's `torch_engine()` class, a plain-torch twin (see zoo.engine.backends).

Prompts are padded to a bucket length (`engine.buckets`: powers of two from 16, and
max_prompt_length) so that a new prompt length compiles nothing. `compile_count` counts compiled functions (one per
function and shape), `trace_count` how often a function body was traced (equal, unless a backend
retraced behind our back), `compile_seconds` the time spent tracing and compiling, and
`compile_log` lists (what, shape, seconds); a decode step's shape is (rows stepped, cache slots,
reach), reach being how far into the cache it reads (`reach_buckets`); a prefill's is its bucket,
(bucket, cache slots) when it runs straight into a row of a cache of several slots, and a
group's of `prefill_slots` (rows, bucket, cache slots).

This module is the interface and depends on no other engine module; each backend's engine
(jax_engine.py, tf_engine.py, and a family's plain-torch engine) imports it (and the compiled
ones greedy_loop.py, their device-side loop of greedy steps), and
`zoo.engine.backends` picks one for the active backend. `EagerEngine` (eager_engine.py) runs the
model's cache protocol op by op: the slow reference.
"""

import math
import threading
import time

import numpy as np

from zoo.engine.sampling import SamplingConfig, logprob, sample


def prompt_buckets(max_length, smallest=16):
    """Prompt lengths compiled for: powers of two from `smallest` below max_length, then max_length."""
    buckets, size = [], smallest
    while size < max_length:
        buckets.append(size)
        size *= 2
    return tuple(buckets) + (max_length,)


def reach_buckets(max_length):
    """How far into the cache a compiled decode step reads: powers of two from 64, and max_length.
    A step reads up to the smallest that covers its furthest position, so early tokens do not pay
    for reading the whole context; coarse, because each is one more compiled step per row count."""
    return prompt_buckets(max_length, smallest=64)


def slot_buckets(slots):
    """Row counts a decode step is compiled for on a cache of `slots` rows: 1, 2, 4, ... slots."""
    return prompt_buckets(slots, smallest=1)


def prefill_groups(slots):
    """How many prompts a compiled engine prefills together on a cache of `slots` rows (one
    compiled function per group size and bucket, made at warm-up): 4, 16, 64, ... up to slots.
    Powers of 4, not 2, to keep a server's warm-up short: two prompts together gained only
    1.1-1.4x over one at a time on the CPU machine, four 1.3-2.1x, sixteen 1.5-3.6x."""
    sizes, size = [], 4
    while size <= slots:
        sizes.append(size)
        size *= 4
    return tuple(sizes)


# The float kernel size (elements) from which TensorFlow's engine steps a single row as two (see
# pairs_single_rows): 1 MiB of float32, more than one core's share of a small CPU's L2 cache.
PAIRED_KERNEL_SIZE = 1 << 18


def pairs_single_rows(model, drops_row_axis):
    """Whether a compiled (XLA) engine on a CPU steps a single row as two tokens, its own and a copy
    at the next position (the engines' `_step`), because XLA's CPU product of one row takes a slow
    loop where that of two rows calls a fast kernel: for an int8 kernel (Keras's int8 x int8
    product: 3-4x the float32 matrix-vector product's time on JAX, GPT-2 shape batch 1 68.7 -> 361.5
    tokens/s; TensorFlow 407 -> 492), and, where `drops_row_axis` (TensorFlow's XLA), for a kernel
    of more than two axes (an EinsumDense's: the reshape to a matrix is fused into the one-row
    product, then emitted as a loop: a seq2seq decoder's step 6.2 -> 3.3 ms) and for a float (or
    int4) kernel of PAIRED_KERNEL_SIZE elements or more. TensorFlow's XLA drops a single row's axis,
    so a Dense's product becomes a matrix-vector product, which it fuses with the bias add into one
    loop on one core, where two rows call Eigen's product on both (GPT-2 shape: 24 such fusions took
    1.5 ms of a 2.5 ms step; batch 1 463 -> 576 tokens/s, GPT-2 124M 32.8 -> 39.5). A kernel that
    fits one core's cache is read as fast by one core, and the second row costs more than it saves
    (the nano preset's, 128 x 512: 1,863 -> 1,713). An int4 kernel is unpacked and dequantized to a
    float one at every step where the engine runs Keras's int4 call (not its float copy:
    zoo.layers.quantized.inference_model), so the same holds (GPT-2 shape int4 316.0 -> 359.6).
    JAX's XLA keeps the row's axis and calls its library either way; a GPT's 2-axis kernels lose 5%
    paired there.

    Only for a model whose cache keeps every position apart (`positional_cache`): the copy's key
    and value land where the next step writes before it reads, and past the last position in no
    block of the cache (zoo.layers.attention: a block's spare slot gets zeros); the first token's
    logits are the step's (JAX computes both tokens': its tied int8 output product, too, is fast
    from two rows; TensorFlow's the first's alone), and each row's int8 input quantization is its
    own, so the logits are the single row's."""
    from zoo.backend import jax_or_tensorflow_on_cpu

    if not (getattr(model, "positional_cache", False) and jax_or_tensorflow_on_cpu()):
        return False
    for layer in model._flatten_layers():
        mode = getattr(layer, "quantization_mode", None)
        if mode == "int8":
            return True
        kernel = getattr(layer, "_kernel", None)
        if not drops_row_axis or kernel is None:
            continue
        if len(kernel.shape) > 2:
            return True
        # An int4 kernel, two values to a byte, is unpacked and multiplied in float at every step.
        if mode == "int4" or "float" in str(kernel.dtype):
            if math.prod(kernel.shape) * (2 if mode == "int4" else 1) >= PAIRED_KERNEL_SIZE:
                return True
    return False


class DecodeEngine:
    """The interface and the bookkeeping shared by every engine; see the module docstring."""

    compiled = True
    # Whether `prefill_slots` runs prompts in groups (`_prefill_group`): the compiled engines, in
    # groups padded to a bucket, and an eager engine that says so, padded to the group's longest.
    prefills_together = True
    # The most greedy steps a compiled engine runs in one call: the host sees a chunk's tokens
    # together, so a stream arrives in bursts of up to this many (~50 ms of a GPT-2-sized model on
    # the CPU machine), and a chunk cut short by a stop string wastes at most this many steps less one.
    decode_chunk = 16

    def __init__(self, model):
        self.model = model
        self.max_length = model.max_length  # decode positions are below it
        self.max_prompt_length = model.max_prompt_length
        self.buckets = prompt_buckets(model.max_prompt_length)
        self.reaches = reach_buckets(model.max_length)
        self.compile_count = 0
        self.trace_count = 0
        self.compile_seconds = 0.0
        self.compile_log = []
        self._lock = threading.Lock()  # compiling; the server may call from several threads

    # --- to implement ---------------------------------------------------------------------------

    def new_cache(self, slots):
        raise NotImplementedError

    def prefill(self, ids):
        """Runs one prompt (a list of token ids) into a fresh 1-slot cache: (logits (vocab,), cache)."""
        raise NotImplementedError

    def insert(self, cache, slot, row_cache):
        """Copies a 1-slot cache (from `prefill`) into row `slot` of `cache`; returns the cache.
        The default `prefill_slot`'s; an engine that prefills straight into a row needs none."""
        raise NotImplementedError

    def reorder(self, cache, rows):
        """Row i of the cache's first len(rows) becomes what row rows[i] was (beam search follows
        its beams so); returns the cache."""
        raise NotImplementedError

    def _decode(self, tokens, cache, positions):
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------

    def reach(self, positions):
        """The reach bucket a decode step at these positions reads up to."""
        return next(r for r in self.reaches if r > int(positions.max()))

    def bucket(self, length):
        """The padded length a prompt of `length` tokens runs at."""
        if not 0 < length <= self.max_prompt_length:
            raise ValueError(f"a prompt of {length} tokens does not fit the context of {self.max_prompt_length}")
        return next(b for b in self.buckets if b >= length)

    def first_position(self, ids):
        """Where the first token generated after prompt `ids` goes in the cache (the position it
        is decoded at): the model's to say (a GPT's is after the prompt, a seq2seq decoder's
        after its start token)."""
        return int(self.model.first_position(len(ids)))

    def prefill_slot(self, cache, slot, ids):
        """Runs a prompt into row `slot` of `cache` (whatever was there is forgotten): (logits
        (vocab,), cache)."""
        logits, row = self.prefill(ids)
        if self._slots(cache) == 1 and slot == 0:
            return logits, row
        return logits, self.insert(cache, slot, row)

    def prefill_slots(self, cache, slots, prompts):
        """Runs several prompts at once, prompts[i] into row slots[i] of `cache` (distinct rows):
        (logits (len(prompts), vocab), cache), the same as `prefill_slot` of each. An engine
        that `prefills_together` runs them in the largest `prefill_groups` that fit, the shortest
        prompts together, so that a short prompt is seldom padded to a long one's bucket (a
        compiled engine's; an eager one pads to the group's longest prompt); fewer than the
        smallest group run alone. The other engines run one `prefill_slot` each."""
        slots = [int(slot) for slot in slots]
        if len(slots) != len(prompts) or len(set(slots)) != len(slots) or not all(
                0 <= slot < self._slots(cache) for slot in slots):
            raise ValueError(f"prefill_slots takes one distinct slot in [0, {self._slots(cache)}) for each of "
                             f"{len(prompts)} prompts, got {slots}")
        sizes = [self.bucket(len(ids)) for ids in prompts]  # checks every length before running any
        order = sorted(range(len(prompts)), key=lambda i: sizes[i])
        logits = [None] * len(prompts)
        groups = prefill_groups(self._slots(cache)) if self.prefills_together else ()
        while order:
            rows = max((n for n in groups if n <= len(order)), default=1)
            group, order = order[:rows], order[rows:]
            if rows == 1:
                logits[group[0]], cache = self.prefill_slot(cache, slots[group[0]], prompts[group[0]])
                continue
            width = max(sizes[i] if self.compiled else len(prompts[i]) for i in group)
            padded = np.zeros((rows, width), "int32")  # zeros after each prompt
            for row, i in enumerate(group):
                padded[row, :len(prompts[i])] = prompts[i]
            lengths = np.asarray([len(prompts[i]) for i in group], "int32")
            group_logits, cache = self._prefill_group(cache, np.asarray([slots[i] for i in group], "int32"), padded,
                                                      lengths)
            for i, row in zip(group, group_logits):
                logits[i] = row
        return np.stack(logits), cache

    def _prefill_group(self, cache, slots, ids, lengths):
        """A group of `prefill_slots`: `ids` (rows, width) padded prompts of `lengths` tokens into
        rows `slots`: (logits (rows, vocab) NumPy, cache)."""
        raise NotImplementedError

    def decode(self, tokens, cache, positions):
        """One step for the cache's first len(tokens) slots: token r goes in at positions[r].
        (logits (len(tokens), vocab), cache)."""
        tokens, positions = self._step_arguments(tokens, cache, positions)
        return self._decode(tokens, cache, positions)

    def _step_arguments(self, tokens, cache, positions, steps=1):
        """(tokens, positions) as int32 vectors, checked for `steps` steps from `positions`."""
        tokens = np.asarray(tokens, dtype="int32").reshape(-1)
        positions = np.asarray(positions, dtype="int32").reshape(-1)
        if not 0 < tokens.size <= self._slots(cache) or positions.size != tokens.size:
            raise ValueError(f"decode takes one token and one position for each of the first n <= "
                             f"{self._slots(cache)} slots, got {tokens.size} tokens, {positions.size} positions")
        if positions.size and (positions.min() < 0 or positions.max() + steps > self.max_length):
            raise ValueError(f"decode positions must be in [0, {self.max_length}), got {positions.tolist()}"
                             + (f" and {steps - 1} more steps" if steps > 1 else ""))
        return tokens, positions

    def decode_greedy(self, tokens, cache, positions, steps, end_token_id=None, finished=None):
        """Up to `steps` greedy steps at once for the cache's first len(tokens) slots: token r
        goes in at positions[r], its argmax at positions[r] + 1, and so on. Stops early once every
        row has produced `end_token_id` (or was `finished` already: a bool per row). Returns
        (chosen (taken, n) int32: each step's argmax per row, logprobs (taken, n) float32: their
        log-probabilities, cache), taken <= steps; the same tokens as `decode` and argmax step by step."""
        if steps < 1:
            raise ValueError(f"decode_greedy takes steps >= 1, got {steps}")
        tokens, positions = self._step_arguments(tokens, cache, positions, steps)
        finished = np.zeros(tokens.size, bool) if finished is None else np.asarray(finished, bool).reshape(-1)
        if finished.size != tokens.size:
            raise ValueError(f"decode_greedy takes one finished flag per token, got {finished.size} for {tokens.size}")
        end = -1 if end_token_id is None else int(end_token_id)  # -1: no argmax is ever it
        chosen, logprobs = [np.zeros((0, tokens.size), "int32")], [np.zeros((0, tokens.size), "float32")]
        while steps > 0 and not finished.all():
            count = min(steps, self.decode_chunk)
            picked, scores, cache = self._decode_greedy(tokens, cache, positions, count, end, finished)
            chosen.append(picked)
            logprobs.append(scores)
            tokens, positions, steps = picked[-1], positions + len(picked), steps - len(picked)
            finished = finished | (picked == end).any(axis=0)
        return np.concatenate(chosen), np.concatenate(logprobs), cache

    def _decode_greedy(self, tokens, cache, positions, steps, end, finished):
        """decode_greedy's work for steps <= decode_chunk: here one `decode` a step, the argmax
        picked on the host (the eager and plain-torch engines); the compiled engines loop on the
        device (`greedy_loop`)."""
        chosen, logprobs = [], []
        for i in range(steps):
            logits, cache = self._decode(tokens, cache, positions + i)
            tokens = logits.argmax(axis=-1).astype("int32")
            chosen.append(tokens)
            logprobs.append([logprob(row, token) for row, token in zip(logits, tokens)])
            finished = finished | (tokens == end)
            if finished.all():
                break
        return np.stack(chosen), np.asarray(logprobs, "float32"), cache

    def verify(self, tokens, cache, position):
        """Runs several tokens of slot 0 at once, at positions position, position + 1, ...: each
        attends to the cache up to its own position, and their keys/values are written there.
        (logits (len(tokens), vocab), cache): row i predicts the token after tokens[i]. Speculative
        decoding checks a draft's proposals so, in one pass over the weights. Only a model whose
        cache keeps every position apart (`positional_cache`) can go back to an earlier position
        afterwards; a recurrent state cannot."""
        tokens = np.asarray(tokens, dtype="int32").reshape(-1)
        if not tokens.size or position < 0 or position + tokens.size > self.max_length:
            raise ValueError(f"verify takes 1 or more tokens at positions in [0, {self.max_length}), got "
                             f"{tokens.size} at {position}")
        return self._verify(tokens, cache, int(position))

    def _verify(self, tokens, cache, position):
        raise NotImplementedError

    @staticmethod
    def _slots(cache):
        # A cache is the model's nested structure of arrays (lists, tuples, dicts), each with one
        # row per slot first: a GPT's per-layer (keys, values), a seq2seq's also its sources.
        # Walked to its first array by hand: keras.tree.flatten took 0.2 ms a call on torch, 2-4%
        # of a decode step.
        while isinstance(cache, (list, tuple, dict)):
            cache = cache[min(cache)] if isinstance(cache, dict) else cache[0]
        return int(cache.shape[0])

    @staticmethod
    def _padded(ids, size):
        """The prompt as a (1, size) int32 array, zeros after it. The padding's keys and values
        land in the cache beyond the prompt, where no query looks and decoding overwrites them."""
        padded = np.zeros((1, size), "int32")
        padded[0, :len(ids)] = ids
        return padded

    def _compiled(self, table, what, shape, build):
        """table[(what, shape)], made by `build()` (which traces and compiles) the first time,
        timed and counted. Locked, so that two threads never compile the same function."""
        function = table.get((what, shape))
        if function is None:
            with self._lock:
                function = table.get((what, shape))
                if function is None:
                    start = time.perf_counter()
                    function = table[(what, shape)] = build()
                    seconds = time.perf_counter() - start
                    self.compile_count += 1
                    self.compile_seconds += seconds
                    self.compile_log.append((what, shape, round(seconds, 3)))
        return function

    def _run_decode(self, tokens, cache, positions):
        """The compiled engines' decode: their `_run` of `_decode_fn` at the reach bucket of these
        positions, one compiled step per (rows, cache slots, reach)."""
        reach = self.reach(positions)

        def step(cache, tokens, positions):  # reach is static, so it is bound here, not an argument
            return self._decode_fn(cache, tokens, positions, reach)

        return self._run("decode", (len(tokens), self._slots(cache), reach), step, (cache, tokens, positions))

    def _run_verify(self, tokens, cache, position):
        """The compiled engines' verify: their `_run` of `_verify_fn`, one compiled function per
        (tokens, cache slots, reach)."""
        reach = self.reach(np.asarray([position + len(tokens) - 1]))

        def step(cache, tokens, start):
            return self._verify_fn(cache, tokens, start, reach)

        return self._run("verify", (len(tokens), self._slots(cache), reach), step, (cache, tokens, np.int32(position)))

    def _run_greedy(self, tokens, cache, positions, steps, end, finished):
        """The compiled engines' decode_greedy: their `_run` of `_greedy_fn` (the chunk's loop at
        the reach of its last position), one compiled function per (rows, cache slots, reach); the
        number of steps is an argument. Returns what `_greedy_fn` returns: (chosen, logprobs,
        steps taken, ...), chosen and logprobs for the whole chunk (see `_taken`)."""
        reach = self.reach(positions + steps - 1)

        def loop(cache, tokens, positions, count, end, finished):
            return self._greedy_fn(cache, tokens, positions, count, end, finished, reach)

        args = (cache, tokens, positions, np.int32(steps), np.int32(end), finished)
        return self._run("greedy", (len(tokens), self._slots(cache), reach), loop, args)

    @staticmethod
    def _taken(chosen, logprobs, taken):
        """A compiled chunk's (chosen, logprobs) as NumPy arrays, cut to the steps it took."""
        taken = int(taken)
        return np.asarray(chosen)[:taken], np.asarray(logprobs)[:taken]

    def _traced(self):
        """Called from inside a function body being traced: counts the trace."""
        self.trace_count += 1

    def warmup(self, slots=(1,), buckets=None, greedy=False):
        """Compiles ahead of the first request, for each cache size in `slots`: `prefill_slot` of
        every bucket (or those given) and `prefill_slots`' groups (`prefill_groups`) of each, the
        decode step of every `slot_buckets` row count and reach (and with `greedy`,
        `decode_greedy`'s chunk of each). Returns compile_seconds."""
        for n in slots:
            cache = self.new_cache(n)
            for size in buckets or self.buckets:
                cache = self.prefill_slot(cache, 0, [0] * size)[1]
                for rows in prefill_groups(n) if self.compiled else ():
                    cache = self.prefill_slots(cache, range(rows), [[0] * size] * rows)[1]
            for rows in slot_buckets(n):
                for reach in self.reaches:
                    positions = np.full(rows, reach - 1, "int32")
                    cache = self.decode(np.zeros(rows, "int32"), cache, positions)[1]
                    if greedy:
                        cache = self.decode_greedy(np.zeros(rows, "int32"), cache, positions, 1)[2]
        return self.compile_seconds

    def generate_batch(self, prompts, max_new_tokens, sampling=None, end_token_id=None):
        """Generates from several prompts at once, one slot each, every row at its own position.

        `sampling`: None for greedy, or a SamplingConfig (temperature, top_k, top_p, seed) for all
        rows or a list with one per row. A row stops at `end_token_id` (not included) or after
        max_new_tokens. Returns one list of new token ids per prompt.
        """
        configs = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
        configs = [c or SamplingConfig(temperature=0) for c in configs]
        rngs = [np.random.default_rng(c.seed) for c in configs]
        positions = np.asarray([self.first_position(ids) for ids in prompts], "int32")
        for ids, first in zip(prompts, positions):
            # The last token is sampled, never decoded: the others go in at first, first + 1, ...
            if first + max_new_tokens - 1 > self.max_length:
                raise ValueError(f"{len(ids)} prompt tokens + {max_new_tokens} new exceed the context "
                                 f"of {self.max_length}")
        if len(prompts) == 1:  # `prefill` makes its own cache (JAX's inside its compiled call)
            row, cache = self.prefill(prompts[0])
            logits = row[None]
        else:
            logits, cache = self.prefill_slots(self.new_cache(len(prompts)), range(len(prompts)), prompts)
        tokens = np.asarray([sample(row, c, rng) for row, c, rng in zip(logits, configs, rngs)], "int32")
        # Greedy rows all: their steps run in chunks on the device (decode_greedy).
        greedy = all(c.greedy for c in configs)
        outputs, done = [[] for _ in prompts], np.zeros(len(prompts), bool)
        made, picked = 0, [tokens]  # tokens made so far per row; the newest steps' tokens
        while True:
            for step_tokens in picked:
                done |= step_tokens == end_token_id
                for r in np.flatnonzero(~done):
                    outputs[r].append(int(step_tokens[r]))
                made += 1
                if done.all() or made == max_new_tokens:
                    return outputs
            if greedy:
                picked, _, cache = self.decode_greedy(tokens, cache, positions, max_new_tokens - made, end_token_id, done)
            else:
                logits, cache = self.decode(tokens, cache, positions)
                picked = [np.asarray([sample(row, c, rng) for row, c, rng in zip(logits, configs, rngs)], "int32")]
            positions += len(picked)
            tokens = picked[-1]
