"""Continuous batching for Generate and GenerateStream on a generation model, GPT or seq2seq (as in
Orca, vLLM and TGI): the server's side of zoo.engine.slots, whose `SlotBatch` holds the requests'
Continuations in the slots of one shared KV cache and steps them together.

One scheduler per model version runs one loop on the event loop, each model call a thread-pool task:

1. drop requests whose RPC is gone (client cancelled, deadline passed): their slot is free;
2. admit waiting requests into free slots, lowest first (`SlotBatch.admit`: prompts that arrive
   together are prefilled together, in one task, so a long prompt delays the others' next step by
   one prefill);
3. one decode step for every busy slot (`SlotBatch.step`), or with `decode_steps` > 1 a chunk of
   greedy steps while no request waits for a slot (vLLM's multi-step scheduling: a request arriving
   meanwhile waits for the chunk to end, a cancelled one is freed after it, and tokens reach the RPC
   in bursts; default 1);
4. send each request the Steps its Continuation made, then its Result; a finished request frees its
   slot for step 2 of the next turn.

So a new request joins at the next step instead of waiting for the others to finish, and every
request gets the tokens it would get alone (greedy; sampled too, with a seed). Requests beyond the
free slots wait in a queue of at most `max_queue`; beyond that, `stream` raises QueueFull (the RPC
answers RESOURCE_EXHAUSTED).
"""

import asyncio
import collections
import time

from prometheus_client import Gauge, Histogram

from zoo.engine.generation import Step
from zoo.engine.slots import SlotBatch

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
        self.batch = SlotBatch(engine, slots, decode_steps, lock)
        self.executor, self.labels, self.max_queue = executor, labels, max_queue
        self.on_token, self.step_delay = on_token, step_delay
        self.requests = [None] * slots  # the _Request in each slot
        self.waiting = collections.deque()
        self.worker = None
        self.wake = None

    async def stream(self, continuation):
        """Yields the request's Steps as they are generated, then its Result."""
        if len(self.waiting) >= self.max_queue + self.requests.count(None):
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
            if not self.waiting and not any(self.requests):
                SLOTS_BUSY.labels(*self.labels).set(0)  # the last request finished: every slot is free
                self.wake.clear()
                await self.wake.wait()
            for slot, request in enumerate(self.requests):
                if request is not None and request.gone:
                    self.requests[slot] = None
                    self.batch.release(slot)
            admitted = []
            for slot in self.batch.free_slots():
                while self.waiting and self.waiting[0].gone:
                    self.waiting.popleft()
                if not self.waiting:
                    break
                self.requests[slot] = self.waiting.popleft()
                admitted.append((slot, self.requests[slot].continuation))
            QUEUED.labels(*self.labels).set(len(self.waiting))
            if admitted:
                PREFILL_ROWS.labels(*self.labels).observe(len(admitted))
                self._send(await loop.run_in_executor(self.executor, self.batch.admit, admitted))
            busy = self.batch.busy_slots()
            SLOTS_BUSY.labels(*self.labels).set(len(busy))
            if busy:
                DECODE_ROWS.labels(*self.labels).observe(len(busy))
                self._send(await loop.run_in_executor(self.executor, self._step, bool(self.waiting)))

    def _step(self, waiting):
        if self.step_delay:
            time.sleep(self.step_delay)
        return self.batch.step(waiting)

    def _send(self, made):
        """Sends each request what its slot made (zoo.engine.slots); one that ended leaves its slot."""
        for slot, items in made:
            request = self.requests[slot]
            for item in items:
                if self.on_token is not None and isinstance(item, Step) and item.token_id is not None:
                    self.on_token()
                request.out.put_nowait(item)
            if items and not isinstance(items[-1], Step):  # its Result or its failure
                self.requests[slot] = None

    def close(self):
        if self.worker is not None:
            self.worker.cancel()
