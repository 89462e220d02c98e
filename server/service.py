"""The gRPC handlers of `zoo.v1.InferenceService`, on a `grpc.aio` event loop.

Each handler finds the model version's runtime (server/runtimes.py), turns the request into
library objects and the result into a response (server/messages.py). Every handler, unary or
streaming, is wrapped by `rpc`: one place that counts the RPC in flight and by outcome, and turns
an error into a status code (`messages.status_of`); anything else is logged as INTERNAL.
"""

import asyncio
import contextlib
import functools
import inspect
import logging

import grpc
from prometheus_client import Counter, Gauge

from server import messages
from server.auth import current_grant
from server.gen.zoo.v1 import inference_pb2_grpc as pb_grpc
from server.gen.zoo.v1 import model_pb2 as mpb
from server.status import INVALID, Abort
from server.runtimes import AnswerRuntime, EncoderRuntime, GenerationRuntime, TaggerRuntime
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")

REQUESTS = Counter("zoo_requests", "Finished RPCs by method and status code.", ["method", "code"])
IN_FLIGHT = Gauge("zoo_requests_in_flight", "RPCs being handled.")


@contextlib.asynccontextmanager
async def _outcome(method, context):
    """Counts the RPC; aborts it with the status of an error that refuses the request."""
    IN_FLIGHT.inc()
    code = grpc.StatusCode.OK
    try:
        yield
    except (asyncio.CancelledError, GeneratorExit):  # the client cancelled, or its deadline passed
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception as error:
        status = messages.status_of(error)
        if status is None:
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            raise
        code = status[0]
        await context.abort(*status)
    finally:
        IN_FLIGHT.dec()
        REQUESTS.labels(method, code.name).inc()


def rpc(handler):
    """`handler` (a coroutine function, or an async generator function for a streaming RPC)
    wrapped by `_outcome`."""
    method = handler.__name__
    if inspect.isasyncgenfunction(handler):
        @functools.wraps(handler)
        async def stream(self, request, context):
            async with _outcome(method, context):
                async with contextlib.aclosing(handler(self, request, context)) as responses:
                    async for response in responses:
                        yield response

        return stream

    @functools.wraps(handler)
    async def unary(self, request, context):
        async with _outcome(method, context):
            return await handler(self, request, context)

    return unary


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Serves the runtimes of `repository` (server.repository.Repository), which server/reload.py
    changes while the server runs; `limits`: server.limits.Limits. The caller's token grant
    (server.auth.current_grant, set by server/gate.py) limits the models it may use and see."""

    def __init__(self, repository, backend, limits):
        self.repository, self.backend, self.limits = repository, backend, limits
        self.draining = False

    def _runtime(self, spec):
        """The runtime a request names, held (counted in flight) while the `with` block runs."""
        if self.draining:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        if spec.version < 0:
            raise Abort(INVALID, f"model_spec.version must be >= 0, got {spec.version}")
        grant = current_grant()
        if spec.name and not grant.may_use(spec.name):  # the same answer whether the model exists or not
            raise Abort(grpc.StatusCode.PERMISSION_DENIED, f"model_spec.name: this token may not use model {spec.name!r}")
        try:
            runtime = self.repository.get(spec.name, spec.version, visible=grant.may_use)
        except KeyError as e:
            raise Abort(INVALID if not spec.name else grpc.StatusCode.NOT_FOUND, e.args[0]) from None
        return runtime.held()

    def _model_info(self, runtime):
        m = runtime.model
        return messages.model_info(m, self.repository.versions(m.name), self.backend, runtime.max_new_tokens)

    def _generation(self, runtime, request):
        """(prompt, SamplingConfig) of a valid generation request to `runtime`."""
        m = runtime.model
        if not isinstance(runtime, GenerationRuntime):
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"model {m.name!r} version {m.version} has task {m.task!r}; Generate needs a generation model")
        config = messages.sampling_config(request.sampling, self.limits)
        runtime.check_budget(config)
        field, prompt = messages.prompt_of(request, runtime.vocabulary_size, self.limits)
        try:
            runtime.generator.prompt_ids(prompt, config)  # the prompt fits, or is truncated as asked
        except ZooError as e:
            raise Abort(INVALID, f"{field}: {e}") from None
        return prompt, config

    def _encoder_items(self, runtime, request, method):
        """[(text, pair or None)] of a valid Classify/Embed request to `runtime`."""
        m = runtime.model
        if not isinstance(runtime, EncoderRuntime):
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"model {m.name!r} version {m.version} is a {m.info.kind} model with task {m.task!r}; "
                        f"{method} needs a classification model")
        return messages.encoder_items(request, method, self.limits)

    # --- RPCs ----------------------------------------------------------------------------------

    @rpc
    async def Generate(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            prompt, config = self._generation(runtime, request)
            async with contextlib.aclosing(runtime.steps(prompt, config)) as steps:
                async for item in steps:
                    result = item
            return messages.generate_response(runtime.model, result, request.return_logprobs)

    @rpc
    async def GenerateStream(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            prompt, config = self._generation(runtime, request)
            async with contextlib.aclosing(runtime.steps(prompt, config)) as steps:
                async for item in steps:
                    yield messages.stream_response(runtime.model, item, request.return_logprobs)

    @rpc
    async def Classify(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            items = self._encoder_items(runtime, request, "Classify")
            return messages.classify_response(runtime.model, runtime.labels, await runtime.classify(items))

    @rpc
    async def Embed(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            items = self._encoder_items(runtime, request, "Embed")
            return messages.embed_response(runtime.model, await runtime.embed(items))

    @staticmethod
    def _batched(runtime, kind, method, needs):
        """`runtime` when it is a `kind` (a BatchedRuntime), else FAILED_PRECONDITION naming what `method` needs."""
        m = runtime.model
        if not isinstance(runtime, kind):
            raise Abort(grpc.StatusCode.FAILED_PRECONDITION,
                        f"model {m.name!r} version {m.version} has task {m.task!r}; {method} needs {needs}")
        return runtime

    @rpc
    async def Tag(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            tagger = self._batched(runtime, TaggerRuntime, "Tag",
                                   "a token-classification model (`zoo train bert --task tag`)")
            texts = messages.tag_texts(request, self.limits)
            return messages.tag_response(runtime.model, await tagger.submit(texts))

    @rpc
    async def Answer(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            answerer = self._batched(runtime, AnswerRuntime, "Answer",
                                     "a question-answering model (`zoo train bert --task qa`)")
            pairs = messages.question_items(request, self.limits)
            return messages.answer_response(runtime.model, await answerer.submit(pairs))

    @rpc
    async def ListModels(self, request, context):
        """The highest version of every model the caller may use."""
        repo, grant = self.repository, current_grant()
        return mpb.ListModelsResponse(models=[self._model_info(repo.get(name)) for name in repo.names()
                                              if grant.may_use(name)])

    @rpc
    async def GetModelInfo(self, request, context):
        with self._runtime(request.model_spec) as runtime:
            return mpb.GetModelInfoResponse(model=self._model_info(runtime))
