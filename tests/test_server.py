"""The gRPC server, end to end: a real `zoo serve` process on a loopback port serving a tiny bundle
trained in this session (as a two-version repository), called through the Python client, the
`zoo client` command and raw gRPC (health, reflection)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from conftest import ROOT, run_zoo, zoo_json
from server_process import ServerProcess
from server.client import FINISH_REASONS, ZooClient
from server.gen.zoo.v1 import inference_pb2 as pb
from server.gen.zoo.v1 import model_pb2 as mpb

MODEL = "tiny"
CONTEXT = 32  # conftest's TINY_MODEL --max-length
BACKEND_ENUM = {"jax": mpb.BACKEND_JAX, "tensorflow": mpb.BACKEND_TENSORFLOW, "torch": mpb.BACKEND_TORCH}


@pytest.fixture(scope="module")
def repository(tiny_run, tmp_path_factory):
    """REPO/tiny/{1,2}: two versions of the session's tiny bundle."""
    repo = tmp_path_factory.mktemp("repo")
    for version in (1, 2):
        shutil.copytree(tiny_run[1], repo / MODEL / str(version))
    return repo


@pytest.fixture(scope="module")
def server(repository, backend):
    process = ServerProcess(repository, backend=backend)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with ZooClient(server.address, timeout=60) as zoo_client:
        yield zoo_client


@pytest.fixture(scope="module")
def slow_servers(repository, backend):
    """Returns the module's slow server: a server whose decode steps take at least 50 ms, so that
    batching, cancellation and draining can be observed; 4 decode slots and a queue of 1, so that
    slots and the queue run out; 2 torch threads. Started on first use, and again if a test stopped
    it (the SIGTERM test does), so no test depends on running before or after that one."""
    started = []

    def live():
        if not started or started[-1].process.poll() is not None:
            # No warm-up: what these tests watch (steps shared, slots, the queue, draining) does
            # not depend on it, and it would cost each backend's suite a start-up compile.
            started.append(ServerProcess(repository, "--step-delay", "0.05", "--grace-period", "30", "--decode-slots",
                                         "4", "--max-queue", "1", "--torch-threads", "2", "--no-warmup",
                                         backend=backend))
        return started[-1]

    yield live
    for process in started:
        process.stop()


@pytest.fixture
def slow_server(slow_servers):
    return slow_servers()


@pytest.fixture(scope="module")
def local(tiny_run):
    """The bundle's generator in this process, on this backend: what `zoo generate` runs."""
    from zoo.bundle import load_runtime

    return load_runtime(tiny_run[1])[0]


def local_generate(local, prompt, **settings):
    from zoo.engine import SamplingConfig

    return local.generate(prompt, SamplingConfig(**settings))


def greedy(client, prompt="ROMEO.", **kwargs):
    return client.generate(MODEL, prompt, temperature=0, max_new_tokens=kwargs.pop("max_new_tokens", 10), **kwargs)


def assert_status(call, code, *words):
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not isinstance(result, pb.GenerateResponse):
            list(result)
    assert info.value.code() == code, info.value.details()
    for word in words:
        assert word in info.value.details()
    return info.value.details()


def zoo_client_cli(server, *args):
    return run_zoo("client", *args, "--server", server.address, timeout=120)


# --- the API definition ----------------------------------------------------------------------------


@pytest.mark.backend_independent
def test_generated_stubs_are_up_to_date(tmp_path):
    from server import gen_protos

    # protoc in its own process: loaded beside torch's libraries in the test process it can crash.
    subprocess.run([sys.executable, "-m", "server.gen_protos", str(tmp_path / "gen")], cwd=ROOT, check=True,
                   capture_output=True)
    fresh = gen_protos.generated_files(tmp_path / "gen")
    committed = gen_protos.generated_files(gen_protos.GEN)
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run python -m server.gen_protos"


@pytest.mark.backend_independent
def test_every_message_and_field_is_documented():
    for proto in sorted((ROOT / "protos").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            declares = re.match(r"(message|enum|service|rpc|oneof)\s", stripped) or re.search(r"=\s*\d+;$", stripped)
            if declares:
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} has no comment: {stripped}"


# --- start-up, listing and metadata ------------------------------------------------------------------


