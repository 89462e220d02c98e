"""Decode engines: prefill a prompt once, then decode one token per row per step from a
static-shape KV cache, with the step compiled once per backend.

One engine per model (`engine_for(model)` keeps it), reused by every request. Its primitives work
on *slots*, the rows of a shared cache, each at its own position, so that a server can batch
requests continuously (a new request is prefilled into a free slot and joins the next step):

    cache = engine.new_cache(slots)                          # an empty cache of `slots` rows
    logits, cache = engine.prefill_slot(cache, slot, ids)    # run a prompt into one slot: (vocab,)
    logits, cache = engine.decode(tokens, cache, positions)  # one token per slot: (n, vocab)

`tokens` and `positions` are (n,) int vectors for the cache's first n rows (n <= slots; the rest
are left alone): row r's token is written at positions[r] and attends to its own cache up to there
(an idle slot among the first n simply computes garbage nobody reads). A server keeps its busy
slots low and steps only as many rows as it needs (`slot_buckets`), so one request on an
8-slot cache costs a 1-row step, not an 8-row one.
`prefill(ids)` is the one-request shortcut: (logits, a fresh 1-slot cache). Logits come back as
float32 NumPy arrays, since sampling runs on the host. Caches are opaque and consumed: always use
the returned one (the compiled engines update the cache in place; the argument is invalid after).

Prompts are padded to a bucket length (`engine.buckets`: powers of two from 16, and max_length)
so that a new prompt length compiles nothing. `compile_count` counts compiled functions (one per
function and shape), `trace_count` how often a function body was traced (equal, unless a backend
retraced behind our back), `compile_seconds` the time spent tracing and compiling, and
`compile_log` lists (what, shape, seconds); a decode step's shape is (rows stepped, cache slots,
reach), reach being how far into the cache it reads (`reach_buckets`).

Backends: JAX (`jax.jit` of Keras's stateless call, the cache donated) and TensorFlow
(`tf.function(jit_compile=True)`, fixed signatures) compile the model's own `call_with_cache`;
PyTorch runs a plain-torch twin of the model's forward pass with in-place cache writes (see
torch_engine.py for why). `EagerEngine` runs `model.call_with_cache` op by op: the slow reference.
Each backend's module is imported only when that backend is active.
"""

import threading
import time

import keras
import numpy as np

_ENGINES_LOCK = threading.Lock()


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


def new_engine(model):
    """A new engine for `model` on the current Keras backend (nothing shared, nothing compiled yet)."""
    backend = keras.backend.backend()
    if backend == "jax":
        from zoo.engine.jax_engine import JaxEngine as cls
    elif backend == "tensorflow":
        from zoo.engine.tf_engine import TensorFlowEngine as cls
    elif backend == "torch":
        from zoo.engine.torch_engine import TorchEngine as cls
    else:
        cls = EagerEngine
    return cls(model)


def engine_for(model):
    """The model's shared engine on the current backend, made on first use: its compiled
    functions serve every later request."""
    with _ENGINES_LOCK:
        engine = model.__dict__.get("_zoo_decode_engine")
        if engine is None:
            engine = new_engine(model)
            # Kept on the model itself, past Keras's attribute tracking, so that it lives and dies
            # with the model (a dict keyed by model would keep every model alive through its engine).
            object.__setattr__(model, "_zoo_decode_engine", engine)
        return engine


