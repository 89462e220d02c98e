"""Continuous batching for Generate and GenerateStream on a generation model, GPT or seq2seq (as in
Orca, vLLM and TGI).

One scheduler per model version owns a KV cache of `slots` rows and runs one loop:

1. drop requests whose RPC is gone (client cancelled, deadline passed): their slot is free;
2. admit waiting requests into free slots, lowest first: their prompts are prefilled into their
   slots together (`engine.prefill_slots`: one padded group for prompts that arrive together,
   one thread-pool task, so a long prompt delays the others' next step by one prefill);
3. one decode step for every busy slot, each at its own position. Only the first n rows step,
   n the smallest of 1, 2, 4, ... slots covering the highest busy slot, so one request alone
   costs a 1-row step, not a `slots`-row one;
4. hand each busy request its logits row: its own Continuation samples with its own settings and
   seed, applies its stop strings and budget, and streams its Steps to the RPC. A finished
   request frees its slot for step 2 of the next turn.

With `decode_steps` > 1 (vLLM's multi-step scheduling), a turn in which every busy request is
greedy and none is waiting runs up to that many steps in one call (`engine.decode_greedy`, a loop
on the device for the compiled engines): the host's round trip is paid once per chunk, which is
what a step costs a small model or a GPU. The price: a request arriving meanwhile waits for the
chunk to end, a cancelled one is freed after it, and tokens reach the RPC in bursts. Default 1.

So a new request joins at the next step instead of waiting for the others to finish, and every
request gets the tokens it would get alone (greedy; sampled too, with a seed). Requests beyond the
free slots wait in a queue of at most `max_queue`; beyond that, `submit` raises QueueFull (the RPC
answers RESOURCE_EXHAUSTED). Written here because no library of the field offers continuous
batching for Keras models: vLLM's and TGI's schedulers are parts of those servers, for their own
PyTorch model code.
"""

import asyncio
import collections
import time

import numpy as np
from prometheus_client import Gauge, Histogram

from zoo.engine.interface import slot_buckets
from zoo.engine.generation import Step

DECODE_ROWS = Histogram("zoo_decode_batch_requests", "Requests stepped together in one decode step (continuous batching).",
                        ["model", "version"], buckets=(1, 2, 4, 8, 16, 32, 64))
PREFILL_ROWS = Histogram("zoo_prefill_batch_requests", "Requests admitted and prefilled together in one turn "
                        "(continuous batching).", ["model", "version"], buckets=(1, 2, 4, 8, 16, 32, 64))
SLOTS_BUSY = Gauge("zoo_decode_slots_busy", "Decode slots holding a request.", ["model", "version"])
QUEUED = Gauge("zoo_generate_queue", "Generate requests waiting for a decode slot.", ["model", "version"])


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


class _Request:
    def __init__(self, continuation):
        self.continuation = continuation
        self.out = asyncio.Queue()  # Steps, then the Result; or an exception
        self.gone = False  # the RPC ended (cancelled, deadline): free the slot at the next step


