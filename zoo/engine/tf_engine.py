"""The TensorFlow engine: the model's own cache protocol (`prefill_with_cache`, `call_with_cache`)
under `tf.function(jit_compile=True)`.

The cache lives in tf.Variables that the compiled step reads and assigns, so XLA updates it in
place (a cache passed in and returned as tensors is copied whole at every step). Each function is
traced once per (what, shape) into a concrete function, which is then called directly and flat
(`_call_flat`): a concrete function's own __call__ binds nested arguments to its signature for
0.3-0.6 ms a call, and tf.function's dispatch costs about a millisecond more, together more than
a small draft model's whole step. A cache's variables are arguments, not captures, so one
concrete function serves every cache of its shape. The model's weights are captured by reference,
so the compiled step always sees the current ones. A prompt is prefilled straight into its row of
the cache (`prefill_slot`), never through a 1-slot cache of its own: making a cache's variables
costs ~0.2 ms each.

A single row of an int8 model, or of one with a kernel of more than two axes (a seq2seq decoder's
EinsumDense) or past a core's cache (`PAIRED_KERNEL_SIZE`), decodes as two tokens on a CPU, its own
and a copy at the next position (`pairs_single_rows`); an int4 model runs on a CPU as its float
copy, the kernels dequantized once (`inference_model`).
"""

import numpy as np
import tensorflow as tf
from keras import ops

from zoo.engine.greedy_loop import greedy_loop
from zoo.engine.interface import DecodeEngine, pairs_single_rows
from zoo.layers.quantized import inference_model


def _read(cache):
    return tf.nest.map_structure(lambda variable: variable.read_value(), cache)


def _assign(cache, new):
    for variable, value in zip(tf.nest.flatten(cache), tf.nest.flatten(new)):
        variable.assign(value)


def _flat(args):
    """A compiled function's inputs, flat, as `ConcreteFunction._call_flat` takes them: a variable
    as its resource handle, an array as a tensor."""
    return [x.handle if isinstance(x, tf.Variable) else tf.convert_to_tensor(x) for x in tf.nest.flatten(args)]


def _spec(x):
    return x if isinstance(x, tf.Variable) else tf.TensorSpec(np.shape(x), tf.as_dtype(np.asarray(x).dtype))


class TensorFlowEngine(DecodeEngine):
    def __init__(self, model):
        super().__init__(inference_model(model))
        self._functions = {}
        self._pair_single_rows = pairs_single_rows(self.model, drops_row_axis=True)

    # --- what is compiled: the model's own code -------------------------------------------------

    def _prefill_fn(self, cache, slot, ids, length):
        self._traced()
        logits, row = self.model.prefill_with_cache(ids, length)
        if self._slots(cache) > 1:  # into row `slot`: the other rows as they are
            row = tf.nest.map_structure(
                lambda a, r: ops.slice_update(a, (slot,) + (0,) * (len(a.shape) - 1), r), _read(cache), row)
        _assign(cache, row)
        return logits[0]

    def _prefills_fn(self, cache, slots, ids, lengths):
        self._traced()
        logits, rows = self.model.prefill_with_cache(ids, lengths)
        _assign(cache, tf.nest.map_structure(lambda a, r: tf.tensor_scatter_nd_update(a, slots[:, None], r),
                                             _read(cache), rows))
        return logits

    def _decode_fn(self, cache, tokens, positions, reach):
        self._traced()
        logits, new = self._step(_read(cache), tokens, positions, reach)
        _assign(cache, new)
        return logits

    def _greedy_fn(self, cache, tokens, positions, count, end, finished, reach):
        self._traced()

        def step(state, tokens, positions):
            return self._step(state, tokens, positions, reach)

        # The loop carries the cache as tensors, written back to its variables once, at the end.
        chosen, logprobs, taken, new = greedy_loop(step, _read(cache), tokens, positions, count, end, finished,
                                                   self.decode_chunk)
        _assign(cache, new)
        return chosen, logprobs, taken

    def _step(self, state, tokens, positions, reach):
        """One decode step over the cache's values `state`: (logits (n, vocab), the new state)."""
        ids = tokens[:, None]
        if self._pair_single_rows and tokens.shape[0] == 1:  # see pairs_single_rows
            ids = tf.concat([ids, ids], axis=1)
        return self.model.call_with_cache(ids, state, positions, logits_at=0, reach=reach)

    def _verify_fn(self, cache, tokens, start, reach):
        self._traced()
        logits, new = self.model.call_with_cache(tokens[None], _read(cache), start, reach=reach)
        _assign(cache, new)
        return logits[0]

    def _reorder_fn(self, cache, rows):
        self._traced()
        _assign(cache, tf.nest.map_structure(
            lambda a: ops.slice_update(a, (0,) * len(a.shape), tf.gather(a, rows)), _read(cache)))
        return tf.zeros(())

    # --- compiling and running ------------------------------------------------------------------

    def _run(self, what, shape, fn, args):
        first = []

        def build():
            concrete = tf.function(fn, jit_compile=True, reduce_retracing=False).get_concrete_function(
                *tf.nest.map_structure(_spec, args))
            # XLA compiles on the first call: make it here, so that it is timed. That call is this
            # one (run once only: a reorder run twice would move the rows twice).
            first.append(concrete._call_flat(_flat(args), concrete.captured_inputs))
            return concrete

        function = self._compiled(self._functions, what, shape, build)
        if first:
            return first[0]
        # Private, but ConcreteFunction's own __call__ ends in it in every TensorFlow since 2.4.
        return function._call_flat(_flat(args), function.captured_inputs)

    def new_cache(self, slots):
        return tf.nest.map_structure(lambda array: tf.Variable(array, trainable=False), self.model.init_cache(slots))

    def prefill(self, ids):
        return self.prefill_slot(self.new_cache(1), 0, ids)

    def prefill_slot(self, cache, slot, ids):
        # Straight into the cache's row, not through a 1-slot cache and `insert` (so this engine
        # has no insert): a cache's variables cost ~0.2 ms each to make (a GPT-2-shaped model's 36:
        # 6.6 ms, nearly half its prefill then). One compiled prefill per bucket and cache size.
        size, slots = self.bucket(len(ids)), self._slots(cache)
        args = (cache, np.int32(slot), self._padded(ids, size), np.int32(len(ids)))
        logits = self._run("prefill", size if slots == 1 else (size, slots), self._prefill_fn, args)
        return logits.numpy(), cache

    def _prefill_group(self, cache, slots, ids, lengths):
        shape = (len(slots), ids.shape[1], self._slots(cache))
        return self._run("prefills", shape, self._prefills_fn, (cache, slots, ids, lengths)).numpy(), cache

    def reorder(self, cache, rows):
        rows = np.asarray(rows, "int32")
        self._run("reorder", (len(rows), self._slots(cache)), self._reorder_fn, (cache, rows))
        return cache

    def _decode(self, tokens, cache, positions):
        return self._run_decode(tokens, cache, positions).numpy(), cache

    def _decode_greedy(self, tokens, cache, positions, steps, end, finished):
        return *self._taken(*self._run_greedy(tokens, cache, positions, steps, end, finished)), cache

    def _verify(self, tokens, cache, position):
        return self._run_verify(tokens, cache, position).numpy(), cache