def test_start_up_log_names_models_backend_and_address(server, slow_server, backend):
    assert f"model {MODEL}: versions 1, 2 (default 2) on backend {backend}" in server.log
    assert f"on {server.address}" in server.log
    # Warm-up compiled every version's decode functions before serving (torch's engine compiles
    # nothing); the slow server was started without it.
    for version in (1, 2):
        compiled = re.search(rf"model {MODEL} version {version}: serving .*; decode engine compiled in [\d.]+s "
                             rf"\((\d+) functions\)", server.log)
        assert compiled and (int(compiled.group(1)) > 0) == (backend != "torch"), server.log
    assert "decode engine compiled" not in slow_server.log


def test_torch_uses_all_cores_but_one_unless_told(server, slow_server, backend):
    # Counted here, not with the server's own helper: the cores this process (and so the server
    # it started) may run on, less one, and at least one.
    expected = max(1, len(os.sched_getaffinity(0)) - 1)
    on_torch = backend == "torch"
    assert (f"torch: {expected} intra-op threads" in server.log) == on_torch, server.log
    assert ("torch: 2 intra-op threads" in slow_server.log) == on_torch, slow_server.log


def test_list_models_and_model_info(client, server, tiny_run, backend):
    bundle_info = json.loads((tiny_run[1] / "zoo.json").read_text())
    [info] = client.list_models()
    assert info.model_spec.name == MODEL and info.model_spec.version == 2 and list(info.versions) == [1, 2]
    assert info.kind == mpb.MODEL_KIND_GPT and info.task == mpb.TASK_GENERATION
    assert info.context_length == CONTEXT and list(info.labels) == []
    assert info.tokenizer.kind == mpb.TOKENIZER_KIND_BPE and info.tokenizer.vocabulary_size == 300
    assert info.serving_backend == BACKEND_ENUM[backend]
    assert info.provenance.backend == BACKEND_ENUM[bundle_info["provenance"]["backend"]]
    assert info.provenance.steps == 30
    assert info.provenance.data.sha256 == bundle_info["provenance"]["data"]["sha256"]
    assert info.provenance.final_metrics["val_loss"] == pytest.approx(bundle_info["provenance"]["final_metrics"]["val_loss"])
    assert info.provenance.train_settings["max_steps"] == 30
    assert list(info.provenance.command)[:3] == ["zoo", "train", "gpt"]
    assert client.model_info(MODEL, version=1).model_spec.version == 1
    assert client.model_info(MODEL) == info
    assert_status(lambda: client.model_info("nope"), grpc.StatusCode.NOT_FOUND, "model_spec.name", "nope")
    assert_status(lambda: client.model_info(MODEL, version=3), grpc.StatusCode.NOT_FOUND, "model_spec.version")

    listed = json.loads(zoo_client_cli(server, "models", "--json").stdout)
    assert [(m["name"], m["versions"], m["task"]) for m in listed] == [(MODEL, [1, 2], "generation")]
    details = json.loads(zoo_client_cli(server, "info", MODEL, "--version", "1", "--json").stdout)
    assert details["version"] == 1 and details["tokenizer"]["kind"] == "bpe" and details["serving_backend"] == backend


# --- generation -----------------------------------------------------------------------------------------


