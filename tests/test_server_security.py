"""Production serving, end to end on real `zoo serve` processes: TLS and mutual TLS with
certificates made in the test, bearer tokens (missing, unknown, limited to some models, re-read on
SIGHUP, never logged), protected health, reflection and metrics, and every request cap refused
with its flag named. Transport and access do not depend on the backend: these run once."""

import json
import shutil
import signal
import ssl
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from certificates import Authority
from conftest import run_zoo
from server.client import ZooClient, channel
from server.gen.zoo.v1 import inference_pb2 as pb
from server_process import ServerProcess

pytestmark = pytest.mark.backend_independent

FULL = "full-access-token-0123456789abcdef"
LIMITED = "tiny-only-token-0123456789abcdef"
NEW = "added-on-sighup-0123456789abcdef"
CAPS = ["--max-texts", "4", "--max-text-bytes", "2000", "--max-stop-sequences", "2", "--max-stop-bytes", "8",
        "--max-request-bytes", "4096"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    authority = Authority(directory)
    server_cert, server_key = authority.issue("server", "127.0.0.1", server=True)
    client_cert, client_key = authority.issue("client", "a client")
    stranger = Authority(directory, "another CA")
    stranger_cert, stranger_key = stranger.issue("stranger", "a stranger")
    return dict(ca=authority.ca, server=(server_cert, server_key), client=(client_cert, client_key),
                stranger=(stranger_cert, stranger_key), directory=directory)


@pytest.fixture(scope="module")
def repository(tiny_run, tiny_classifier, tmp_path_factory):
    """tiny (a GPT), other (the same GPT under another name) and classifier, version 1 each."""
    repo = tmp_path_factory.mktemp("secure-repo")
    for name, bundle in (("tiny", tiny_run[1]), ("other", tiny_run[1]), ("classifier", tiny_classifier[1])):
        shutil.copytree(bundle, repo / name / "1")
    return repo


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text(f"# every model\n{FULL}\n\n{LIMITED}  tiny\n")
    return path


@pytest.fixture(scope="module")
def tls_server(repository, pki, tokens_file, backend):
    """TLS, tokens, small caps."""
    cert, key = pki["server"]
    process = ServerProcess(repository, "--tls-cert", cert, "--tls-key", key, "--auth-tokens", tokens_file,
                            "--no-warmup", "--poll-seconds", "0", "--http-port", "0", *CAPS, backend=backend)
    process.ca = pki["ca"]
    yield process
    process.stop()


def connect(server, token=FULL):
    return ZooClient(server.address, timeout=60, token=token, tls_ca=server.ca)


def status_of(call):
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.GenerateResponse):
            list(result)
    return info.value.code(), info.value.details()


EVERY_RPC = {  # a valid request to each zoo.v1 RPC
    "Generate": lambda c: c.generate("tiny", "ROMEO.", max_new_tokens=2, temperature=0),
    "GenerateStream": lambda c: c.stream("tiny", "ROMEO.", max_new_tokens=2, temperature=0),
    "Classify": lambda c: c.classify("classifier", ["bonjour"]),
    "Embed": lambda c: c.embed("classifier", ["bonjour"]),
    "ListModels": lambda c: c.list_models(),
    "GetModelInfo": lambda c: c.model_info("tiny"),
}


def test_tls_carries_every_rpc_and_plain_text_cannot_connect(tls_server):
    with connect(tls_server) as client:
        for name, call in EVERY_RPC.items():
            result = call(client)
            assert list(result) if name == "GenerateStream" else result, name
    with ZooClient(tls_server.address, timeout=10, token=FULL) as plain:
        assert status_of(plain.list_models)[0] == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("token", [None, "not-a-known-token-0123456789", FULL[:-1]])
def test_every_rpc_needs_a_known_token(tls_server, token):
    with connect(tls_server, token=token) as client:
        for name, call in EVERY_RPC.items():
            code, details = status_of(lambda: call(client))
            assert code == grpc.StatusCode.UNAUTHENTICATED, (name, details)
            assert "authorization: Bearer" in details and (token is None or token not in details)


