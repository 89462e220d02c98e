"""The gate every RPC passes before its handler runs (a grpc.aio server interceptor):

1. authentication, when the server has tokens (server/auth.py): a missing or unknown token is
   UNAUTHENTICATED, on every RPC of every service but health (open for probes unless
   `--auth-health`); the caller's Grant is then set for the handler (`auth.current_grant`), which
   answers PERMISSION_DENIED for a model the token may not use;
2. the request's size against `--max-request-bytes` (RESOURCE_EXHAUSTED naming the flag);
3. decoding the request bytes: gRPC's own decoding failure is reported as an unknown error, so the
   gate takes the bytes raw and decodes them itself: malformed bytes are INVALID_ARGUMENT.

Steps 2 and 3 apply to unary requests (every zoo.v1 RPC and health); the streamed requests of
reflection are decoded by gRPC and only authenticated here.
"""

import contextlib
import inspect

import grpc

from server.auth import EVERYTHING, set_grant
from server.status import INVALID, Abort

HEALTH = "/grpc.health.v1.Health/"


class Gate(grpc.aio.ServerInterceptor):
    """`limits`: server.limits.Limits; `tokens`: server.auth.Tokens, or None for an open server."""

    def __init__(self, limits, tokens=None, auth_health=False):
        self.limits, self.tokens, self.auth_health = limits, tokens, auth_health

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:  # an unknown method: gRPC answers UNIMPLEMENTED
            return None
        method = details.method
        protected = self.tokens is not None and (self.auth_health or not method.startswith(HEALTH))
        authorization = next((value for key, value in details.invocation_metadata or () if key == "authorization"),
                             None)

        async def admit(context, raw=None, decode=None):
            """The decoded request (raw bytes given), after the caller's token and its size are checked."""
            try:
                grant = EVERYTHING
                if protected:
                    grant = self.tokens.grant_of_header(authorization)
                    if grant is None:
                        raise Abort(grpc.StatusCode.UNAUTHENTICATED,
                                    "a valid token is required: send the metadata `authorization: Bearer TOKEN`")
                set_grant(grant)
                if decode is None:
                    return None
                self.limits.check_request_size(len(raw), method)
                try:
                    return decode(raw)
                except Exception as e:  # noqa: BLE001 (protobuf's decode errors vary by implementation)
                    raise Abort(INVALID, f"{method}: the request is not a valid message ({e})") from None
            except Abort as refused:
                await context.abort(refused.code, refused.message)

        return _wrapped(handler, admit)


def _wrapped(handler, admit):
    """A copy of `handler` whose behaviour calls `admit` first; a unary request arrives as raw bytes."""
    if handler.request_streaming:
        kind = "stream_stream" if handler.response_streaming else "stream_unary"
        behaviour = getattr(handler, kind)
        make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler

        if inspect.isasyncgenfunction(behaviour):
            async def streamed(requests, context):
                await admit(context)
                async with contextlib.aclosing(behaviour(requests, context)) as inner:
                    async for response in inner:
                        yield response
        else:
            async def streamed(requests, context):
                await admit(context)
                return await behaviour(requests, context)
        return make(streamed, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    decode = handler.request_deserializer or (lambda raw: raw)
    if handler.response_streaming:
        behaviour = handler.unary_stream
        if inspect.isasyncgenfunction(behaviour):
            async def responses(raw, context):
                request = await admit(context, raw, decode)
                async with contextlib.aclosing(behaviour(request, context)) as inner:  # a cancel reaches it at once
                    async for response in inner:
                        yield response
        else:  # writes with context.write (health's Watch)
            async def responses(raw, context):
                return await behaviour(await admit(context, raw, decode), context)
        return grpc.unary_stream_rpc_method_handler(responses, response_serializer=handler.response_serializer)

    behaviour = handler.unary_unary

    async def unary(raw, context):
        return await behaviour(await admit(context, raw, decode), context)

    return grpc.unary_unary_rpc_method_handler(unary, response_serializer=handler.response_serializer)
