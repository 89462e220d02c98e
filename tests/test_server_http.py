"""The OpenAI-compatible HTTP API (`zoo serve --http-port`), end to end on one real server shared
by the module: a GPT ("tiny", and the same bundle as "other") and a BERT classifier, tokens (one
unrestricted, one limited to "tiny"), one decode slot and no queue (so that a second generation
on a model is refused: 429), a small --max-request-bytes (413) and a decode step delay (so that
streams last long enough to be cut or drained). Through the official `openai` client and plain
HTTP, every answer is compared with the gRPC answer of the same server to the same request, and
every error status is produced by a real request. The last test drains the server (SIGTERM).
Transport and mapping do not depend on the backend: these run once."""

import asyncio
import base64
import http.client
import json
import logging
import shutil
import signal
import struct
import time
import urllib.error
import urllib.request

import grpc
import openai
import pytest

from server.client import ZooClient
from server.gen.zoo.v1 import inference_pb2 as pb
from server.limits import Limits
from server_process import ServerProcess

pytestmark = pytest.mark.backend_independent

FULL = "full-access-token-0123456789abcdef"
LIMITED = "tiny-only-token-0123456789abcdef"
MAX_REQUEST_BYTES = 4096
FINISH = {pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_STOP_SEQUENCE: "stop", pb.FINISH_REASON_END_TOKEN: "stop"}


@pytest.fixture(scope="module")
def server(tiny_run, tiny_classifier, tmp_path_factory, backend):
    repo = tmp_path_factory.mktemp("http-repo")
    for name, bundle in (("tiny", tiny_run[1]), ("other", tiny_run[1]), ("classifier", tiny_classifier[1])):
        shutil.copytree(bundle, repo / name / "1")
    tokens = repo.parent / "http-tokens.txt"
    tokens.write_text(f"{FULL}\n{LIMITED} tiny\n")
    process = ServerProcess(repo, "--http-port", "0", "--auth-tokens", tokens, "--decode-slots", "1",
                            "--max-queue", "0", "--step-delay", "0.04", "--max-request-bytes", str(MAX_REQUEST_BYTES),
                            "--no-warmup", "--poll-seconds", "0", backend=backend)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def grpc_client(server):
    with ZooClient(server.address, timeout=120, token=FULL) as client:
        yield client


def api(server, token=FULL):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=token, max_retries=0,
                         timeout=120)