class DecodeEngine:
    """The interface and the bookkeeping shared by every engine; see the module docstring."""

    compiled = True

    def __init__(self, model):
        self.model = model
        self.max_length = model.max_length
        self.buckets = prompt_buckets(model.max_length)
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
        """Copies a 1-slot cache (from `prefill`) into row `slot` of `cache`; returns the cache."""
        raise NotImplementedError

    def _decode(self, tokens, cache, positions):
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------

    def reach(self, positions):
        """The reach bucket a decode step at these positions reads up to."""
        return next(r for r in self.reaches if r > int(positions.max()))

    def bucket(self, length):
        """The padded length a prompt of `length` tokens runs at."""
        if not 0 < length <= self.max_length:
            raise ValueError(f"a prompt of {length} tokens does not fit the context of {self.max_length}")
        return next(b for b in self.buckets if b >= length)

    def prefill_slot(self, cache, slot, ids):
        """Runs a prompt into row `slot` of `cache` (whatever was there is forgotten): (logits
        (vocab,), cache)."""
        logits, row = self.prefill(ids)
        if self._slots(cache) == 1 and slot == 0:
            return logits, row
        return logits, self.insert(cache, slot, row)

    def decode(self, tokens, cache, positions):
        """One step for the cache's first len(tokens) slots: token r goes in at positions[r].
        (logits (len(tokens), vocab), cache)."""
        tokens = np.asarray(tokens, dtype="int32").reshape(-1)
        positions = np.asarray(positions, dtype="int32").reshape(-1)
        if not 0 < tokens.size <= self._slots(cache) or positions.size != tokens.size:
            raise ValueError(f"decode takes one token and one position for each of the first n <= "
                             f"{self._slots(cache)} slots, got {tokens.size} tokens, {positions.size} positions")
        if positions.size and (positions.min() < 0 or positions.max() >= self.max_length):
            raise ValueError(f"decode positions must be in [0, {self.max_length}), got {positions.tolist()}")
        return self._decode(tokens, cache, positions)

    def _slots(self, cache):
        return int(cache[0][0].shape[0])

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

    def _traced(self):
        """Called from inside a function body being traced: counts the trace."""
        self.trace_count += 1

    def warmup(self, slots=(1,), buckets=None):
        """Compiles ahead of the first request: prefill for every bucket (or those given), and for
        each cache size in `slots` the insert and the decode step of every `slot_buckets` row
        count and reach. Returns compile_seconds."""
        for size in buckets or self.buckets:
            _, row = self.prefill([0] * size)
        for n in slots:
            cache = self.new_cache(n)
            if n > 1:
                cache = self.insert(cache, 0, row)
            for rows in slot_buckets(n):
                for reach in self.reaches:
                    positions = np.full(rows, reach - 1, "int32")
                    cache = self.decode(np.zeros(rows, "int32"), cache, positions)[1]
        return self.compile_seconds

    def generate_batch(self, prompts, max_new_tokens, sampling=None, end_token_id=None):
        """Generates from several prompts at once, one slot each, every row at its own position.

        `sampling`: None for greedy, or a SamplingConfig (temperature, top_k, top_p, seed) for all
        rows or a list with one per row. A row stops at `end_token_id` (not included) or after
        max_new_tokens. Returns one list of new token ids per prompt.
        """
        from zoo.engine.generation import SamplingConfig, sample

        configs = sampling if isinstance(sampling, (list, tuple)) else [sampling] * len(prompts)
        configs = [c or SamplingConfig(temperature=0) for c in configs]
        rngs = [np.random.default_rng(c.seed) for c in configs]
        for ids in prompts:
            if len(ids) + max_new_tokens > self.max_length:
                raise ValueError(f"{len(ids)} prompt tokens + {max_new_tokens} new exceed the context "
                                 f"of {self.max_length}")
        cache = self.new_cache(len(prompts))
        tokens = np.zeros(len(prompts), "int32")
        for slot, ids in enumerate(prompts):
            logits, cache = self.prefill_slot(cache, slot, ids)
            tokens[slot] = sample(logits, configs[slot], rngs[slot])
        positions = np.asarray([len(ids) for ids in prompts], "int32")
        outputs, done = [[] for _ in prompts], [False] * len(prompts)
        for step in range(max_new_tokens):
            for r, token in enumerate(tokens):
                done[r] = done[r] or token == end_token_id
                if not done[r]:
                    outputs[r].append(int(token))
            if all(done) or step == max_new_tokens - 1:
                break
            logits, cache = self.decode(tokens, cache, positions)
            positions += 1
            tokens = np.asarray([sample(row, c, rng) for row, c, rng in zip(logits, configs, rngs)], "int32")
        return outputs


class EagerEngine(DecodeEngine):
    """The reference: the model's `call_with_cache` run op by op, no padding, nothing compiled."""

    compiled = False

    def new_cache(self, slots):
        return self.model.init_cache(slots)

    def prefill(self, ids):
        logits, cache = self.model.call_with_cache(np.asarray([ids], "int32"), self.model.init_cache(1), 0,
                                                   logits_at=len(ids) - 1)
        return keras.ops.convert_to_numpy(logits)[0], cache

    def insert(self, cache, slot, row_cache):
        put = keras.ops.slice_update
        return [(put(k, [slot, 0, 0, 0], rk), put(v, [slot, 0, 0, 0], rv))
                for (k, v), (rk, rv) in zip(cache, row_cache)]

    def _decode(self, tokens, cache, positions):
        logits, cache = self.model.call_with_cache(tokens[:, None], cache, positions, logits_at=0)
        return keras.ops.convert_to_numpy(logits), cache
