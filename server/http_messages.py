"""JSON <-> proto for the OpenAI-compatible HTTP API (server/http_api.py), and its errors.

A request body becomes the gRPC request message the servicer takes, so that every check of a
value (sampling settings, caps, prompt length, model permission) is the gRPC one; here are only
the checks JSON needs before it can become a message: the body is an object, each field has a
type the message can hold, no field is unknown (a misspelt or unsupported parameter is refused,
never silently ignored), and OpenAI parameters zoo does not implement are accepted only at their
neutral values. A status from the servicer (a gRPC code and a message naming the proto field)
becomes an HTTP status and an OpenAI-style error body naming the HTTP parameter (`error_of`).
"""

import base64
import re
import struct

import grpc

from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import model_pb2 as mpb

INT32, INT64, UINT64 = (-(1 << 31), (1 << 31) - 1), (-(1 << 63), (1 << 63) - 1), (0, (1 << 64) - 1)
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions (zoo's gRPC default is "to the end of the context")
FINISH_REASONS = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_STOP_SEQUENCE: "stop",
                  pb.FINISH_REASON_END_TOKEN: "stop"}


class HttpError(Exception):
    """A request refused with an HTTP status and an OpenAI-style error body."""

    def __init__(self, status, kind, message, param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.kind, self.message, self.param, self.code = status, kind, message, param, code
        self.headers = headers or {}

    def body(self):
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def invalid(param, problem):
    """400 for a field JSON cannot turn into the message (or a parameter zoo does not implement)."""
    return HttpError(400, "invalid_request_error", f"{param}: {problem}", param, "invalid_argument")


# --- gRPC status -> HTTP ---------------------------------------------------------------------------------

STATUSES = {  # gRPC code -> (HTTP status, OpenAI error type)
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),  # a model that does not do the task
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),  # the decode queue is full: retry later
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),  # draining
}
# Proto field names at the start of a servicer's message -> the HTTP parameter, longest first so
# that `token_ids.ids` is not read as `token_ids`. A field not listed keeps its name (top_k, ...).
FIELDS = [("sampling.max_new_tokens", "max_tokens"), ("sampling.stop_sequences", "stop"),
          ("sampling.temperature", "temperature"), ("sampling.top_p", "top_p"), ("sampling.top_k", "top_k"),
          ("sampling.seed", "seed"), ("sampling.truncate_prompt", "truncate_prompt"),
          ("model_spec.name", "model"), ("model_spec.version", "model"), ("token_ids.ids", "prompt"),
          ("token_ids", "prompt"), ("text_pairs", "text_pairs"), ("texts", "input"), ("text", "prompt"),
          ("prompt", "prompt")]
_FIELD = re.compile("^(" + "|".join(re.escape(f) for f, _ in FIELDS) + r")(?![\w.])")
_HTTP_NAMES = dict(FIELDS)
PHRASES = {"prompt: set text or token_ids; the prompt must not be empty": "prompt: must not be empty"}  # proto words


def error_of(code, message):
    """The HttpError of a gRPC status (from the servicer, or the token check)."""
    status, kind = STATUSES.get(code, (500, "server_error"))
    param, message = None, PHRASES.get(message, message)
    if match := _FIELD.match(message):
        param = _HTTP_NAMES[match.group(1)]
        message = param + message[match.end():]
    elif code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION):
        param = "model"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return HttpError(status, kind, message, param, code.name.lower(), headers)


# --- JSON fields -------------------------------------------------------------------------------------------


def _check_fields(body, allowed):
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_request_error", f"the body must be a JSON object, got {_type(body)}",
                        code="invalid_argument")
    for name in body:
        if name not in allowed:
            raise invalid(name, f"unknown parameter (this endpoint takes {', '.join(sorted(allowed))})")


def _type(value):
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _integer(body, name, bounds, default=None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"must be an integer, got {_type(value)}")
    if not bounds[0] <= value <= bounds[1]:
        raise invalid(name, f"{value} is out of range [{bounds[0]}, {bounds[1]}]")
    return value


def _number(body, name):
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(name, f"must be a number, got {_type(value)}")
    return value


def _boolean(body, name):
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(name, f"must be true or false, got {_type(value)}")
    return bool(value)