def call(server, method, path, body=None, token=FULL, raw=None):
    """(HTTP status, JSON answer, headers) of a plain HTTP request to the API."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{server.http_port}{path}", data=data, method=method,
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def open_stream(server, body, token=FULL):
    """(connection, response) of a streamed /v1/completions request, its headers read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=120)
    connection.request("POST", "/v1/completions", json.dumps({**body, "stream": True}),
                       {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return connection, connection.getresponse()


def events(response):
    """The `data:` payloads of a server-sent event stream, as they arrive."""
    for line in response:
        if line.startswith(b"data: "):
            yield line[len(b"data: "):].strip().decode()


def metric(server, name, **labels):
    headers = {"Authorization": f"Bearer {FULL}"}
    for line in server.metrics_text(headers).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def wait_idle(server, model):
    """Until `model`'s decode slot is free (a cancelled generation frees it after its step)."""
    wait_until(lambda: metric(server, "zoo_decode_slots_busy", model=model) == 0, f"{model}'s slot stays busy")


# --- models -------------------------------------------------------------------------------------------------


def test_models_are_listed_and_retrieved_as_grpc_describes_them(server, grpc_client):
    infos = {m.model_spec.name: m for m in grpc_client.list_models()}
    listed = {m.id: m for m in api(server).models.list()}
    assert sorted(listed) == sorted(infos) == ["classifier", "other", "tiny"]
    for name, info in infos.items():
        model = listed[name]
        assert (model.object, model.owned_by, model.versions, model.context_length, model.max_new_tokens) == \
               ("model", "zoo", list(info.versions), info.context_length, info.max_new_tokens)
        assert isinstance(model.created, int)
    assert (listed["tiny"].task, listed["tiny"].kind) == ("generation", "gpt")
    assert (listed["classifier"].task, listed["classifier"].kind) == ("classification", "bert")
    assert api(server).models.retrieve("tiny:1").id == "tiny:1"
    assert [m.id for m in api(server, LIMITED).models.list()] == ["tiny"]
    with pytest.raises(openai.PermissionDeniedError):
        api(server, LIMITED).models.retrieve("other")
    with pytest.raises(openai.NotFoundError) as info:
        api(server).models.retrieve("nonexistent")
    assert info.value.body["param"] == "model" and "nonexistent" in info.value.body["message"]


# --- completions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("http, grpc_kwargs", [
    (dict(prompt="ROMEO.", temperature=0, max_tokens=8), dict(prompt="ROMEO.", temperature=0, max_new_tokens=8)),
    (dict(prompt="KING.", temperature=0.9, top_p=0.9, seed=7, max_tokens=12, extra_body={"top_k": 20}),
     dict(prompt="KING.", temperature=0.9, top_p=0.9, top_k=20, seed=7, max_new_tokens=12)),
    (dict(prompt="KING.", temperature=1.0, seed=3, max_tokens=20, stop=["e", "a"]),
     dict(prompt="KING.", temperature=1.0, seed=3, max_new_tokens=20, stop=["e", "a"])),
    (dict(prompt=[5, 17, 9], temperature=0, max_tokens=6), dict(token_ids=[5, 17, 9], temperature=0, max_new_tokens=6)),
    (dict(prompt=["ROMEO."], temperature=0, max_tokens=5), dict(prompt="ROMEO.", temperature=0, max_new_tokens=5)),
    (dict(prompt="ROMEO.", temperature=0), dict(prompt="ROMEO.", temperature=0, max_new_tokens=16)),  # OpenAI's 16
])
def test_a_completion_is_the_grpc_generation(server, grpc_client, http, grpc_kwargs):
    expected = grpc_client.generate("tiny", **grpc_kwargs)
    before = metric(server, "zoo_requests_total", method="Generate", code="OK")
    completion = api(server).completions.create(model="tiny", **http)
    assert metric(server, "zoo_requests_total", method="Generate", code="OK") == before + 1  # the same servicer
    choice, = completion.choices
    assert choice.text == expected.text and choice.finish_reason == FINISH[expected.finish_reason]
    assert completion.model == f"tiny:{expected.model_spec.version}" and completion.object == "text_completion"
    assert completion.id.startswith("cmpl-") and choice.logprobs is None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == \
           (expected.usage.prompt_tokens, expected.usage.generated_tokens,
            expected.usage.prompt_tokens + expected.usage.generated_tokens)


