"""The JAX engine: `jax.jit` of the model's own cache protocol (`prefill_with_cache`,
`call_with_cache`) through Keras's stateless scope.

The model's variables are arguments of the compiled functions, not constants baked into them
(which would make XLA fold megabytes of weights at compile time, and go stale if the model is
trained), and the cache is donated, so XLA writes each step's keys/values in place instead of
copying the whole cache. Functions are lowered and compiled ahead of time
(`jit(...).lower(...).compile()`): the compile is timed on its own, and a call with a shape we did
not compile for is an error, never a silent recompilation.

A chunk of greedy steps (`decode_greedy`) is one compiled function too: `greedy_loop`'s
while-loop around the same step, so the host is visited once per chunk, not once per token.

An int8 model (Keras's int8 layers: int8 inputs times int8 kernels) decoding a single row on a CPU
steps two tokens, its own and a copy at the next position (`pairs_single_rows`); an int4 model
runs on a CPU as its float copy, the kernels dequantized once (`inference_model`).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np

from zoo.engine.greedy_loop import greedy_loop
from zoo.engine.interface import DecodeEngine, pairs_single_rows
from zoo.layers.quantized import inference_model

# The argument each function consumes (after the variables' values): the cache, updated in place.
_DONATE = {"prefill": (1,), "prefills": (1,), "decode": (1,), "greedy": (1,), "verify": (1,), "reorder": (1,)}


class JaxEngine(DecodeEngine):
    def __init__(self, model):
        super().__init__(inference_model(model))
        self._variables = list(self.model.variables)
        self._executables = {}
        self._pair_single_rows = pairs_single_rows(self.model, drops_row_axis=False)

    # --- what is compiled: the model's own code -------------------------------------------------

    def _prefill_fn(self, cache, slot, ids, length):
        self._traced()
        logits, row = self.model.prefill_with_cache(ids, length)
        if cache is not None:  # into row `slot`: the other rows as they are
            row = jax.tree.map(lambda a, r: jax.lax.dynamic_update_slice(a, r, (slot,) + (0,) * (a.ndim - 1)),
                               cache, row)
        return logits[0], row

    def _prefills_fn(self, cache, slots, ids, lengths):
        self._traced()
        logits, rows = self.model.prefill_with_cache(ids, lengths)
        return logits, jax.tree.map(lambda a, r: a.at[slots].set(r), cache, rows)

    def _decode_fn(self, cache, tokens, positions, reach):
        self._traced()
        return self._step(cache, tokens, positions, reach)

    def _greedy_fn(self, cache, tokens, positions, count, end, finished, reach):
        self._traced()

        def step(cache, tokens, positions):
            return self._step(cache, tokens, positions, reach)

        return greedy_loop(step, cache, tokens, positions, count, end, finished, self.decode_chunk)

    def _step(self, cache, tokens, positions, reach):
        """One decode step: (logits (n, vocab), cache)."""
        ids = tokens[:, None]
        if self._pair_single_rows and tokens.shape[0] == 1:  # see pairs_single_rows
            # Both tokens' logits, the first kept: the tied int8 product of two rows is XLA's fast one too.
            paired = jnp.concatenate([ids, ids], axis=1)
            logits, cache = self.model.call_with_cache(paired, cache, positions, reach=reach)
            return logits[:, 0], cache
        return self.model.call_with_cache(ids, cache, positions, logits_at=0, reach=reach)

    def _verify_fn(self, cache, tokens, start, reach):
        self._traced()
        logits, cache = self.model.call_with_cache(tokens[None], cache, start, reach=reach)
        return logits[0], cache

    def _reorder_fn(self, cache, rows):
        self._traced()
        return jax.tree.map(lambda a: a.at[:rows.shape[0]].set(a[rows]), cache)

    # --- compiling and running ------------------------------------------------------------------

    def _run(self, what, shape, fn, args):
        # The variables' current values at every call: JAX arrays are immutable, so training
        # replaces them rather than updating them in place, and a snapshot would go stale. Read
        # as `_value`: the `value` property's autocast and scope checks cost ~0.5 ms a step here.
        state = [v._value for v in self._variables]
        variables = self._variables

        def stateless(state, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, state))):
                return fn(*args)

        def build():
            return jax.jit(stateless, donate_argnums=_DONATE[what]).lower(state, *args).compile()

        executable = self._compiled(self._executables, what, shape, build)
        return executable(state, *args)

    def new_cache(self, slots):
        return self.model.init_cache(slots)

    def prefill(self, ids):
        # The fresh 1-slot cache is made inside the compiled call: made eagerly, a GPT-2-shaped
        # model's 36 arrays cost 2.5 ms, nearly half the prefill.
        size = self.bucket(len(ids))
        logits, cache = self._run("prefill", size, self._prefill_fn,
                                  (None, np.int32(0), self._padded(ids, size), np.int32(len(ids))))
        return np.asarray(logits), cache

    def prefill_slot(self, cache, slot, ids):
        # Straight into the cache's row, not through a 1-slot cache and `insert`: one compiled call
        # instead of two, the row written in place (the cache is donated). One compiled prefill
        # per bucket and cache size; a 1-slot cache is replaced whole.
        size, slots = self.bucket(len(ids)), self._slots(cache)
        if slots == 1:
            return self.prefill(ids)
        args = (cache, np.int32(slot), self._padded(ids, size), np.int32(len(ids)))
        logits, cache = self._run("prefill", (size, slots), self._prefill_fn, args)
        return np.asarray(logits), cache

    def _prefill_group(self, cache, slots, ids, lengths):
        shape = (len(slots), ids.shape[1], self._slots(cache))
        logits, cache = self._run("prefills", shape, self._prefills_fn, (cache, slots, ids, lengths))
        return np.asarray(logits), cache

    def reorder(self, cache, rows):
        rows = np.asarray(rows, "int32")
        return self._run("reorder", (len(rows), self._slots(cache)), self._reorder_fn, (cache, rows))

    def _decode(self, tokens, cache, positions):
        logits, cache = self._run_decode(tokens, cache, positions)
        return np.asarray(logits), cache

    def _decode_greedy(self, tokens, cache, positions, steps, end, finished):
        chosen, logprobs, taken, cache = self._run_greedy(tokens, cache, positions, steps, end, finished)
        return *self._taken(chosen, logprobs, taken), cache

    def _verify(self, tokens, cache, position):
        logits, cache = self._run_verify(tokens, cache, position)
        return np.asarray(logits), cache