class ContinuousBatcher:
    """Schedules the generations of one model version (GPT or seq2seq) over `slots` shared decode slots.

    `engine`: the model's DecodeEngine; `lock`: held around every model call (the model version's
    lock); `on_token`: called once per generated token (metrics); `step_delay`: seconds to sleep
    before each step (tests of cancellation)."""

    def __init__(self, engine, executor, lock, labels, slots=8, max_queue=64, on_token=None, step_delay=0.0,
                 decode_steps=1):
        self.engine, self.executor, self.lock, self.labels = engine, executor, lock, labels
        self.slots, self.max_queue, self.on_token, self.step_delay = slots, max_queue, on_token, step_delay
        self.decode_steps = decode_steps
        self.busy = [None] * slots  # the _Request in each slot
        self.waiting = collections.deque()
        self.cache = None
        self.worker = None
        self.wake = None

    async def stream(self, continuation):
        """Yields the request's Steps as they are generated, then its Result."""
        if len(self.waiting) >= self.max_queue + self.busy.count(None):
            raise QueueFull(f"{len(self.waiting)} generation requests are already waiting for a decode slot "
                            f"(--max-queue {self.max_queue}); retry later")
        if self.worker is None:
            self.wake = asyncio.Event()
            self.worker = asyncio.get_running_loop().create_task(self._work())
        request = _Request(continuation)
        self.waiting.append(request)
        QUEUED.labels(*self.labels).set(len(self.waiting))
        self.wake.set()
        try:
            while True:
                item = await request.out.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if not isinstance(item, Step):  # the Result: the last item
                    return
        finally:
            request.gone = True

    # --- the scheduler's loop ------------------------------------------------------------------

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            if not self.waiting and not any(self.busy):
                SLOTS_BUSY.labels(*self.labels).set(0)  # the last request finished: every slot is free
                self.wake.clear()
                await self.wake.wait()
            for slot, request in enumerate(self.busy):
                if request is not None and request.gone:
                    self.busy[slot] = None
            free, admitted = [slot for slot, request in enumerate(self.busy) if request is None], []
            while self.waiting and len(admitted) < len(free):
                request = self.waiting.popleft()
                if not request.gone:
                    admitted.append((free[len(admitted)], request))
            QUEUED.labels(*self.labels).set(len(self.waiting))
            if admitted:
                PREFILL_ROWS.labels(*self.labels).observe(len(admitted))
                rows = await loop.run_in_executor(self.executor, self._prefill, admitted)
                for (slot, request), row in zip(admitted, rows):
                    if isinstance(row, Exception):  # the request's own failure, sent to it
                        request.out.put_nowait(row)
                        continue
                    self.busy[slot] = request
                    self._deliver(slot, row)
            busy = [slot for slot, request in enumerate(self.busy) if request is not None]
            SLOTS_BUSY.labels(*self.labels).set(len(busy))
            if not busy:
                continue
            rows = next(n for n in slot_buckets(self.slots) if n > busy[-1])
            tokens, positions = np.zeros(rows, "int32"), np.zeros(rows, "int32")
            for slot in busy:
                continuation = self.busy[slot].continuation
                tokens[slot], positions[slot] = continuation.last_token, continuation.position
            DECODE_ROWS.labels(*self.labels).observe(len(busy))
            continuations = [self.busy[slot].continuation for slot in busy]
            # Several steps in one call only while nothing waits for a slot and no request samples.
            steps = min([self.decode_steps] + [c.budget - len(c.generated) for c in continuations])
            greedy = steps > 1 and not self.waiting and all(c.config.greedy for c in continuations)
            try:
                if greedy:
                    finished = np.asarray([self.busy[slot] is None for slot in range(rows)])
                    end = continuations[0].tokenizer.end_token_id
                    chosen, logprobs = await loop.run_in_executor(
                        self.executor, self._decode_greedy, tokens, positions, steps, end, finished)
                else:
                    logits = await loop.run_in_executor(self.executor, self._decode, tokens, positions)
            except Exception as error:  # noqa: BLE001 (a failed step fails every request in it)
                for slot in busy:
                    self.busy[slot].out.put_nowait(error)
                    self.busy[slot] = None
                continue
            for slot in busy:
                if greedy:
                    for token, token_logprob in zip(chosen[:, slot].tolist(), logprobs[:, slot].tolist()):
                        if self.busy[slot] is None:
                            break
                        self._deliver(slot, scored=(token, token_logprob))
                elif self.busy[slot] is not None:
                    self._deliver(slot, logits[slot])

    def _prefill(self, admitted):
        """Prefills the (slot, request) pairs' prompts together: a logits row for each, or the
        exception that fails it. A prompt the engine cannot take (checked first) fails its own
        request only; a failed call fails those in it."""
        rows, ready = [None] * len(admitted), []
        for i, (_, request) in enumerate(admitted):
            try:
                self.engine.bucket(len(request.continuation.prompt_ids))
                ready.append(i)
            except ValueError as error:
                rows[i] = error
        if ready:
            slots = [admitted[i][0] for i in ready]
            prompts = [admitted[i][1].continuation.prompt_ids for i in ready]
            with self.lock:
                if self.cache is None:
                    self.cache = self.engine.new_cache(self.slots)
                try:
                    logits, self.cache = self.engine.prefill_slots(self.cache, slots, prompts)
                except Exception as error:  # noqa: BLE001 (sent to each request in it)
                    logits = [error] * len(ready)
            for i, row in zip(ready, logits):
                rows[i] = row
        return rows

    def _decode(self, tokens, positions):
        if self.step_delay:
            time.sleep(self.step_delay)
        with self.lock:
            logits, self.cache = self.engine.decode(tokens, self.cache, positions)
        return logits

    def _decode_greedy(self, tokens, positions, steps, end, finished):
        if self.step_delay:
            time.sleep(self.step_delay)
        with self.lock:
            chosen, logprobs, self.cache = self.engine.decode_greedy(tokens, self.cache, positions, steps, end, finished)
        return chosen, logprobs

    def _deliver(self, slot, row=None, scored=None):
        """Feeds the request in `slot` its logits `row` (or `scored`: a (token, log-prob) picked on
        the device) and sends what it made; frees the slot when the request is done."""
        request = self.busy[slot]
        continuation = request.continuation
        try:
            for step in continuation.feed(row) if scored is None else continuation.feed_scored(*scored):
                if self.on_token is not None:
                    self.on_token()
                request.out.put_nowait(step)
            if continuation.done:
                steps = continuation.close()
                while True:
                    try:
                        request.out.put_nowait(next(steps))
                    except StopIteration as finished:
                        request.out.put_nowait(finished.value)
                        break
        except Exception as error:  # noqa: BLE001 (this request's failure, sent to it; the others go on)
            request.out.put_nowait(error)
            self.busy[slot] = None
        if continuation.done:
            self.busy[slot] = None

    def close(self):
        if self.worker is not None:
            self.worker.cancel()