def test_greedy_generation_equals_local_generation(client, server, tiny_run, local):
    bundle = tiny_run[1]
    expected = local_generate(local, "ROMEO.", temperature=0, max_new_tokens=12)
    response = greedy(client, max_new_tokens=12)
    assert response.text == expected.text and list(response.token_ids) == expected.token_ids
    assert FINISH_REASONS[response.finish_reason] == expected.finish_reason
    assert response.usage.prompt_tokens == expected.prompt_tokens
    assert response.usage.generated_tokens == len(expected.token_ids)
    assert (response.model_spec.name, response.model_spec.version) == (MODEL, 2)
    assert greedy(client, max_new_tokens=12, version=1).model_spec.version == 1

    # The same prompt as token ids gives the same result.
    from zoo.tokenizers import TextTokenizer

    ids = TextTokenizer.load(bundle).encode("ROMEO.")
    by_ids = client.generate(MODEL, token_ids=ids, temperature=0, max_new_tokens=12)
    assert by_ids.text == response.text and by_ids.usage.prompt_tokens == response.usage.prompt_tokens

    # And through `zoo client generate --json`.
    cli = json.loads(zoo_client_cli(server, "generate", MODEL, "--prompt", "ROMEO.", "--temperature", "0",
                                    "--max-new-tokens", "12", "--json").stdout)
    assert (cli["text"], cli["token_ids"], cli["finish_reason"]) == (expected.text, expected.token_ids,
                                                                     expected.finish_reason)

    # A stop sequence taken from the greedy text ends it there, as it does locally.
    stop = expected.text[3:5]
    assert stop
    stopped = local_generate(local, "ROMEO.", temperature=0, max_new_tokens=12, stop=(stop,))
    response = greedy(client, max_new_tokens=12, stop=[stop])
    assert response.text == stopped.text == expected.text[:expected.text.find(stop)]
    assert response.finish_reason == pb.FINISH_REASON_STOP_SEQUENCE and stopped.finish_reason == "stop"


def test_stream_sends_chunks_in_order_then_one_final_message(client, server):
    unary = greedy(client, max_new_tokens=12, return_logprobs=True)
    messages = list(client.stream(MODEL, "ROMEO.", temperature=0, max_new_tokens=12, return_logprobs=True))
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["chunk"] * (len(messages) - 1) + ["final"]
    chunks, final = [m.chunk for m in messages[:-1]], messages[-1].final
    assert "".join(c.text for c in chunks) == final.text == unary.text
    assert [t for c in chunks for t in c.token_ids] == list(final.token_ids) == list(unary.token_ids)
    assert final.finish_reason == unary.finish_reason == pb.FINISH_REASON_LENGTH
    assert final.usage == unary.usage and final.usage.generated_tokens == 12
    assert len(final.logprobs) == 12 and all(p.logprob <= 0 for p in final.logprobs)
    assert [p.logprob for c in chunks for p in c.logprobs] == pytest.approx([p.logprob for p in unary.logprobs])
    assert not greedy(client).logprobs  # only when asked for

    printed = zoo_client_cli(server, "stream", MODEL, "--prompt", "ROMEO.", "--temperature", "0",
                             "--max-new-tokens", "12")
    assert printed.returncode == 0 and printed.stdout == unary.text + "\n"


def test_sampling_with_a_seed_is_reproducible(client, local):
    settings = dict(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=8)
    a = client.generate(MODEL, "KING.", seed=7, **settings)
    # The reference: the bundle's generator in this process (not the server's), with the same seed.
    expected = local_generate(local, "KING.", seed=7, **settings)
    assert (list(a.token_ids), a.text) == (expected.token_ids, expected.text) and len(a.token_ids) <= 8
    assert client.generate(MODEL, "KING.", seed=7, **settings).token_ids == a.token_ids
    others = [list(client.generate(MODEL, "KING.", seed=seed, **settings).token_ids) for seed in (8, 9, 10)]
    assert any(other != list(a.token_ids) for other in others), "the seed changes nothing"


# --- errors -------------------------------------------------------------------------------------------------

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("rpc", ["generate", "stream"])
@pytest.mark.parametrize("kwargs, code, field", [
    (dict(prompt=""), INVALID, "prompt"),
    (dict(token_ids=[]), INVALID, "prompt"),
    (dict(max_new_tokens=0), INVALID, "max_new_tokens"),
    (dict(max_new_tokens=CONTEXT), INVALID, "max_new_tokens"),
    (dict(temperature=-0.5), INVALID, "temperature"),
    (dict(top_p=0.0), INVALID, "top_p"),
    (dict(top_p=1.5), INVALID, "top_p"),
    (dict(top_k=-1), INVALID, "top_k"),
    (dict(stop=[""]), INVALID, "stop_sequences"),
    (dict(token_ids=[1, 100000]), INVALID, "token_ids"),
    (dict(prompt="To be, or not to be, that is the question " * 4), INVALID, "prompt"),
    (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "model_spec.name"),
    (dict(version=3), grpc.StatusCode.NOT_FOUND, "model_spec.version"),
])
def test_bad_requests_get_precise_status_codes(client, rpc, kwargs, code, field):
    kwargs = {"model": MODEL, "prompt": "ROMEO.", "max_new_tokens": 4, **kwargs}
    if "token_ids" in kwargs:
        kwargs.pop("prompt")
    assert_status(lambda: getattr(client, rpc)(kwargs.pop("model"), **kwargs), code, field)