def test_a_limited_token_sees_and_uses_only_its_models(tls_server):
    with connect(tls_server, token=LIMITED) as client:
        assert [m.model_spec.name for m in client.list_models()] == ["tiny"]
        assert client.generate("tiny", "ROMEO.", max_new_tokens=2, temperature=0).usage.generated_tokens == 2
        # A model that exists and one that does not get the same answer: nothing tells them apart.
        answers = [status_of(lambda: client.model_info(name)) for name in ("other", "nonexistent")]
        for (code, details), name in zip(answers, ("other", "nonexistent")):
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert details == f"model_spec.name: this token may not use model {name!r}"
        assert status_of(lambda: client.classify("classifier", ["x"]))[0] == grpc.StatusCode.PERMISSION_DENIED
        # A version it may not know of is named without listing other models.
        code, details = status_of(lambda: client.model_info("tiny", version=9))
        assert code == grpc.StatusCode.NOT_FOUND and "other" not in details and "classifier" not in details
    with connect(tls_server) as client:
        assert sorted(m.model_spec.name for m in client.list_models()) == ["classifier", "other", "tiny"]


def test_health_stays_open_and_reflection_needs_a_token(tls_server):
    with channel(tls_server.address, tls_ca=tls_server.ca) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "tiny"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == \
                health_pb2.HealthCheckResponse.SERVING
        anonymous = ProtoReflectionDescriptorDatabase(ch)
        with pytest.raises(grpc.RpcError) as info:
            anonymous.get_services()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    intercepted = grpc.intercept_channel(channel(tls_server.address, tls_ca=tls_server.ca), _Bearer(FULL))
    assert "zoo.v1.InferenceService" in ProtoReflectionDescriptorDatabase(intercepted).get_services()


class _Bearer(grpc.StreamStreamClientInterceptor):
    """Adds the token to reflection's streaming calls (its client takes no metadata)."""

    def __init__(self, token):
        self.token = token

    def intercept_stream_stream(self, continuation, details, requests):
        details = details._replace(metadata=[("authorization", f"Bearer {self.token}")])
        return continuation(details, requests)


def test_metrics_are_served_over_tls_to_unrestricted_tokens_only(tls_server):
    context = ssl.create_default_context(cafile=str(tls_server.ca))
    for token, status in ((None, 401), (LIMITED, 403), ("not-a-known-token-0123456789", 401)):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(urllib.error.HTTPError) as info:
            tls_server.metrics_text(headers, context)
        assert info.value.code == status
    with connect(tls_server) as client:
        client.list_models()
    page = tls_server.metrics_text({"Authorization": f"Bearer {FULL}"}, context)
    assert 'zoo_requests_total{code="OK",method="ListModels"}' in page