def _strings(body, name, what="a string or an array of strings"):
    """A list of strings from a string or an array of strings (None when absent)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise invalid(name, f"must be {what}, got {_type(value)}")


def model_spec(body):
    """The ModelSpec of `model`: "NAME" (the highest version) or "NAME:VERSION"."""
    model = body.get("model")
    if model is None:
        raise invalid("model", "required (NAME or NAME:VERSION)")
    if not isinstance(model, str):
        raise invalid("model", f"must be a string (NAME or NAME:VERSION), got {_type(model)}")
    return spec_of(model)


def spec_of(model):
    name, colon, version = model.rpartition(":")
    if colon and name and version.isascii() and version.isdigit():
        if int(version) > INT64[1]:
            raise invalid("model", f"version {version} is out of range")
        return mpb.ModelSpec(name=name, version=int(version))
    return mpb.ModelSpec(name=model)


def model_id(spec):
    return f"{spec.name}:{spec.version}"


# --- /v1/completions ----------------------------------------------------------------------------------------

# OpenAI parameters zoo does not implement: accepted at their neutral value (or null), else refused.
NEUTRAL = {"echo": (False, "the prompt is not echoed"), "best_of": (1, "one completion is generated"),
           "presence_penalty": (0, "no penalties are applied"), "frequency_penalty": (0, "no penalties are applied"),
           "logit_bias": ({}, "logits are not biased"), "suffix": (None, "no suffix (insertion) is supported")}
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "n", "logprobs",
                     "stream", "stream_options", "user", "top_k", "truncate_prompt", *NEUTRAL}


def _neutral(body, name):
    value = body.get(name)
    neutral, why = NEUTRAL[name]
    same_type = type(value) is type(neutral) or (type(neutral) is int and type(value) is float)  # not True for 1
    if value is None or (same_type and value == neutral):
        return
    shown = {False: "false", None: "null"}.get(neutral, neutral) if not isinstance(neutral, dict) else "{}"
    raise invalid(name, f"only {shown} is supported ({why})")


def _prompt(request, body):
    value = body.get("prompt")
    if value is None:
        return  # the servicer refuses an empty prompt
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]  # a batch of one prompt
    if isinstance(value, str):
        request.text = value
        return
    if isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        if any(not INT64[0] <= t <= INT64[1] for t in value):
            raise invalid("prompt", "a token id is out of range")
        request.token_ids.ids.extend(value)
        return
    if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise invalid("prompt", f"{len(value)} prompts given; this server completes one prompt per request")
    raise invalid("prompt", f"must be a string, an array of token ids, or a one-element array of either; "
                            f"got {_type(value)}")


class Completion:
    """A /v1/completions body as a GenerateRequest (`request`), with what the answer's shape needs."""

    def __init__(self, body):
        _check_fields(body, COMPLETION_FIELDS)
        for name in NEUTRAL:
            _neutral(body, name)
        if _integer(body, "n", INT64, 1) != 1:
            raise invalid("n", "only 1 is supported (one completion per request)")
        logprobs = _integer(body, "logprobs", INT64)
        if logprobs is not None and logprobs != 0:
            raise invalid("logprobs", "only 0 (or null) is supported: the chosen tokens' logprobs are returned; "
                                      "top alternatives are not computed")
        self.logprobs = logprobs == 0
        self.stream = _boolean(body, "stream")
        options = body.get("stream_options")
        if options is not None and not self.stream:
            raise invalid("stream_options", "only allowed when stream is true")
        if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
            raise invalid("stream_options", 'must be an object with only "include_usage"')
        self.include_usage = _boolean(options or {}, "include_usage")
        sampling = pb.SamplingParams(max_new_tokens=_integer(body, "max_tokens", INT32, DEFAULT_MAX_TOKENS),
                                     top_k=_integer(body, "top_k", INT32, 0),
                                     stop_sequences=_strings(body, "stop") or [],
                                     truncate_prompt=_boolean(body, "truncate_prompt"))
        for field, value in (("temperature", _number(body, "temperature")), ("top_p", _number(body, "top_p")),
                             ("seed", _integer(body, "seed", UINT64))):
            if value is not None:
                setattr(sampling, field, value)
        self.request = pb.GenerateRequest(model_spec=model_spec(body), sampling=sampling,
                                          return_logprobs=self.logprobs)
        _prompt(self.request, body)


