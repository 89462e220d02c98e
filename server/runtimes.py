"""One runtime per loaded model version: what the server runs a request on.

Each is built on the inference object the model's family gives (`families.get(kind).runtime(...)`),
so the server knows families only through that interface. Which runtime wraps it follows from
the model's task and from what the object can do, never from the family's name:

- GenerationRuntime (task "generate"): a generator with a decode `engine` and `start` (a
  per-request Continuation) is continuously batched (server/continuous.py): concurrent requests
  share the decode steps of one engine. Any other generator runs each request's `stream()` one
  step per thread-pool task, the model's lock released between steps so that concurrent streams
  interleave. Either way a cancelled RPC stops after the step in progress.
- EncoderRuntime (task "classify"): Classify and Embed, each dynamically batched (server/batching.py).
- TaggerRuntime (task "tag"): Tag, dynamically batched; AnswerRuntime (task "qa"): Answer, likewise.
- ModelRuntime: a model served for its metadata only (e.g. a masked LM: no inference runtime).

Model computation runs on the thread pool, one model call per task, under the model version's
lock (Keras models are not guaranteed thread-safe). Runtimes raise the library's errors
(ZooError, SamplingError, QueueFull); server/messages.py turns them into status codes.
"""

import asyncio
import contextlib
import dataclasses
import time

from prometheus_client import Counter

from server.batching import DynamicBatcher
from server.continuous import ContinuousBatcher
from zoo import families
from zoo.engine.sampling import SamplingError

DECODE_STEPS = Counter("zoo_decode_steps", "Generated tokens (one decode step each).", ["model", "version"])


@dataclasses.dataclass
class Settings:
    """How runtimes run: the thread pool for model calls, `step_delay` seconds of sleep before each
    decode step (tests of cancellation), DynamicBatcher settings for Classify/Embed (max_batch_size,
    max_delay, enabled), ContinuousBatcher settings for generation (slots, max_queue, decode_steps), and the
    models' drafts for speculative decoding (server.drafts.Drafts, or None)."""

    executor: object
    step_delay: float = 0.0
    batching: dict = dataclasses.field(default_factory=dict)
    generation: dict = dataclasses.field(default_factory=dict)
    drafts: object = None


class ModelRuntime:
    """A loaded model version (server.repository.LoadedModel) that serves no inference RPC.

    Every RPC holds its runtime from lookup to its last response (`held`), so that a version taken
    out of service (server/reload.py) is closed only once the RPCs in flight on it have finished."""

    max_new_tokens = 0  # the most tokens one request may generate; 0: the model does not generate

    def __init__(self, model, inference=None, settings=None):
        self.model = model
        self.in_flight = 0
        self._idle = None  # an asyncio.Event, made when somebody waits for the RPCs to finish

    def warmup(self):
        """(seconds, functions compiled) before serving, or None when there is nothing to prepare."""
        return None

    @contextlib.contextmanager
    def held(self):
        """Counts an RPC in flight on this runtime while the block runs (on the event loop)."""
        self.in_flight += 1
        try:
            yield self
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def finished(self):
        """Returns once no RPC is in flight on this runtime."""
        if self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def close(self):
        """Stops the runtime's background work (batchers); called once it is out of service and idle."""


class GenerationRuntime(ModelRuntime):
    """Generate and GenerateStream on one model version's generator."""

    def __init__(self, model, generator, settings):
        super().__init__(model)
        self.generator, self.settings = generator, settings
        self.max_new_tokens = model.max_new_tokens_bound
        # An encoder-decoder's output has a length of its own; a decoder's shares the context with the prompt.
        self.output_limit = "its longest output" if model.info.max_target_length else "below its context"
        family = families.get(model.info.kind)
        self.vocabulary_size = (family.source_tokenizer(model.path) or model.tokenizer).vocabulary_size  # of prompts
        self.tokens = DECODE_STEPS.labels(model.name, str(model.version))
        self.scheduler = None
        if hasattr(generator, "start") and hasattr(generator, "engine"):
            self.scheduler = ContinuousBatcher(generator.engine, settings.executor, model.lock,
                                               (model.name, str(model.version)), on_token=self.tokens.inc,
                                               step_delay=settings.step_delay, **settings.generation)

    def check_budget(self, config):
        """Raises SamplingError when `config` asks for more new tokens than the model can write."""
        if config.max_new_tokens is not None and config.max_new_tokens > self.max_new_tokens:
            raise SamplingError("max_new_tokens", f"{config.max_new_tokens} must be at most {self.max_new_tokens} "
                                                  f"for model {self.model.name!r} ({self.output_limit})")

    async def steps(self, prompt, config):
        """Yields the generation's Steps, then its Result as the last item (a Result, not a Step)."""
        if self.scheduler is None:
            async for item in self._steps_alone(prompt, config):
                yield item
            return
        async for item in self.scheduler.stream(self.generator.start(prompt, config)):
            yield item

    async def _steps_alone(self, prompt, config):
        """The generator's own `stream`, one decode step per thread-pool task."""
        steps = self.generator.stream(prompt, config)
        lock, delay = self.model.lock, self.settings.step_delay

        def advance():
            if delay:
                time.sleep(delay)
            with lock:
                try:
                    step = next(steps)
                except StopIteration as done:
                    return None, done.value
            if step.token_id is not None:
                self.tokens.inc()
            return step, None

        loop = asyncio.get_running_loop()
        while True:
            step, result = await loop.run_in_executor(self.settings.executor, advance)
            if step is None:
                yield result
                return
            yield step

    def warmup(self):
        if self.scheduler is None:
            # A generator that runs alone (speculative decoding's) may still have engines to compile.
            return self.generator.warmup() if hasattr(self.generator, "warmup") else None
        batch = self.scheduler.batch
        seconds = batch.engine.warmup(slots=(batch.slots,), greedy=batch.decode_steps > 1)
        return seconds, batch.engine.compile_count

    def close(self):
        if self.scheduler is not None:
            self.scheduler.close()