def test_the_http_api_is_served_over_the_same_tls_with_the_same_tokens(tls_server):
    url = f"https://127.0.0.1:{tls_server.http_port}/v1/models"
    context = ssl.create_default_context(cafile=str(tls_server.ca))

    def models(token, context=context, scheme_url=url):
        request = urllib.request.Request(scheme_url, headers={"Authorization": f"Bearer {token}"})
        return json.loads(urllib.request.urlopen(request, timeout=30, context=context).read())

    assert sorted(m["id"] for m in models(FULL)["data"]) == ["classifier", "other", "tiny"]
    assert [m["id"] for m in models(LIMITED)["data"]] == ["tiny"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        models("not-a-known-token-0123456789")
    assert refused.value.code == 401
    with pytest.raises(urllib.error.URLError):  # a certificate the client does not trust
        models(FULL, context=ssl.create_default_context())
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port
        models(FULL, context=None, scheme_url=url.replace("https://", "http://"))


@pytest.mark.parametrize("call, words", [
    (lambda c: c.classify("classifier", ["a"] * 5), ["texts: 5 given", "--max-texts"]),
    (lambda c: c.classify("classifier", ["a", "é" * 1001]), ["texts[1]: 2002 bytes", "--max-text-bytes"]),
    (lambda c: c.classify("classifier", ["a"], pairs=["b" * 2001]), ["text_pairs[0]", "--max-text-bytes"]),
    (lambda c: c.embed("classifier", ["a"] * 5), ["--max-texts"]),
    (lambda c: c.generate("tiny", "x" * 2001), ["text: 2001 bytes", "--max-text-bytes"]),
    (lambda c: c.generate("tiny", "x", stop=["a", "b", "c"]), ["sampling.stop_sequences: 3 given", "--max-stop-sequences"]),
    (lambda c: c.generate("tiny", "x", stop=["a", "123456789"]), ["stop_sequences[1]: 9 bytes", "--max-stop-bytes"]),
])
def test_each_cap_refuses_with_its_flag_named(tls_server, call, words):
    with connect(tls_server) as client:
        code, details = status_of(lambda: call(client))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert all(word in details for word in words), details


def test_oversized_and_malformed_requests(tls_server):
    with connect(tls_server) as client:
        code, details = status_of(lambda: client.classify("classifier", ["x" * 1500] * 3))  # ~4.5 KB
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-request-bytes" in details, details
        code, _ = status_of(lambda: client.classify("classifier", ["x" * 1500] * 8))  # beyond twice: gRPC's own
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        raw = client.channel.unary_unary("/zoo.v1.InferenceService/Generate")  # bytes in, bytes out
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x12\x80\x80\x80\x80\x10"):
            code, details = status_of(lambda: raw(garbage, timeout=10, metadata=client.metadata))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details, details
        assert client.list_models()  # still serving


def test_zoo_client_over_tls_with_a_token_from_the_environment(tls_server):
    args = ("client", "generate", "tiny", "--prompt", "ROMEO.", "--max-new-tokens", "3", "--temperature", "0",
            "--server", tls_server.address, "--tls-ca", tls_server.ca)
    result = run_zoo(*args, env={"ZOO_TOKEN": FULL}, timeout=120)
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    refused = run_zoo(*args)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "Error: UNAUTHENTICATED: a valid token is required: send the metadata `authorization: Bearer TOKEN` "
        "(give --token, or set $ZOO_TOKEN)"]


def test_sighup_rereads_the_token_file_and_a_broken_one_keeps_the_old_tokens(tls_server, tokens_file):
    original = tokens_file.read_text()
    try:
        tokens_file.write_text(f"{FULL}\n{NEW} tiny other\n")
        tls_server.process.send_signal(signal.SIGHUP)
        wait_for_log(tls_server, "2 tokens")
        with connect(tls_server, token=NEW) as client:
            assert sorted(m.model_spec.name for m in client.list_models()) == ["other", "tiny"]
        with connect(tls_server, token=LIMITED) as client:
            assert status_of(client.list_models)[0] == grpc.StatusCode.UNAUTHENTICATED
        tokens_file.write_text(f"{FULL}\nshort\n")
        tls_server.process.send_signal(signal.SIGHUP)
        wait_for_log(tls_server, "the tokens already loaded stay in force")
        assert "line 2: a token must be at least 16" in tls_server.log
        with connect(tls_server, token=NEW) as client:
            assert client.list_models()
    finally:
        tokens_file.write_text(original)
    for token in (FULL, LIMITED, NEW):
        assert token not in tls_server.log


def wait_for_log(server, text, timeout=60):
    deadline = time.monotonic() + timeout
    while text not in server.log:
        assert time.monotonic() < deadline, f"{text!r} not in the log:\n{server.log[-3000:]}"
        time.sleep(0.1)


# --- mutual TLS, with health behind the token ----------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(repository, pki, tokens_file, backend):
    cert, key = pki["server"]
    process = ServerProcess(repository, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", pki["ca"],
                            "--auth-tokens", tokens_file, "--auth-health", "--no-warmup", "--poll-seconds", "0",
                            backend=backend)
    yield process
    process.stop()


