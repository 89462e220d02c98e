"""The OpenAI-compatible HTTP API (`zoo serve --http-port`), on the gRPC server's event loop.

Routes: GET /v1/models and /v1/models/{model}, POST /v1/completions (server-sent events with
"stream": true), POST /v1/embeddings, and zoo's own POST /v1/classify. A handler turns the JSON
body into the gRPC request message (server/http_messages.py) and awaits the servicer's own method
(server/service.py) with a `_Context` whose `abort` raises the status: so validation, caps,
batching, metrics and per-model permission are the gRPC ones, and there is no second
implementation of any of them here. A status becomes an HTTP status and an OpenAI-style error
body (`http_messages.error_of`). The token check is the gate's (`Tokens.grant_of_header`, then
`set_grant` for the servicer), and the body is held to --max-request-bytes (413) before it is
parsed. A client that disconnects cancels its handler (aiohttp's handler_cancellation), which
stops its generation as a cancelled RPC does.
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid

import grpc
from aiohttp import web

from server import http_messages as hm
from server.auth import EVERYTHING, set_grant
from server.gen.zoo.v1 import model_pb2 as mpb
from server.status import Abort
from zoo.errors import ZooError

log = logging.getLogger("zoo.serve")

ROUTES = "GET /v1/models, GET /v1/models/{model}, POST /v1/completions, POST /v1/embeddings, POST /v1/classify"
INTERNAL = hm.HttpError(500, "server_error", "internal error (the server logged it)", code="internal")


class _Context:
    """What the servicer uses of a grpc.aio ServicerContext: `abort`, here raising the status."""

    async def abort(self, code, message):
        raise Abort(code, message)


def _answer(data):
    return web.json_response(data)


def _refusal(error):
    return web.json_response(error.body(), status=error.status, headers=error.headers)


async def _event(response, data):
    """One server-sent event."""
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")


class HttpApi:
    """The HTTP API over `servicer` (server.service.InferenceServicer); `limits`:
    server.limits.Limits; `tokens`: server.auth.Tokens, or None for an open server."""

    def __init__(self, servicer, limits, tokens=None):
        self.servicer, self.limits, self.tokens = servicer, limits, tokens
        self.created = int(time.time())  # the models' `created`: bundles record no time of their own
        self.runner = None
        self.in_flight, self.idle = 0, asyncio.Event()
        self.idle.set()

    def application(self):
        app = web.Application(middlewares=[self._counted(), self._errors(), self._authenticated()],
                              client_max_size=self.limits.max_request_bytes)
        app.add_routes([web.get("/v1/models", self.list_models), web.get("/v1/models/{model}", self.get_model),
                        web.post("/v1/completions", self.completions), web.post("/v1/embeddings", self.embeddings),
                        web.post("/v1/classify", self.classify)])
        return app

    async def start(self, host, port, ssl_context=None):
        """Listens on `host`:`port` (HTTPS with `ssl_context`); returns the port."""
        # The grace period is spent in `stop` before the runner's shutdown, which then gives the
        # handlers still running a moment to finish their answer before it cancels them.
        self.runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None,
                                    shutdown_timeout=1.0)
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, host.strip("[]"), port, ssl_context=ssl_context).start()
        except OSError as e:
            await self.runner.cleanup()
            raise ZooError(f"--http-port: cannot listen on {host}:{port} ({e.strerror or e})") from None
        return self.runner.addresses[0][1]

    async def stop(self, grace_period):
        """Drains, then closes. Called once the servicer is draining: the port still listens, so
        that a request arriving now gets 503 (a client or balancer then tries another replica)
        rather than a refused connection, while the requests in flight finish for up to
        `grace_period` seconds; those still running then are cancelled."""
        if self.runner is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(self.idle.wait(), grace_period)
        await self.runner.cleanup()

    # --- middleware ----------------------------------------------------------------------------------

    def _counted(self):
        @web.middleware
        async def counted(request, handler):
            """Counts the requests in flight, for the drain."""
            self.in_flight += 1
            self.idle.clear()
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.set()

        return counted

    def _errors(self):
        @web.middleware
        async def errors(request, handler):
            """Every refusal as an OpenAI-style JSON error; never a traceback to the client."""
            try:
                return await handler(request)
            except hm.HttpError as error:
                return _refusal(error)
            except Abort as refused:
                return _refusal(hm.error_of(refused.code, refused.message))
            except web.HTTPMethodNotAllowed as e:
                allowed = ", ".join(sorted(e.allowed_methods))
                return _refusal(hm.HttpError(405, "invalid_request_error", f"{request.path} takes {allowed}, "
                                             f"not {request.method}", code="method_not_allowed",
                                             headers={"Allow": allowed}))
            except web.HTTPNotFound:
                return _refusal(hm.HttpError(404, "not_found_error", f"no route {request.method} {request.path}; "
                                             f"the routes are {ROUTES}", code="not_found"))
            except web.HTTPException as e:  # aiohttp's own (none expected past the two above)
                return _refusal(hm.HttpError(e.status, "invalid_request_error", e.reason))
            except Exception:
                log.exception("HTTP %s %s failed", request.method, request.path)
                return _refusal(INTERNAL)

        return errors

    def _authenticated(self):
        @web.middleware
        async def authenticated(request, handler):
            """The gate's token check, on every route; the grant is the servicer's to apply per model."""
            grant = EVERYTHING
            if self.tokens is not None:
                grant = self.tokens.grant_of_header(request.headers.get("Authorization"))
                if grant is None:
                    raise Abort(grpc.StatusCode.UNAUTHENTICATED,
                                "a valid token is required: send the header `Authorization: Bearer TOKEN`")
            set_grant(grant)  # every request: a connection's requests may share one task
            return await handler(request)

        return authenticated

    async def _body(self, request):
        """The request's JSON, read no further than --max-request-bytes."""
        where = f"{request.method} {request.path}"
        try:
            if request.content_length is not None:
                self.limits.check_request_size(request.content_length, where)
            data = bytearray()
            async for chunk in request.content.iter_any():
                data += chunk
                self.limits.check_request_size(len(data), where)
        except Abort as refused:  # over the cap: 413 (RESOURCE_EXHAUSTED would read as 429, a full queue)
            raise hm.HttpError(413, "invalid_request_error", refused.message, code="request_too_large") from None
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as e:
            raise hm.HttpError(400, "invalid_request_error", f"the body is not JSON ({e})",
                               code="invalid_argument") from None

    def _token_texts(self, spec, ids):
        """The text of each generated token, for logprobs: the servicer's messages carry only ids."""
        try:
            tokenizer = self.servicer.repository.get(spec.name, spec.version).model.tokenizer
        except KeyError:  # the version was unloaded since it answered
            return [f"token_id:{i}" for i in ids]
        return [tokenizer.decode([i]) for i in ids]

    # --- routes --------------------------------------------------------------------------------------

    async def list_models(self, request):
        response = await self.servicer.ListModels(mpb.ListModelsRequest(), _Context())
        return _answer({"object": "list", "data": [hm.model_json(m, self.created) for m in response.models]})

    async def get_model(self, request):
        model = request.match_info["model"]
        response = await self.servicer.GetModelInfo(mpb.GetModelInfoRequest(model_spec=hm.spec_of(model)), _Context())
        return _answer(hm.model_json(response.model, self.created, model))

    async def completions(self, request):
        completion = hm.Completion(await self._body(request))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        if completion.stream:
            return await self._stream(request, completion, head)
        response = await self.servicer.Generate(completion.request, _Context())
        tokens = self._token_texts(response.model_spec, response.token_ids) if completion.logprobs else None
        return _answer(hm.completion_json(head, response, tokens))

    async def _stream(self, request, completion, head):
        spec = completion.request.model_spec
        if not spec.version:  # every chunk names the version, and only the final message carries it: pin it now
            spec.version = max(self.servicer.repository.versions(spec.name), default=0)
        async with contextlib.aclosing(self.servicer.GenerateStream(completion.request, _Context())) as items:
            first = await anext(items)  # before the headers, so that a refusal is an HTTP status, not a 200
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            try:
                await self._events(response, items, first, completion, head)
                return response
            except ConnectionResetError:  # the client went away: leaving the block closes the generation
                return response
            except Abort as refused:
                error = hm.error_of(refused.code, refused.message)
            except Exception:
                log.exception("HTTP %s %s failed while streaming", request.method, request.path)
                error = INTERNAL
            with contextlib.suppress(ConnectionResetError):  # the headers are sent: the error is the last event
                await _event(response, error.body())
            return response

    async def _events(self, response, items, item, completion, head):
        spec = completion.request.model_spec
        model, offset = hm.model_id(spec), 0
        while item.HasField("chunk"):
            chunk, logprobs = item.chunk, None
            if completion.logprobs:
                tokens = self._token_texts(spec, chunk.token_ids)
                logprobs = hm.legacy_logprobs(tokens, [p.logprob for p in chunk.logprobs], offset)
                offset += sum(map(len, tokens))
            await _event(response, hm.chunk_json(head, model, chunk.text, logprobs))
            item = await anext(items)
        final = item.final
        await _event(response, hm.chunk_json(head, model, "", None, hm.FINISH_REASONS.get(final.finish_reason, "stop")))
        if completion.include_usage:
            await _event(response, {**head, "model": model, "choices": [], "usage": hm.usage(final)})
        await response.write(b"data: [DONE]\n\n")

    async def embeddings(self, request):
        embedding = hm.Embedding(await self._body(request))
        return _answer(embedding.answer(await self.servicer.Embed(embedding.request, _Context())))

    async def classify(self, request):
        classification = hm.Classification(await self._body(request))
        return _answer(classification.answer(await self.servicer.Classify(classification.request, _Context())))