def test_logprobs_0_gives_the_chosen_tokens_logprobs(server, grpc_client):
    expected = grpc_client.generate("tiny", "ROMEO.", temperature=0, max_new_tokens=10, return_logprobs=True)
    choice, = api(server).completions.create(model="tiny", prompt="ROMEO.", temperature=0, max_tokens=10,
                                             logprobs=0).choices
    logprobs = choice.logprobs
    assert logprobs.token_logprobs == pytest.approx([p.logprob for p in expected.logprobs], abs=1e-9)
    assert "".join(logprobs.tokens) == choice.text == expected.text
    assert logprobs.text_offset == [sum(map(len, logprobs.tokens[:i])) for i in range(len(logprobs.tokens))]
    assert logprobs.top_logprobs == [None] * len(expected.token_ids)
    status, answer, _ = call(server, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": 2})
    assert status == 400 and answer["error"]["param"] == "logprobs"
    assert "top alternatives are not computed" in answer["error"]["message"]


def test_a_streamed_completion_adds_up_to_the_unary_one(server, grpc_client):
    expected = grpc_client.generate("tiny", "ROMEO.", temperature=0, max_new_tokens=12)
    chunks = list(api(server).completions.create(model="tiny", prompt="ROMEO.", temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    *texts, last, usage = chunks
    assert "".join(c.choices[0].text for c in texts) == expected.text
    assert all(c.choices[0].finish_reason is None for c in texts) and len(texts) >= 1
    assert last.choices[0].finish_reason == FINISH[expected.finish_reason] and last.choices[0].text == ""
    assert usage.choices == [] and usage.usage.completion_tokens == expected.usage.generated_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"tiny:1"}
    # On the wire: server-sent events ending in [DONE]; logprobs per chunk; no usage event unless asked.
    connection, response = open_stream(server, {"model": "tiny", "prompt": "ROMEO.", "temperature": 0,
                                                "max_tokens": 12, "logprobs": 0})
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    payloads = list(events(response))
    connection.close()
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["choices"] for c in chunks) and chunks[-1]["choices"][0]["finish_reason"] == "length"
    tokens = [t for c in chunks[:-1] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert len(tokens) == expected.usage.generated_tokens and "".join(tokens) == expected.text
    # A refusal comes before the headers: an HTTP status, not a 200 stream.
    connection, response = open_stream(server, {"model": "tiny", "prompt": "ROMEO.", "top_p": 2})
    assert response.status == 400 and json.loads(response.read())["error"]["param"] == "top_p"
    connection.close()


# --- embeddings and classification -----------------------------------------------------------------------------


def test_embeddings_are_the_grpc_embeddings(server, grpc_client):
    texts = ["bonjour tout le monde", "good morning"]
    expected = [list(e.values) for e in grpc_client.embed("classifier", texts).embeddings]
    answer = api(server).embeddings.create(model="classifier", input=texts)  # the client asks for base64
    assert [d.embedding for d in answer.data] == [pytest.approx(v, abs=1e-6) for v in expected]
    assert answer.model == "classifier:1" and [d.index for d in answer.data] == [0, 1]
    status, plain, _ = call(server, "POST", "/v1/embeddings", {"model": "classifier", "input": texts[1],
                                                               "encoding_format": "float"})
    assert status == 200 and plain["data"][0]["embedding"] == pytest.approx(
        list(grpc_client.embed("classifier", texts[1:]).embeddings[0].values), abs=1e-6)
    assert "usage" not in plain  # no token counts rather than made-up ones
    status, raw, _ = call(server, "POST", "/v1/embeddings", {"model": "classifier", "input": texts[1],
                                                             "encoding_format": "base64"})
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(plain["data"][0]["embedding"],
                                                                                   abs=1e-6)
    width = len(expected[0])
    assert call(server, "POST", "/v1/embeddings", {"model": "classifier", "input": "a", "dimensions": width})[0] == 200
    for body, param in (({"dimensions": width - 1}, "dimensions"), ({"input": [[5, 6]]}, "input"),
                        ({"encoding_format": "int8"}, "encoding_format")):
        status, answer, _ = call(server, "POST", "/v1/embeddings", {"model": "classifier", "input": "a", **body})
        assert status == 400 and answer["error"]["param"] == param, answer


def test_classify_is_the_grpc_classification(server, grpc_client):
    texts = ["bonjour tout le monde", "good morning to you", "guten Morgen"]
    expected = grpc_client.classify("classifier", texts).results
    status, answer, _ = call(server, "POST", "/v1/classify", {"model": "classifier", "input": texts})
    assert status == 200 and answer["object"] == "list" and answer["model"] == "classifier:1"
    for i, (got, want) in enumerate(zip(answer["data"], expected, strict=True)):
        assert (got["index"], got["label"], got["truncated"]) == (i, want.label, want.truncated)
        assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
        assert [(c["label"], pytest.approx(c["probability"], abs=1e-6)) for c in got["classes"]] == \
               [(c.label, c.probability) for c in want.classes]
    status, answer, _ = call(server, "POST", "/v1/classify", {"model": "classifier", "input": ["a", "b"],
                                                              "text_pairs": ["c"]})
    assert status == 400 and answer["error"]["param"] == "text_pairs", answer


# --- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, param", [
    ({"top_p": 2}, "top_p"),
    ({"n": 2}, "n"),
    ({"frobnicate": 1}, "frobnicate"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"max_tokens": 1000}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stop": [""]}, "stop"),
    ({"stop": ["a", "b", "c", "d"] * 5}, "stop"),
    ({"seed": -1}, "seed"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [5, 999999]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"echo": True}, "echo"),
    ({"best_of": 2}, "best_of"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"suffix": "end"}, "suffix"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": None}, "model"),
    ({"model": "classifier"}, "model"),  # FAILED_PRECONDITION: not a generation model
])
def test_a_bad_field_is_400_naming_the_http_parameter(server, body, param):
    request = {"model": "tiny", "prompt": "ROMEO.", "temperature": 0, "max_tokens": 2, **body}
    status, answer, _ = call(server, "POST", "/v1/completions", {k: v for k, v in request.items() if v is not None})
    error = answer["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param, answer
    assert error["message"].startswith(param) or param == "model", error  # the gRPC field names are not shown
    assert not any(word in error["message"] for word in ("sampling.", "max_new_tokens", "stop_sequences",
                                                         "model_spec", "token_ids")), error


@pytest.mark.parametrize("raw, words", [(b"[1, 2]", "a JSON object"), (b"{not json", "not JSON")])
def test_a_body_that_is_no_json_object_is_400(server, raw, words):
    status, answer, _ = call(server, "POST", "/v1/completions", raw=raw)
    assert status == 400 and words in answer["error"]["message"]


def test_every_route_needs_a_known_token(server):
    routes = [("GET", "/v1/models", None), ("GET", "/v1/models/tiny", None),
              ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}),
              ("POST", "/v1/embeddings", {"model": "classifier", "input": "x"}),
              ("POST", "/v1/classify", {"model": "classifier", "input": "x"}), ("GET", "/v1/nothing", None)]
    for token in (None, "not-a-known-token-0123456789", FULL[:-1]):
        for method, path, body in routes:
            status, answer, headers = call(server, method, path, body, token=token)
            assert status == 401 and answer["error"]["type"] == "authentication_error", (method, path, answer)
            assert headers["WWW-Authenticate"] == "Bearer" and (token is None or token not in json.dumps(answer))
    with pytest.raises(openai.AuthenticationError):
        api(server, "not-a-known-token-0123456789").models.list()