def test_mutual_tls_requires_a_client_certificate_of_its_ca(mtls_server, pki):
    ca = dict(tls_ca=pki["ca"])
    for tls in (ca, dict(ca, tls_cert=pki["stranger"][0], tls_key=pki["stranger"][1])):
        with ZooClient(mtls_server.address, timeout=10, token=FULL, **tls) as client:
            assert status_of(client.list_models)[0] == grpc.StatusCode.UNAVAILABLE
    with ZooClient(mtls_server.address, timeout=60, token=FULL, tls_ca=pki["ca"], tls_cert=pki["client"][0],
                   tls_key=pki["client"][1]) as client:
        assert client.generate("tiny", "ROMEO.", max_new_tokens=2, temperature=0).usage.generated_tokens == 2


def test_auth_health_puts_health_behind_the_token(mtls_server, pki):
    with channel(mtls_server.address, tls_ca=pki["ca"], tls_cert=pki["client"][0], tls_key=pki["client"][1]) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        request = health_pb2.HealthCheckRequest(service="tiny")
        code, _ = status_of(lambda: health.Check(request, timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        answer = health.Check(request, timeout=10, metadata=[("authorization", f"Bearer {FULL}")])
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


# --- settings refused before serving -----------------------------------------------------------------------


def test_settings_are_checked_before_serving(tmp_path, pki, tokens_file, tiny_run):
    bundle = tiny_run[1]
    cert, key = pki["server"]
    short = tmp_path / "short.txt"
    short.write_text(f"{FULL}\n\nabc tiny\n")
    cases = [
        (["--tls-cert", cert], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", pki["ca"]], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--auth-health"], "--auth-health needs --auth-tokens"),
        (["--tls-cert", cert, "--tls-key", pki["client"][1]], f"--tls-cert {cert} / --tls-key {pki['client'][1]}"),
        (["--tls-cert", cert, "--tls-key", key, "--tls-client-ca", tokens_file], f"--tls-client-ca {tokens_file}"),
        (["--auth-tokens", short], f"--auth-tokens {short}, line 3: a token must be at least 16"),
        (["--auth-tokens", tmp_path / "missing.txt"], "cannot read it"),
        (["--version-policy", "newest"], "--version-policy 'newest': expected all, latest:N or specific:V"),
    ]
    for flags, words in cases:
        result = run_zoo("serve", bundle, "--port", "0", *flags)
        assert result.returncode != 0, flags
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and words in last, (flags, result.stderr[-2000:])


def test_plain_text_beyond_loopback_prints_one_warning(tmp_path, pki):
    missing = tmp_path / "missing"
    warned = run_zoo("serve", missing, "--host", "0.0.0.0", "--port", "0")
    lines = warned.stderr.strip().splitlines()
    assert [line for line in lines if "WARNING" in line] == [lines[0]] and "plain-text gRPC on 0.0.0.0" in lines[0]
    assert lines[-1] == f"Error: {missing}: no such bundle or model repository"
    cert, key = pki["server"]
    for flags in (["--host", "0.0.0.0", "--tls-cert", cert, "--tls-key", key], ["--host", "127.0.0.1"]):
        quiet = run_zoo("serve", missing, "--port", "0", *flags)
        assert "WARNING" not in quiet.stderr and quiet.returncode == 1


def test_connection_flags_reach_grpc_as_its_keepalive_guide_names_them():
    from cli.serve import serve
    from server.limits import Limits

    limits = Limits(max_request_bytes=8192, max_streams_per_connection=7, keepalive_seconds=30,
                    keepalive_timeout_seconds=5, min_ping_interval_seconds=15)
    options = dict(limits.grpc_options())
    assert options["grpc.max_receive_message_length"] == 16384 and options["grpc.max_concurrent_streams"] == 7
    assert options["grpc.keepalive_time_ms"] == 30_000 and options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 15_000
    assert options["grpc.http2.max_ping_strikes"] == 2
    # Every cap is a `zoo serve` flag whose default is the library's.
    flags = {p.name: p.default for p in serve.params}
    for field in ("max_request_bytes", "max_texts", "max_text_bytes", "max_stop_sequences", "max_stop_bytes",
                  "max_streams_per_connection", "keepalive_seconds", "keepalive_timeout_seconds",
                  "min_ping_interval_seconds"):
        assert flags[field] == getattr(Limits(), field), field
