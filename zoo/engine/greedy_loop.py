"""The compiled engines' greedy steps on the device (`DecodeEngine.decode_greedy`): a loop in
Keras ops that JAX's and TensorFlow's engines trace into their compiled function, so that a chunk
of greedy tokens costs one round trip to the host instead of one per token."""

from keras import ops


def greedy_loop(step, cache, tokens, positions, count, end_token_id, finished, chunk):
    """The compiled engines' greedy steps, in Keras ops, traced inside their jit / tf.function:
    `step(cache, tokens, positions) -> (logits (n, vocab), cache)` at positions, positions + 1, ...,
    each step's argmax fed to the next, for `count` (<= chunk) steps or until every row is
    `finished` or has produced `end_token_id`. Returns (chosen (chunk, n) int32, logprobs (chunk,
    n) float32, steps taken, cache); rows past `steps taken` are zeros."""
    rows = tokens.shape[0]

    def more(i, cache, tokens, finished, chosen, logprobs):
        return ops.logical_and(i < count, ops.logical_not(ops.all(finished)))

    def one_step(i, cache, tokens, finished, chosen, logprobs):
        logits, cache = step(cache, tokens, positions + i)
        logits = ops.cast(logits, "float32")
        tokens = ops.cast(ops.argmax(logits, axis=-1), "int32")
        # log softmax at the argmax: the same figure `sampling.logprob` gives on the host, in float32.
        best = ops.take_along_axis(logits, tokens[:, None], axis=1)[:, 0] - ops.logsumexp(logits, axis=-1)
        chosen = ops.slice_update(chosen, (i, 0), tokens[None])
        logprobs = ops.slice_update(logprobs, (i, 0), best[None])
        return i + 1, cache, tokens, ops.logical_or(finished, ops.equal(tokens, end_token_id)), chosen, logprobs

    start = (ops.zeros((), "int32"), cache, tokens, finished, ops.zeros((chunk, rows), "int32"),
             ops.zeros((chunk, rows), "float32"))
    taken, cache, _, _, chosen, logprobs = ops.while_loop(more, one_step, start, maximum_iterations=chunk)
    return chosen, logprobs, taken, cache