def test_a_limited_token_is_403_on_other_models_and_unknown_things_are_404_or_405(server):
    for path, body in (("/v1/completions", {"model": "other", "prompt": "x", "max_tokens": 1}),
                       ("/v1/embeddings", {"model": "classifier", "input": "x"})):
        status, answer, _ = call(server, "POST", path, body, token=LIMITED)
        assert status == 403 and answer["error"]["type"] == "permission_error" and answer["error"]["param"] == "model"
    with pytest.raises(openai.PermissionDeniedError):
        api(server, LIMITED).completions.create(model="classifier", prompt="x", max_tokens=1)
    status, answer, _ = call(server, "POST", "/v1/completions", {"model": "nonexistent", "prompt": "x"})
    assert status == 404 and answer["error"]["type"] == "not_found_error" and answer["error"]["param"] == "model"
    status, answer, _ = call(server, "POST", "/v1/completions", {"model": "tiny:9", "prompt": "x"})
    assert status == 404 and "no version 9" in answer["error"]["message"]
    status, answer, _ = call(server, "GET", "/v1/chat/completions")
    assert status == 404 and "/v1/completions" in answer["error"]["message"]
    status, answer, headers = call(server, "GET", "/v1/completions")
    assert status == 405 and headers["Allow"] == "POST" and answer["error"]["code"] == "method_not_allowed"


def test_a_body_over_max_request_bytes_is_413_naming_the_flag(server):
    status, answer, _ = call(server, "POST", "/v1/classify", {"model": "classifier", "input": ["x" * 1500] * 3})
    assert status == 413 and "--max-request-bytes" in answer["error"]["message"], answer
    assert call(server, "POST", "/v1/classify", {"model": "classifier", "input": ["x" * 1500] * 2})[0] == 200


