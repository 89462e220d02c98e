"""The gRPC server: `zoo.v1.InferenceService` over a model repository, plus the standard health
and reflection services.

Handlers run on a `grpc.aio` event loop; model computation runs in a thread pool, one model call
per task, under a per-model-version lock (Keras models are not guaranteed thread-safe).
GPT generation is continuously batched (server/continuous.py): concurrent requests share the
decode steps of one compiled engine, each in its own slot, with the per-request logic of
`zoo generate` (`zoo.engine.generation.Continuation`). Seq2seq generation runs each request's
`Seq2SeqGenerator.stream()` one step per task, the lock released between steps so that
concurrent streams interleave. A cancelled RPC (client cancel or deadline) stops after the step
in progress. Classify and Embed are dynamically batched (server/batching.py).
"""

import asyncio
import logging
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter, Gauge

from server.batching import DynamicBatcher
from server.continuous import ContinuousBatcher, QueueFull
from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.gen.zoo.v1 import model_pb2 as mpb
from server.repository import Repository
from zoo.bundle import load_source_tokenizer
from zoo.engine import FINISH_END, FINISH_LENGTH, FINISH_STOP, SamplingConfig, Step
from zoo.engine.classify import Classifier
from zoo.engine.factory import generator_for
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")

DECODE_STEPS = Counter("zoo_decode_steps", "Generated tokens (one model call each).", ["model", "version"])
REQUESTS = Counter("zoo_requests", "Finished RPCs by method and status code.", ["method", "code"])
IN_FLIGHT = Gauge("zoo_requests_in_flight", "RPCs being handled.")

FINISH_REASONS = {FINISH_LENGTH: pb.FINISH_REASON_LENGTH, FINISH_STOP: pb.FINISH_REASON_STOP_SEQUENCE,
                  FINISH_END: pb.FINISH_REASON_END_TOKEN}
KINDS = {"gpt": mpb.MODEL_KIND_GPT, "bert": mpb.MODEL_KIND_BERT, "seq2seq": mpb.MODEL_KIND_SEQ2SEQ}
TASKS = {"generate": mpb.TASK_GENERATION, "classify": mpb.TASK_CLASSIFICATION}
TOKENIZERS = {"char": mpb.TOKENIZER_KIND_CHAR, "bpe": mpb.TOKENIZER_KIND_BPE, "wordpiece": mpb.TOKENIZER_KIND_WORDPIECE}
BACKENDS = {"jax": mpb.BACKEND_JAX, "tensorflow": mpb.BACKEND_TENSORFLOW, "torch": mpb.BACKEND_TORCH}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


class _Abort(Exception):
    """A request refused with a status code and a message naming the field."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


class _PromptTokenizer:
    """The model's tokenizer, except that a prompt given as token ids is passed through as is, so
    that the generator's prompt checks (start token, context, truncation) apply to both kinds."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def encode(self, prompt):
        return self._tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)


def model_info(m, versions, serving_backend):
    """The ModelInfo message for a loaded model version."""
    info, provenance = m.info, m.info.get("provenance") or {}
    end_token = (info.get("special_tokens") or {}).get("end", "")
    data = provenance.get("data") or {}
    train = struct_pb2.Struct()
    train.update(provenance.get("train") or {})
    return mpb.ModelInfo(
        model_spec=mpb.ModelSpec(name=m.name, version=m.version), versions=versions,
        kind=KINDS.get(info.get("kind"), mpb.MODEL_KIND_UNSPECIFIED),
        task=TASKS.get(info.get("task"), mpb.TASK_UNSPECIFIED),
        labels=info.get("labels") or [], context_length=m.context_length,
        max_new_tokens=m.max_new_tokens_bound if m.task == "generate" else 0,
        tokenizer=mpb.TokenizerInfo(kind=TOKENIZERS.get(m.tokenizer.kind, mpb.TOKENIZER_KIND_UNSPECIFIED),
                                    vocabulary_size=m.tokenizer.vocabulary_size,
                                    end_token=end_token, end_token_id=m.tokenizer.tokenizer.token_to_id(end_token) or 0),
        serving_backend=BACKENDS.get(serving_backend, mpb.BACKEND_UNSPECIFIED),
        provenance=mpb.Provenance(
            backend=BACKENDS.get(provenance.get("backend"), mpb.BACKEND_UNSPECIFIED),
            library_versions={k: str(v) for k, v in (provenance.get("versions") or {}).items() if v is not None},
            data=mpb.TrainingData(path=str(data.get("path") or ""), sha256=data.get("sha256") or "",
                                  train_tokens=data.get("train_tokens") or 0, val_tokens=data.get("val_tokens") or 0),
            steps=provenance.get("steps") or 0,
            final_metrics={k: float(v) for k, v in (provenance.get("final_metrics") or {}).items()},
            train_settings=train, command=[str(c) for c in provenance.get("command") or []]))