class EncoderRuntime(ModelRuntime):
    """Classify and Embed on one model version's classifier, each with its own DynamicBatcher.
    Items are (text, pair or None); texts with and without a pair run as separate calls."""

    def __init__(self, model, classifier, settings):
        super().__init__(model)
        self.classifier, self.labels = classifier, classifier.labels
        self.batchers = {method: DynamicBatcher(self._locked(method), settings.executor,
                                                (model.name, str(model.version), method), **settings.batching)
                         for method in ("Classify", "Embed")}

    async def classify(self, items):
        """A Classification per item."""
        return await self.batchers["Classify"].submit(items)

    async def embed(self, items):
        """(vector, truncated) per item."""
        return await self.batchers["Embed"].submit(items)

    def close(self):
        for batcher in self.batchers.values():
            batcher.close()

    def _locked(self, method):
        def run(items):
            with self.model.lock:
                return self._run(method, items)

        return run

    def _run(self, method, items):
        results = [None] * len(items)
        for with_pairs in (False, True):
            chosen = [i for i, (_, pair) in enumerate(items) if (pair is not None) == with_pairs]
            if not chosen:
                continue
            texts = [items[i][0] for i in chosen]
            pairs = [items[i][1] for i in chosen] if with_pairs else None
            if method == "Embed":
                vectors, truncated = self.classifier.embed(texts, pairs)
                outputs = list(zip(vectors, truncated))
            else:
                outputs = self.classifier.classify(texts, pairs)
            for i, output in zip(chosen, outputs):
                results[i] = output
        return results


class BatchedRuntime(ModelRuntime):
    """One RPC (`method`) on one model version's inference object, dynamically batched like
    Classify: `submit(items)` gives one result per item, computed by `compute` under the lock."""

    method = ""

    def __init__(self, model, inference, settings):
        super().__init__(model)
        self.inference = inference
        self.batcher = DynamicBatcher(self._run, settings.executor, (model.name, str(model.version), self.method),
                                      **settings.batching)

    async def submit(self, items):
        return await self.batcher.submit(items)

    def close(self):
        self.batcher.close()

    def _run(self, items):
        with self.model.lock:
            return self.compute(items)


class TaggerRuntime(BatchedRuntime):
    """Tag: texts -> a TaggedText each (zoo.families.bert.tagger)."""

    method = "Tag"

    def compute(self, texts):
        return self.inference.tag(texts)


class AnswerRuntime(BatchedRuntime):
    """Answer: (question, context) pairs -> an Answer each (zoo.families.bert.answerer)."""

    method = "Answer"

    def compute(self, pairs):
        return self.inference.answer(pairs)


RUNTIMES = {"generate": GenerationRuntime, "classify": EncoderRuntime, "tag": TaggerRuntime,
            "qa": AnswerRuntime}  # by task


def build(m, settings):
    """The runtime of loaded model version `m` (server.repository.LoadedModel)."""
    inference = families.get(m.info.kind).runtime(m.task, m.model, m.tokenizer, m.path, m.info)
    if inference is not None and m.task == "generate" and settings.drafts is not None:
        inference = settings.drafts.wrap(m.name, m.version, inference)
    kind = RUNTIMES.get(m.task, ModelRuntime) if inference is not None else ModelRuntime
    return kind(m, inference, settings)