def test_a_full_decode_queue_is_429(server):
    wait_idle(server, "other")
    holder, response = open_stream(server, {"model": "other", "prompt": "ROMEO.", "temperature": 0, "max_tokens": 24})
    try:
        assert response.status == 200 and next(events(response))  # generating: the one slot is taken
        status, answer, _ = call(server, "POST", "/v1/completions", {"model": "other", "prompt": "x"})
        assert status == 429 and answer["error"]["type"] == "rate_limit_error", answer
        assert "--max-queue 0" in answer["error"]["message"]
        connection, refused = open_stream(server, {"model": "other", "prompt": "x"})
        assert refused.status == 429  # streamed too: refused before the headers
        connection.close()
    finally:
        holder.close()


def test_a_client_that_disconnects_stops_its_generation(server):
    wait_idle(server, "other")
    steps = metric(server, "zoo_decode_steps_total", model="other")
    cancelled = metric(server, "zoo_requests_total", method="GenerateStream", code="CANCELLED")
    connection, response = open_stream(server, {"model": "other", "prompt": "ROMEO.", "temperature": 0,
                                                "max_tokens": 24})
    assert next(events(response))
    connection.close()
    wait_until(lambda: metric(server, "zoo_requests_total", method="GenerateStream", code="CANCELLED") > cancelled,
               "the generation was not cancelled")
    wait_idle(server, "other")
    assert metric(server, "zoo_decode_steps_total", model="other") - steps < 10  # not the 24 asked for


def test_an_error_after_the_headers_is_the_last_event_and_a_fault_is_a_bare_500(caplog):
    """In process, over a stand-in servicer: the real one cannot be made to fail mid-stream, or
    to fault, on demand."""
    from aiohttp import ClientSession
    from aiohttp.test_utils import TestServer

    from server.http_api import HttpApi

    class Servicer:
        async def GenerateStream(self, request, context):
            yield pb.GenerateStreamResponse(chunk=pb.GenerateChunk(text="a"))
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")

        async def Generate(self, request, context):
            raise RuntimeError("a secret detail")

    async def exchange():
        async with TestServer(HttpApi(Servicer(), Limits()).application()) as test_server, ClientSession() as session:
            url = str(test_server.make_url("/v1/completions"))
            async with session.post(url, json={"model": "m:1", "prompt": "x", "stream": True}) as response:
                streamed = (response.status, await response.text())
            async with session.post(url, json={"model": "m:1", "prompt": "x"}) as response:
                return streamed, (response.status, await response.json())

    logger = logging.getLogger("zoo.serve")  # `zoo serve` run in this process stops it propagating
    logger.addHandler(caplog.handler)
    try:
        (status, text), (fault, answer) = asyncio.run(exchange())
    finally:
        logger.removeHandler(caplog.handler)
    payloads = [line.removeprefix("data: ") for line in text.split("\n\n") if line]
    assert status == 200 and json.loads(payloads[0])["choices"][0]["text"] == "a" and len(payloads) == 2
    assert json.loads(payloads[1])["error"]["type"] == "service_unavailable_error"  # no [DONE]
    assert fault == 500 and answer["error"]["type"] == "server_error" and "secret" not in json.dumps(answer)
    assert "a secret detail" in caplog.text  # logged for the operator


def test_draining_answers_503_and_lets_streams_in_flight_finish(server):
    """Last: this stops the module's server."""
    connection, response = open_stream(server, {"model": "tiny", "prompt": "ROMEO.", "temperature": 0,
                                                "max_tokens": 24})
    stream = events(response)
    assert next(stream)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "shutting down" in server.log, "no drain began")
    status, answer, _ = call(server, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1})
    assert status == 503 and answer["error"]["code"] == "unavailable", answer
    rest = list(stream)
    connection.close()
    assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
    assert server.process.wait(30) == 0
    assert FULL not in server.log and LIMITED not in server.log