def _classify_items(classifier, method):
    """The batcher's `run` for Classify or Embed: items are (text, pair or None) tuples; texts
    with and without a pair run as separate calls."""

    def run(items):
        results = [None] * len(items)
        for with_pairs in (False, True):
            chosen = [i for i, (_, pair) in enumerate(items) if (pair is not None) == with_pairs]
            if not chosen:
                continue
            texts = [items[i][0] for i in chosen]
            pairs = [items[i][1] for i in chosen] if with_pairs else None
            if method == "Embed":
                vectors, truncated = classifier.embed(texts, pairs)
                outputs = list(zip(vectors, truncated))
            else:
                outputs = classifier.classify(texts, pairs)
            for i, output in zip(chosen, outputs):
                results[i] = output
        return results

    return run


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """`generation`: settings of GPT continuous batching (ContinuousBatcher's slots, max_queue)."""

    def __init__(self, repository, backend, executor, step_delay=0.0, batching=None, generation=None):
        self.repository, self.backend, self.executor, self.step_delay = repository, backend, executor, step_delay
        self.draining = False
        models = [m for versions in repository.models.values() for m in versions.values()]
        self.generators, self.schedulers = {}, {}
        for m in (m for m in models if m.task == "generate"):
            # Token-id prompts pass through whichever tokenizer reads the prompt (seq2seq: the source's).
            if m.info["kind"] == "seq2seq":
                source = _PromptTokenizer(load_source_tokenizer(m.path))
                self.generators[(m.name, m.version)] = generator_for("seq2seq", m.model, m.tokenizer, source)
                continue
            generator = generator_for(m.info["kind"], m.model, _PromptTokenizer(m.tokenizer))
            self.generators[(m.name, m.version)] = generator
            counter = DECODE_STEPS.labels(m.name, str(m.version))
            self.schedulers[(m.name, m.version)] = ContinuousBatcher(
                generator.engine, executor, m.lock, (m.name, str(m.version)), on_token=counter.inc,
                step_delay=step_delay, **(generation or {}))
        self.batchers = {}
        for m in (m for m in models if m.task == "classify"):
            classifier = Classifier(m.model, m.tokenizer, m.info["labels"])
            for method in ("Classify", "Embed"):
                run = _classify_items(classifier, method)

                def locked(items, run=run, lock=m.lock):
                    with lock:
                        return run(items)

                self.batchers[(m.name, m.version, method)] = DynamicBatcher(
                    locked, executor, (m.name, str(m.version), method), **(batching or {}))

    # --- helpers -------------------------------------------------------------------------------

    def _model(self, spec):
        if self.draining:
            raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if spec.version < 0:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"model_spec.version must be >= 0, got {spec.version}")
        try:
            return self.repository.get(spec.name, spec.version)
        except KeyError as e:
            code = grpc.StatusCode.INVALID_ARGUMENT if not spec.name else grpc.StatusCode.NOT_FOUND
            raise _Abort(code, e.args[0]) from None

    def _generation_request(self, request):
        """(model, generator, prompt, SamplingConfig) for a valid request; raises _Abort."""
        m = self._model(request.model_spec)
        if m.task != "generate":
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"model {m.name!r} version {m.version} has task {m.task!r}; Generate needs a generation model")
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        s, context = request.sampling, m.max_new_tokens_bound
        max_new_tokens = s.max_new_tokens if s.HasField("max_new_tokens") else None
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise _Abort(invalid, f"sampling.max_new_tokens must be positive, got {max_new_tokens}")
        if max_new_tokens is not None and max_new_tokens > context:
            raise _Abort(invalid, f"sampling.max_new_tokens {max_new_tokens} must be at most {context} for model "
                                  f"{m.name!r} ({'its longest output' if m.info['kind'] == 'seq2seq' else 'below its context'})")
        temperature = s.temperature if s.HasField("temperature") else 1.0
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise _Abort(invalid, f"sampling.temperature must be >= 0, got {temperature}")
        if s.top_k < 0:
            raise _Abort(invalid, f"sampling.top_k must be >= 0, got {s.top_k}")
        top_p = s.top_p if s.HasField("top_p") else 1.0
        if not 0 < top_p <= 1:
            raise _Abort(invalid, f"sampling.top_p must be in (0, 1], got {top_p}")
        for i, stop in enumerate(s.stop_sequences):
            if not stop:
                raise _Abort(invalid, f"sampling.stop_sequences[{i}] must not be empty")
        config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=s.top_k, top_p=top_p,
                                seed=s.seed if s.HasField("seed") else None, stop=tuple(s.stop_sequences),
                                truncate_prompt=s.truncate_prompt)
        generator = self.generators[(m.name, m.version)]
        which = request.WhichOneof("prompt")
        if which == "text" and request.text:
            prompt = request.text
        elif which == "token_ids" and request.token_ids.ids:
            prompt = list(request.token_ids.ids)
            vocabulary = getattr(generator, "source_tokenizer", m.tokenizer).vocabulary_size
            for i, token in enumerate(prompt):
                if not 0 <= token < vocabulary:
                    raise _Abort(invalid, f"token_ids.ids[{i}] = {token} is outside the vocabulary [0, {vocabulary})")
        else:
            raise _Abort(invalid, "prompt: set text or token_ids; the prompt must not be empty")
        try:
            generator.prompt_ids(prompt, config)
        except ZooError as e:
            raise _Abort(invalid, f"{which}: {e}") from None
        return m, generator, prompt, config

    async def _steps(self, m, generator, prompt, config):
        """Yields the generation's Steps, then its Result as the last item (a Result, not a Step)."""
        scheduler = self.schedulers.get((m.name, m.version))
        if scheduler is None:
            async for item in self._steps_alone(m, generator, prompt, config):
                yield item
            return
        try:
            async for item in scheduler.stream(generator.start(prompt, config)):
                yield item
        except QueueFull as e:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        except ZooError as e:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    async def _steps_alone(self, m, generator, prompt, config):
        """The generator's own `stream`, one decode step per thread-pool task."""
        steps = generator.stream(prompt, config)
        counter = DECODE_STEPS.labels(m.name, str(m.version))

        def advance():
            if self.step_delay:
                time.sleep(self.step_delay)
            with m.lock:
                try:
                    step = next(steps)
                except StopIteration as done:
                    return None, done.value
            if step.token_id is not None:
                counter.inc()
            return step, None

        loop = asyncio.get_running_loop()
        while True:
            try:
                step, result = await loop.run_in_executor(self.executor, advance)
            except ZooError as e:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
            if step is None:
                yield result
                return
            yield step

    @staticmethod
    def _response(m, result, return_logprobs):
        return pb.GenerateResponse(
            model_spec=mpb.ModelSpec(name=m.name, version=m.version), text=result.text, token_ids=result.token_ids,
            finish_reason=FINISH_REASONS[result.finish_reason],
            usage=pb.Usage(prompt_tokens=result.prompt_tokens, generated_tokens=len(result.token_ids)),
            logprobs=[pb.TokenLogprob(token_id=t, logprob=p) for t, p in zip(result.token_ids, result.logprobs)]
            if return_logprobs else [])

    async def _handle(self, method, context, body):
        """Runs `body()` (a coroutine), turning _Abort into a status and counting the outcome."""
        IN_FLIGHT.inc()
        code = grpc.StatusCode.OK
        try:
            return await body()
        except _Abort as e:
            code = e.code
            await context.abort(e.code, e.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            raise
        finally:
            IN_FLIGHT.dec()
            REQUESTS.labels(method, code.name).inc()

    # --- RPCs ----------------------------------------------------------------------------------

    async def Generate(self, request, context):
        async def body():
            m, generator, prompt, config = self._generation_request(request)
            async for item in self._steps(m, generator, prompt, config):
                result = item
            return self._response(m, result, request.return_logprobs)

        return await self._handle("Generate", context, body)

    async def GenerateStream(self, request, context):
        IN_FLIGHT.inc()
        code = grpc.StatusCode.OK
        try:
            m, generator, prompt, config = self._generation_request(request)
            async for item in self._steps(m, generator, prompt, config):
                if isinstance(item, Step):
                    tokens = [item.token_id] if item.token_id is not None else []
                    logprobs = ([pb.TokenLogprob(token_id=item.token_id, logprob=item.logprob)]
                                if request.return_logprobs and tokens else [])
                    yield pb.GenerateStreamResponse(chunk=pb.GenerateChunk(text=item.text, token_ids=tokens,
                                                                           logprobs=logprobs))
                else:
                    yield pb.GenerateStreamResponse(final=self._response(m, item, request.return_logprobs))
        except _Abort as e:
            code = e.code
            await context.abort(e.code, e.message)
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("GenerateStream failed")
            raise
        finally:
            IN_FLIGHT.dec()
            REQUESTS.labels("GenerateStream", code.name).inc()

    def _encoder_request(self, request, method):
        """(model, [(text, pair or None)]) for a valid Classify/Embed request; raises _Abort."""
        m = self._model(request.model_spec)
        if m.task != "classify":
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION,
                         f"model {m.name!r} version {m.version} is a {m.info.get('kind')} model with task "
                         f"{m.task!r}; {method} needs a classification model")
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        if not request.texts:
            raise _Abort(invalid, f"texts: give at least one text to {method.lower()}")
        for i, text in enumerate(request.texts):
            if not text.strip():
                raise _Abort(invalid, f"texts[{i}] is empty")
        pairs = list(getattr(request, "text_pairs", []))
        if pairs and len(pairs) != len(request.texts):
            raise _Abort(invalid, f"text_pairs: {len(pairs)} given for {len(request.texts)} texts; give one per "
                                  "text, or none")
        return m, list(zip(request.texts, pairs or [None] * len(request.texts)))

    async def Classify(self, request, context):
        async def body():
            m, items = self._encoder_request(request, "Classify")
            results = await self.batchers[(m.name, m.version, "Classify")].submit(items)
            return pb.ClassifyResponse(
                model_spec=mpb.ModelSpec(name=m.name, version=m.version),
                results=[pb.Classification(
                    label=r.label, probability=r.probability, truncated=r.truncated,
                    classes=[pb.ClassProbability(label=label, probability=float(p))
                             for label, p in zip(m.info["labels"], r.probabilities)]) for r in results])

        return await self._handle("Classify", context, body)

    async def Embed(self, request, context):
        async def body():
            m, items = self._encoder_request(request, "Embed")
            results = await self.batchers[(m.name, m.version, "Embed")].submit(items)
            return pb.EmbedResponse(model_spec=mpb.ModelSpec(name=m.name, version=m.version),
                                    embeddings=[pb.Embedding(values=vector.tolist(), truncated=bool(cut))
                                                for vector, cut in results])

        return await self._handle("Embed", context, body)

    async def ListModels(self, request, context):
        async def body():
            repo = self.repository
            return mpb.ListModelsResponse(models=[model_info(repo.get(name), repo.versions(name), self.backend)
                                                  for name in repo.names()])

        return await self._handle("ListModels", context, body)

    async def GetModelInfo(self, request, context):
        async def body():
            m = self._model(request.model_spec)
            return mpb.GetModelInfoResponse(model=model_info(m, self.repository.versions(m.name), self.backend))

        return await self._handle("GetModelInfo", context, body)