def legacy_logprobs(tokens, logprobs, offset=0):
    """OpenAI's legacy logprobs object: `tokens` (their texts), their logprobs, and each token's
    character offset in the generated text, from `offset` (top alternatives are not computed)."""
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": list(tokens), "token_logprobs": list(logprobs), "top_logprobs": [None] * len(tokens),
            "text_offset": offsets}


def usage(response):
    prompt, generated = response.usage.prompt_tokens, response.usage.generated_tokens
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def completion_json(head, response, tokens=None):
    """The /v1/completions answer of a GenerateResponse; `head`: id, object, created; `tokens`:
    the generated tokens' texts when logprobs were asked for."""
    logprobs = legacy_logprobs(tokens, [p.logprob for p in response.logprobs]) if tokens is not None else None
    return {**head, "model": model_id(response.model_spec),
            "choices": [{"text": response.text, "index": 0, "logprobs": logprobs,
                         "finish_reason": FINISH_REASONS.get(response.finish_reason, "stop")}],
            "usage": usage(response)}


def chunk_json(head, model, text, logprobs=None, finish_reason=None):
    """One event of a streamed completion."""
    return {**head, "model": model,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish_reason}]}


# --- /v1/embeddings and /v1/classify -------------------------------------------------------------------------


def _texts(body):
    value = body.get("input")
    if isinstance(value, list) and value and all(isinstance(v, int | list) and not isinstance(v, bool)
                                                 for v in value):
        raise invalid("input", "token arrays are not accepted; send text (the model's own tokenizer reads it)")
    texts = _strings(body, "input")
    if texts is None:
        raise invalid("input", "required")
    return texts


class Embedding:
    """A /v1/embeddings body as an EmbedRequest (`request`), with the answer's encoding."""

    FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}

    def __init__(self, body):
        _check_fields(body, self.FIELDS)
        self.encoding = body.get("encoding_format") or "float"
        if self.encoding not in ("float", "base64"):
            raise invalid("encoding_format", f'must be "float" or "base64", got {self.encoding!r}')
        self.dimensions = _integer(body, "dimensions", INT64)
        self.request = pb.EmbedRequest(model_spec=model_spec(body), texts=_texts(body))

    def answer(self, response):
        """The /v1/embeddings answer of an EmbedResponse. There is no usage: the runtime does not
        count tokens, and counting them here would tokenize every text again on the event loop."""
        data = []
        for i, embedding in enumerate(response.embeddings):
            values = list(embedding.values)
            if self.dimensions is not None and self.dimensions != len(values):
                raise invalid("dimensions", f"{self.dimensions} asked; the embeddings of "
                                            f"{model_id(response.model_spec)} have {len(values)} (they are not cut)")
            if self.encoding == "base64":  # little-endian float32, as OpenAI sends them
                values = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": values})
        return {"object": "list", "data": data, "model": model_id(response.model_spec)}


class Classification:
    """A /v1/classify body (zoo's own: model, input, text_pairs) as a ClassifyRequest."""

    FIELDS = {"model", "input", "text_pairs"}

    def __init__(self, body):
        _check_fields(body, self.FIELDS)
        self.request = pb.ClassifyRequest(model_spec=model_spec(body), texts=_texts(body),
                                          text_pairs=_strings(body, "text_pairs") or [])

    @staticmethod
    def answer(response):
        return {"object": "list", "model": model_id(response.model_spec), "data": [
            {"index": i, "label": r.label, "probability": r.probability, "truncated": r.truncated,
             "classes": [{"label": c.label, "probability": c.probability} for c in r.classes]}
            for i, r in enumerate(response.results)]}


# --- /v1/models ---------------------------------------------------------------------------------------------


def model_json(info, created, model=None):
    """An OpenAI model object for a ModelInfo, with zoo's own fields; `model`: the id asked for
    (default: the name). `created`: bundles record no time, so it is when the server started."""
    return {"id": model or info.model_spec.name, "object": "model", "created": created, "owned_by": "zoo",
            "versions": list(info.versions),
            "task": mpb.Task.Name(info.task).removeprefix("TASK_").lower(),
            "kind": mpb.ModelKind.Name(info.kind).removeprefix("MODEL_KIND_").lower(),
            "context_length": info.context_length, "max_new_tokens": info.max_new_tokens}
