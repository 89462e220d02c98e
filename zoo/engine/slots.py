"""Continuous batching's core (as in Orca, vLLM and TGI), with no thread or event loop of its own:
the Continuations of many requests in the slots of one shared decode cache, admitted as slots free
up and stepped together, each at its own position. The server's scheduler (server/continuous.py)
drives one from its event loop, a call at a time on its thread pool; `generate_all` drives one to
the end for `zoo generate --input`. Written here because no library of the field offers continuous
batching for Keras models: vLLM's and TGI's schedulers are parts of those servers, for their own
PyTorch model code.

A turn is two calls:

1. `admit(pairs)`: Continuations into free slots. Their prompts are prefilled together
   (`engine.prefill_slots`: one padded group for prompts admitted together) and each is fed its
   first logits row.
2. `step(waiting)`: one decode step for every busy slot, each at its own position. Only the first
   n rows step, n the smallest of 1, 2, 4, ... slots covering the highest busy slot, so one request
   alone costs a 1-row step, not a `slots`-row one. With `decode_steps` > 1 (vLLM's multi-step
   scheduling), a turn in which every busy request is greedy and none is `waiting` runs up to that
   many steps in one call (`engine.decode_greedy`, a loop on the device for the compiled engines):
   the host's round trip is paid once per chunk, which is what a step costs a small model or a GPU.

Each returns (slot, items) for every request it touched: the Steps it made, then its Result once
it is done, or the exception that failed it; either of those last frees the slot. Each request's
own Continuation samples with its own settings and seed, so every request gets the tokens it would
get alone (greedy; sampled too, with a seed).
"""

import contextlib

import numpy as np

from zoo.engine.generation import Result
from zoo.engine.interface import slot_buckets


class SlotBatch:
    """Continuations in the `slots` rows of one decode cache of `engine` (made at the first admit).
    `lock`: held around every model call (a server's model-version lock); `decode_steps`: see above."""

    def __init__(self, engine, slots, decode_steps=1, lock=None):
        self.engine, self.slots, self.decode_steps = engine, slots, decode_steps
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.busy = [None] * slots  # the Continuation in each slot
        self.cache = None

    def free_slots(self):
        return [slot for slot, continuation in enumerate(self.busy) if continuation is None]

    def busy_slots(self):
        return [slot for slot, continuation in enumerate(self.busy) if continuation is not None]

    def release(self, slot):
        """Frees `slot` before its request is done (the request was cancelled)."""
        self.busy[slot] = None

    def admit(self, pairs):
        """Prefills the (slot, continuation) pairs' prompts together, free slots each, and feeds each
        its first logits row. A prompt the engine cannot take (checked first) fails its own request
        only; a failed call fails those in it."""
        made, ready = [], []
        for slot, continuation in pairs:
            try:
                self.engine.bucket(len(continuation.prompt_ids))
                ready.append((slot, continuation))
            except ValueError as error:
                made.append((slot, [error]))
        if not ready:
            return made
        slots, prompts = [slot for slot, _ in ready], [continuation.prompt_ids for _, continuation in ready]
        try:
            with self.lock:
                if self.cache is None:
                    self.cache = self.engine.new_cache(self.slots)
                rows, self.cache = self.engine.prefill_slots(self.cache, slots, prompts)
        except Exception as error:  # noqa: BLE001 (sent to each request in it)
            return made + [(slot, [error]) for slot in slots]
        for (slot, continuation), row in zip(ready, rows):
            self.busy[slot] = continuation
            made.append((slot, self._feed(slot, row)))
        return made

    def step(self, waiting=False):
        """One decode step (or a chunk of greedy ones) for every busy slot; `waiting`: requests wait
        for a slot, so no chunk (a finished request's slot is taken at the next turn)."""
        busy = self.busy_slots()
        if not busy:
            return []
        rows = next(n for n in slot_buckets(self.slots) if n > busy[-1])
        tokens, positions = np.zeros(rows, "int32"), np.zeros(rows, "int32")
        for slot in busy:
            tokens[slot], positions[slot] = self.busy[slot].last_token, self.busy[slot].position
        continuations = [self.busy[slot] for slot in busy]
        steps = min([self.decode_steps] + [c.budget - len(c.generated) for c in continuations])
        greedy = steps > 1 and not waiting and all(c.config.greedy for c in continuations)
        try:
            with self.lock:
                if greedy:
                    finished = np.asarray([continuation is None for continuation in self.busy[:rows]])
                    end = continuations[0].tokenizer.end_token_id
                    chosen, logprobs, self.cache = self.engine.decode_greedy(tokens, self.cache, positions, steps,
                                                                             end, finished)
                else:
                    logits, self.cache = self.engine.decode(tokens, self.cache, positions)
        except Exception as error:  # noqa: BLE001 (a failed step fails every request in it)
            for slot in busy:
                self.busy[slot] = None
            return [(slot, [error]) for slot in busy]
        made = []
        for slot in busy:
            if not greedy:
                made.append((slot, self._feed(slot, logits[slot])))
                continue
            items = []
            for token, token_logprob in zip(chosen[:, slot].tolist(), logprobs[:, slot].tolist()):
                if self.busy[slot] is None:  # done (or failed) within the chunk
                    break
                items += self._feed(slot, scored=(token, token_logprob))
            made.append((slot, items))
        return made

    def _feed(self, slot, row=None, scored=None):
        """Feeds the request in `slot` its logits `row` (or `scored`: a (token, log-prob) picked on
        the device): the Steps it made, then its Result (or its exception) when it ends, which
        frees the slot."""
        continuation, items = self.busy[slot], []
        try:
            items += continuation.feed(row) if scored is None else continuation.feed_scored(*scored)
            if continuation.done:
                self.busy[slot] = None
                steps = continuation.close()
                while True:
                    try:
                        items.append(next(steps))
                    except StopIteration as finished:
                        items.append(finished.value)
                        break
        except Exception as error:  # noqa: BLE001 (this request's failure; the others go on)
            self.busy[slot] = None
            items.append(error)
        return items


def generate_all(engine, continuations, slots, decode_steps=None):
    """Runs `continuations` (any iterable, taken one at a time as slots free up, so a long list of
    requests need not be made up front) to the end, continuously batched on `slots` rows of
    `engine` (a finished one's slot takes the next at once; greedy chunks of up to `decode_steps`,
    default the engine's `decode_chunk`, once none waits). Yields (index, Result) as each finishes,
    not in order; a request's failure raises it."""
    batch = SlotBatch(engine, slots, engine.decode_chunk if decode_steps is None else decode_steps)
    pending = enumerate(continuations)
    following, index_of = next(pending, None), {}  # the next (index, continuation) waiting for a slot
    while following is not None or batch.busy_slots():
        pairs = []
        for slot in batch.free_slots():
            if following is None:
                break
            index_of[slot] = following[0]
            pairs.append((slot, following[1]))
            following = next(pending, None)
        for slot, items in batch.admit(pairs) + batch.step(waiting=following is not None):
            if items and isinstance(items[-1], Exception):
                raise items[-1]
            if items and isinstance(items[-1], Result):
                yield index_of[slot], items[-1]