def test_classify_on_a_generative_model_is_a_failed_precondition(client, server):
    details = assert_status(lambda: client.classify(MODEL, ["a fine day"]), grpc.StatusCode.FAILED_PRECONDITION,
                            MODEL, "generate")
    assert "Classify" in details
    assert_status(lambda: client.classify("nope", ["x"]), grpc.StatusCode.NOT_FOUND, "model_spec.name")
    result = zoo_client_cli(server, "classify", MODEL, "a fine day")
    assert result.returncode == 1 and result.stderr.startswith("Error: FAILED_PRECONDITION")


def test_cli_client_errors_are_one_line(server):
    unreachable = run_zoo("client", "models", "--server", "127.0.0.1:1", "--timeout", "5")
    for result, words in ((zoo_client_cli(server, "generate", "nope", "--prompt", "x"), "NOT_FOUND"),
                          (unreachable, "cannot reach a zoo server at 127.0.0.1:1"),
                          (zoo_client_cli(server, "generate", MODEL, "--prompt", "x", "--top-p", "2"), "top_p")):
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
    for command in ("serve", "client", "client generate", "client stream", "client classify", "client models",
                    "client info"):
        help_text = run_zoo(*command.split(), "--help").stdout
        assert "Example:" in help_text, command


# --- health and reflection -------------------------------------------------------------------------------


def test_health_overall_and_per_model(server):
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", MODEL, "zoo.v1.InferenceService"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        assert_status(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10),
                      grpc.StatusCode.NOT_FOUND)


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"zoo.v1.InferenceService", "grpc.health.v1.Health"} <= services
        descriptor = database.FindFileContainingSymbol("zoo.v1.InferenceService")
        assert descriptor.name == "zoo/v1/inference.proto" and descriptor.package == "zoo.v1"


# --- concurrency ---------------------------------------------------------------------------------------------


def test_32_concurrent_clients_mixing_unary_and_streaming(client, server):
    prompts = ["ROMEO.", "KING.", "To be", "First Citizen:"]
    expected = {p: greedy(client, p, max_new_tokens=8).text for p in prompts}

    def call(i):
        prompt = prompts[i % len(prompts)]
        with ZooClient(server.address, timeout=120) as own:
            if i % 2:
                return prompt, greedy(own, prompt, max_new_tokens=8).text
            messages = list(own.stream(MODEL, prompt, temperature=0, max_new_tokens=8))
            assert messages[-1].HasField("final")
            return prompt, "".join(m.chunk.text for m in messages[:-1])

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(32)))
    assert len(results) == 32
    for prompt, text in results:
        assert text == expected[prompt], prompt


# --- continuous batching, cancellation, deadlines and shutdown (on the slow server, restarted after the SIGTERM test)


def decode_batches(server):
    """(decode steps, steps that held more than one request, steps that held more than 4)."""
    metric = "zoo_decode_batch_requests"
    count = server.metric(metric + "_count", model=MODEL, version="2")
    return (count, count - server.metric(metric + "_bucket", model=MODEL, version="2", le="1.0"),
            count - server.metric(metric + "_bucket", model=MODEL, version="2", le="4.0"))


def stream_text(stream, received=()):
    messages = [*received, *stream]
    assert messages[-1].HasField("final")
    assert "".join(m.chunk.text for m in messages[:-1]) == messages[-1].final.text
    return messages[-1].final


