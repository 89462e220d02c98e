"""Dynamic batching for Classify and Embed: requests to one model that arrive within a few
milliseconds of each other share one forward pass.

One worker per model version takes the first waiting request, waits up to `max_delay` seconds
for more, and runs every text it gathered (up to `max_batch_size`; a larger single request runs
alone) in one call on the thread pool. While that call runs, new requests queue up and form the
next batch, so under load batches grow without any delay at all. The wait is skipped while
requests come one at a time (the last batch held a single request and none is queued), so a lone
client pays no batching delay. Written here because grpcio has
no batching of its own, and TF Serving's and Triton's batchers are parts of those servers.
"""

import asyncio
import time

from prometheus_client import Histogram

BATCH_TEXTS = Histogram("zoo_batch_texts", "Texts per forward pass of Classify/Embed/Tag (dynamic batching).",
                        ["model", "version", "method"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
BATCH_REQUESTS = Histogram("zoo_batch_requests", "Requests per forward pass of Classify/Embed/Tag.",
                           ["model", "version", "method"], buckets=(1, 2, 4, 8, 16, 32, 64, 128))


class DynamicBatcher:
    """Runs `run(items) -> results` (one result per item, in order) on `executor` for the items
    of one or more requests. With `enabled` False, every request runs alone (for comparison)."""

    def __init__(self, run, executor, labels, max_batch_size=32, max_delay=0.005, enabled=True):
        self.run, self.executor, self.labels = run, executor, labels
        self.max_batch_size, self.max_delay, self.enabled = max_batch_size, max_delay, enabled
        self.queue = None
        self.worker = None
        self.carried = None  # a request that did not fit the last batch: it leads the next one
        self.last_requests = 1  # requests in the previous batch: 1 means nobody else is around

    async def submit(self, items):
        """The results for `items`, computed in a batch with whatever else is waiting."""
        if self.worker is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.get_running_loop().create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def _gather(self):
        """The requests of the next batch: the first one waiting, then any that join in time."""
        batch = [self.carried or await self.queue.get()]
        self.carried = None
        size = len(batch[0][0])
        alone = self.last_requests == 1 and self.queue.empty()
        deadline = time.monotonic() + (0 if alone else self.max_delay)
        while self.enabled and size < self.max_batch_size:
            if self.queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                entry = self.queue.get_nowait()
            if size + len(entry[0]) > self.max_batch_size:
                self.carried = entry
                break
            batch.append(entry)
            size += len(entry[0])
        self.last_requests = len(batch)
        return [(items, future) for items, future in batch if not future.done()]  # drop cancelled ones

    async def _work(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            items = [item for request_items, _ in batch for item in request_items]
            BATCH_TEXTS.labels(*self.labels).observe(len(items))
            BATCH_REQUESTS.labels(*self.labels).observe(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.run, items)
            except Exception as error:  # noqa: BLE001 (handed to every waiting request)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for request_items, future in batch:
                if not future.done():
                    future.set_result(results[start:start + len(request_items)])
                start += len(request_items)

    def close(self):
        if self.worker is not None:
            self.worker.cancel()