async def serve(path, host="127.0.0.1", port=8500, grace_period=10.0, metrics_port=None, step_delay=0.0,
                workers=8, batching=None, generation=None, warmup=True, torch_threads=None):
    """Loads the repository at `path` and serves it until SIGTERM or SIGINT; then stops accepting
    RPCs, lets those in flight finish for up to `grace_period` seconds, and returns.

    `batching`: DynamicBatcher settings for Classify/Embed (max_batch_size, max_delay, enabled).
    `generation`: ContinuousBatcher settings for GPT generation (slots, max_queue).
    `warmup`: compile every GPT engine's functions before serving (no compile on a first request).
    `torch_threads`: torch's intra-op threads (default: all cores but one; see `cpu_threads_for_torch`).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(torch_threads or cpu_threads_for_torch())
        log.info("torch: %d intra-op threads", torch.get_num_threads())
    Repository.scan(path)  # a bad path fails before anything loads
    log.info("loading %s on backend %s", path, backend)
    repository = Repository.load(path, log=log.info)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo-model")
    servicer = InferenceServicer(repository, backend, executor, step_delay=step_delay, batching=batching,
                                 generation=generation)
    if warmup:
        for (name, version), scheduler in servicer.schedulers.items():
            seconds = scheduler.engine.warmup(slots=(scheduler.slots,))
            log.info("model %s version %d: decode engine compiled in %.1fs (%d functions)", name, version, seconds,
                     scheduler.engine.compile_count)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as e:
        raise ZooError(f"cannot listen on {address}: {e}") from None
    if not bound:
        raise ZooError(f"cannot listen on {address} (in use, or not a local address?)")
    await server.start()
    for status_name in ["", SERVICE_NAME, *repository.names()]:
        await health.set(status_name, health_pb2.HealthCheckResponse.SERVING)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        metrics_server, _ = start_http_server(metrics_port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, metrics_server.server_port)
    for name in repository.names():
        log.info("model %s: versions %s (serving %d) on backend %s", name,
                 ", ".join(map(str, repository.versions(name))), max(repository.versions(name)), backend)
    log.info("serving %s on %s:%d", SERVICE_NAME, host, bound)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: no new requests; waiting up to %gs for those in flight", grace_period)
    servicer.draining = True
    await health.enter_graceful_shutdown()
    await server.stop(grace_period)
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("stopped")


def cpu_threads_for_torch():
    """All the cores this process may use but one, which is left to gRPC, the event loop and the
    scheduler. With torch's OpenMP team on every core, each of those wakes stalled a whole team:
    on 2 cores, one stream ran at 122 tokens/s with 2 threads and 178 with 1 (16 streams: 580 and 770)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores - 1)


def run(path, host="127.0.0.1", port=8500, **kwargs):
    """Runs `serve` in a new event loop, with start-up and shutdown logged to stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s zoo serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    asyncio.run(serve(path, host, port, **kwargs))