def test_concurrent_requests_share_decode_steps_and_each_gets_its_own_tokens(client, slow_server):
    """Five requests on four slots, one joining mid-way and one sampled with a seed: each gets the
    tokens it gets alone (on the other server, one request at a time), while they share steps."""
    requests = [dict(prompt="ROMEO.", temperature=0, max_new_tokens=14),
                dict(prompt="KING.", temperature=0, max_new_tokens=6),
                dict(prompt="First Citizen:", temperature=0.9, top_k=20, seed=5, max_new_tokens=10),
                dict(prompt="To be", temperature=0, max_new_tokens=12, stop=["e"]),
                dict(prompt="O", temperature=0, max_new_tokens=9)]
    alone = [client.generate(MODEL, **r) for r in requests]
    assert len({a.text for a in alone}) == len(requests)
    before = decode_batches(slow_server)
    with ZooClient(slow_server.address, timeout=60) as own:
        first = own.stream(MODEL, **requests[0])
        received = [next(first), next(first)]  # the first request is decoding before the others arrive
        with ThreadPoolExecutor(4) as pool:
            others = list(pool.map(lambda r: stream_text(own.stream(MODEL, **r)), requests[1:]))
        together = [stream_text(first, received)] + others
    for a, t in zip(alone, together):
        assert (list(t.token_ids), t.text, t.finish_reason) == (list(a.token_ids), a.text, a.finish_reason)
    steps, shared, over_four = (after - b for after, b in zip(decode_batches(slow_server), before))
    assert shared >= 5, f"only {shared} of {steps} decode steps held more than one request"
    assert over_four == 0  # never more requests in a step than slots
    assert steps < sum(len(a.token_ids) for a in alone)  # fewer steps than tokens: steps were shared


def test_requests_waiting_together_are_prefilled_together_and_each_gets_its_own_tokens(local):
    """The scheduler in this process on the bundle's own engine: seven requests waiting when its
    loop starts are admitted in one turn and prefilled together (on a compiled engine a group of
    four, the rest alone); each gets the tokens it gets alone, greedy or sampled with a seed, and
    a prompt the engine cannot take fails its own request only."""
    import asyncio
    import threading

    from server.continuous import PREFILL_ROWS, ContinuousBatcher
    from zoo.engine import SamplingConfig
    from zoo.engine.generation import Continuation

    prompts = ["ROMEO.", "KING.", "First Citizen:", "To be, or not", "O", "JULIET."]
    configs = [SamplingConfig(temperature=0, max_new_tokens=6 + i) if i % 3 else
               SamplingConfig(temperature=0.9, top_k=20, seed=i, max_new_tokens=8) for i in range(len(prompts))]
    alone = [local.generate(p, c).token_ids for p, c in zip(prompts, configs)]
    too_long = Continuation(local.tokenizer, [1] * (local.engine.max_prompt_length + 1), configs[1], 4)
    labels = ("in-process", "1")

    def admissions():  # (turns that admitted requests, requests admitted)
        samples = {sample.name: sample.value for sample in PREFILL_ROWS.collect()[0].samples
                   if sample.labels.get("model") == labels[0] and "le" not in sample.labels}
        return samples.get("zoo_prefill_batch_requests_count", 0), samples.get("zoo_prefill_batch_requests_sum", 0)

    before = admissions()

    async def serve_all():
        with ThreadPoolExecutor(1) as executor:
            batcher = ContinuousBatcher(local.engine, executor, threading.Lock(), labels, slots=8)
            streams = [batcher.stream(local.start(p, c)) for p, c in zip(prompts, configs)]
            streams.insert(3, batcher.stream(too_long))

            async def result(stream):
                try:
                    return [item async for item in stream][-1].token_ids
                except ValueError as error:
                    return str(error)

            return await asyncio.gather(*(result(stream) for stream in streams))

    results = asyncio.run(serve_all())
    assert "does not fit the context" in results.pop(3)
    assert results == alone
    assert tuple(a - b for a, b in zip(admissions(), before)) == (1, 7)  # all seven admitted in one turn
    groups = [shape for what, shape, _ in local.engine.compile_log if what == "prefills"]
    assert groups == ([(4, 16, 8)] if local.engine.compiled else [])  # the four shortest prompts together


def wait_for(condition, what, timeout=60):
    """Polls `condition()` every 20 ms until it holds; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.02)


def scheduler_gauge(server, name):
    return server.metric(name, model=MODEL, version="2")


def wait_until_idle(server):
    """Until the scheduler reports every decode slot free and no request waiting."""
    wait_for(lambda: scheduler_gauge(server, "zoo_decode_slots_busy") == 0
             and scheduler_gauge(server, "zoo_generate_queue") == 0, "the decode slots to be freed")


def test_cancelling_frees_a_slot_for_a_waiting_request_and_a_full_queue_is_refused(slow_server):
    wait_until_idle(slow_server)
    with ZooClient(slow_server.address, timeout=60) as own:
        busy = [own.stream(MODEL, "ROMEO.", temperature=0, max_new_tokens=24) for _ in range(4)]
        received = [[next(stream)] for stream in busy]  # all four slots hold a request
        finished = {}

        def consume(name, stream, received=()):
            final = stream_text(stream, received)
            finished[name] = time.monotonic()
            return final

        with ThreadPoolExecutor(4) as pool:
            waiting = pool.submit(consume, "waiting", own.stream(MODEL, "KING.", temperature=0, max_new_tokens=3))
            # It waits in the queue: no slot is free.
            wait_for(lambda: scheduler_gauge(slow_server, "zoo_generate_queue") == 1, "a request in the queue")
            assert "waiting" not in finished and scheduler_gauge(slow_server, "zoo_decode_slots_busy") == 4
            details = assert_status(lambda: greedy(own, max_new_tokens=2), grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    "--max-queue 1")
            assert "waiting for a decode slot" in details
            busy[0].cancel()
            others = [pool.submit(consume, i, busy[i], received[i]) for i in (1, 2, 3)]
            assert waiting.result().usage.generated_tokens == 3
            assert all(other.result().usage.generated_tokens == 24 for other in others)
    # The waiting request took the cancelled one's slot: it finished (3 tokens) while the other
    # three (24 tokens, 20 still to go) were decoding; without the slot it would finish after them.
    assert finished["waiting"] < min(finished[i] for i in (1, 2, 3))


def assert_decoding_stopped(server, own):
    """Once the scheduler has freed every slot, no model step runs for a request that is gone:
    a 3-token request now takes exactly 2 decode steps, each holding only itself."""
    wait_until_idle(server)
    steps, shared, _ = decode_batches(server)
    probe = greedy(own, max_new_tokens=3)
    assert len(probe.token_ids) == 3
    after, shared_after, _ = decode_batches(server)
    assert (after - steps, shared_after - shared) == (2, 0), "decode steps ran for a request that is gone"


def test_cancelling_a_stream_stops_its_generation(slow_server):
    wait_until_idle(slow_server)
    start = decode_batches(slow_server)[0]  # the scheduler's model steps so far
    with ZooClient(slow_server.address, timeout=60) as own:
        stream = own.stream(MODEL, "ROMEO.", temperature=0, max_new_tokens=20)
        next(stream), next(stream)  # the second token came from a decode step
        stream.cancel()
        with pytest.raises(grpc.RpcError) as info:
            list(stream)
        assert info.value.code() == grpc.StatusCode.CANCELLED
        # The scheduler frees the slot (the busy-slots gauge falls to 0) ...
        wait_until_idle(slow_server)
        steps = decode_batches(slow_server)[0] - start
        # ... having run at least the step of the second token and fewer than the 19 of all 20.
        assert 1 <= steps < 19, f"{steps} model steps for a request cancelled at its second token of 20"
        assert_decoding_stopped(slow_server, own)
    assert slow_server.metric("zoo_requests_total", method="GenerateStream", code="CANCELLED") >= 1


def test_a_deadline_stops_the_work(slow_server):
    wait_until_idle(slow_server)
    start = decode_batches(slow_server)[0]
    with ZooClient(slow_server.address, timeout=60) as own:
        # 24 tokens take 23 decode steps of at least 50 ms each: the 0.5 s deadline comes first.
        assert_status(lambda: greedy(own, max_new_tokens=24, timeout=0.5), grpc.StatusCode.DEADLINE_EXCEEDED)
        wait_until_idle(slow_server)
        steps = decode_batches(slow_server)[0] - start
        # Stopped mid-decode: it had begun decoding, and it did not run to its end.
        assert 1 <= steps < 23, f"{steps} model steps for a request stopped by its deadline (23 without it)"
        assert_decoding_stopped(slow_server, own)
    assert slow_server.metric("zoo_requests_total", method="Generate", code="CANCELLED") >= 1  # as the server saw it


def test_sigterm_drains_in_flight_streams_and_exits_0(slow_server):
    with ZooClient(slow_server.address, timeout=60) as own:
        stream = own.stream(MODEL, "ROMEO.", temperature=0, max_new_tokens=20)
        first = next(stream)
        slow_server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in slow_server.log, "the server to log that it is shutting down")
        with ZooClient(slow_server.address, timeout=10) as late:
            assert_status(lambda: greedy(late, max_new_tokens=2), grpc.StatusCode.UNAVAILABLE)
        rest = list(stream)
    assert rest[-1].HasField("final") and rest[-1].final.usage.generated_tokens == 20
    assert first.chunk.text + "".join(m.chunk.text for m in rest[:-1]) == rest[-1].final.text
    assert slow_server.process.wait(60) == 0, slow_server.log[-3000:]
    assert "shutting down" in slow_server.log


# --- a bundle served on another backend ----------------------------------------------------------------


@pytest.mark.cross_backend
def test_serving_a_bundle_on_another_backend(tiny_run):
    bundle = tiny_run[1]
    trained_on = json.loads((bundle / "zoo.json").read_text())["provenance"]["backend"]
    serve_on = "torch" if trained_on != "torch" else "jax"
    expected = zoo_json("generate", bundle, "--prompt", "ROMEO.", "--temperature", "0", "--max-new-tokens", "10",
                        backend=trained_on)
    process = ServerProcess(bundle, "--backend", serve_on, backend=trained_on)
    try:
        assert f"on backend {serve_on}" in process.log
        with ZooClient(process.address, timeout=60) as own:
            info = own.model_info(bundle.name)
            assert info.model_spec.version == 1 and info.serving_backend == BACKEND_ENUM[serve_on]
            assert info.provenance.backend == BACKEND_ENUM[trained_on]
            response = own.generate(bundle.name, "ROMEO.", temperature=0, max_new_tokens=10)
        assert response.text == expected["text"] and list(response.token_ids) == expected["token_ids"]
    finally:
        process.stop()


def test_decode_steps_run_greedy_requests_in_chunks_with_the_same_tokens(client, server, repository, backend):
    """`--decode-steps 4`: while every request decoding is greedy, a turn runs 4 steps in one call
    (fewer turns than tokens), with each request's own tokens, stop string and log-probs; a sampled
    request goes back to a step per turn, as do greedy ones decoding beside it."""
    requests = [dict(prompt="ROMEO.", temperature=0, max_new_tokens=13, return_logprobs=True),
                dict(prompt="KING.", temperature=0, max_new_tokens=6),
                dict(prompt="To be", temperature=0, max_new_tokens=12, stop=["e"]),
                dict(prompt="First Citizen:", temperature=0.9, top_k=20, seed=5, max_new_tokens=10)]
    alone = [client.generate(MODEL, **r) for r in requests]
    chunked = ServerProcess(repository, "--decode-steps", "4", backend=backend)
    try:
        if backend != "torch":  # the warm-up compiled the greedy chunks besides the steps
            functions = [int(re.search(r"\((\d+) functions\)", p.log).group(1)) for p in (server, chunked)]
            assert functions[1] > functions[0], functions

        def turns():
            return chunked.metric("zoo_decode_batch_requests_count", model=MODEL, version="2")

        with ZooClient(chunked.address, timeout=60) as own:
            for request, expected in zip(requests, alone):
                before = turns()
                got = own.generate(MODEL, **request)
                assert (list(got.token_ids), got.text, got.finish_reason) == (
                    list(expected.token_ids), expected.text, expected.finish_reason)
                # The first token comes from the prompt's pass; then greedy: ceil(rest / 4) turns.
                rest = len(got.token_ids) - 1
                assert turns() - before == (rest if request["temperature"] else -(-rest // 4)), request
            assert [p.logprob for p in own.generate(MODEL, **requests[0]).logprobs] == pytest.approx(
                [p.logprob for p in alone[0].logprobs], abs=1e-5)
            with ThreadPoolExecutor(4) as pool:  # together: greedy chunks, then steps once the sampled one joins
                together = list(pool.map(lambda r: own.generate(MODEL, **r), requests))
        for got, expected in zip(together, alone):
            assert (list(got.token_ids), got.text) == (list(expected.token_ids), expected.text)
    finally:
        chunked.stop()
