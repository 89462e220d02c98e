"""Property-based fuzzing of a real `zoo serve` (hypothesis): random values for every field of every
zoo.v1 request message (nested messages, repeated fields, oneofs, unknown enum values, extreme
numbers, odd Unicode), and random bytes as the request. The server must answer each with a status
that refuses or serves it, never INTERNAL or UNKNOWN, and still serve afterwards.

Examples per RPC: ZOO_FUZZ_EXAMPLES (default 100, derandomized so CI runs the same cases; set
ZOO_FUZZ_SEED for a new random run). Does not depend on the backend: runs once."""

import collections
import os
import shutil

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from server.client import ZooClient
from server.gen.zoo.v1 import inference_pb2 as pb
from server_process import ServerProcess

pytestmark = pytest.mark.backend_independent

EXAMPLES = int(os.environ.get("ZOO_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("ZOO_FUZZ_SEED")
SERVICE = pb.DESCRIPTOR.services_by_name["InferenceService"]
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
         grpc.StatusCode.DEADLINE_EXCEEDED}
OUTCOMES = collections.Counter()  # (method, status) over the session; printed at the end of the module

T = FieldDescriptor
INTEGERS = {T.TYPE_INT32: 31, T.TYPE_SINT32: 31, T.TYPE_SFIXED32: 31, T.TYPE_INT64: 63, T.TYPE_SINT64: 63,
            T.TYPE_SFIXED64: 63}
UNSIGNED = {T.TYPE_UINT32: 32, T.TYPE_FIXED32: 32, T.TYPE_UINT64: 64, T.TYPE_FIXED64: 64}
MODEL_NAMES = st.one_of(*[st.sampled_from(["tiny", "classifier"])] * 3,
                        st.sampled_from(["", "none"]) | st.text(max_size=20))
USUALLY_SET = {"model_spec", "name", "text", "texts"}  # favoured set, so that requests reach the models


def _mostly(sane, wild):
    """`sane` listed three times beside `wild`: more requests pass validation and reach the models
    (hypothesis still draws the wild values often: it favours edge cases)."""
    return st.one_of(sane, sane, sane, wild)


def _scalar(field):
    if field.name == "name" and field.containing_type.name == "ModelSpec":
        return MODEL_NAMES  # real names too, so that requests get past the lookup
    if field.type in INTEGERS:
        bits = INTEGERS[field.type]
        return _mostly(st.integers(0, 20), st.integers(-(2 ** bits), 2 ** bits - 1))
    if field.type in UNSIGNED:
        return _mostly(st.integers(0, 20), st.integers(0, 2 ** UNSIGNED[field.type] - 1))
    if field.type == T.TYPE_FLOAT:
        return _mostly(st.floats(0.05, 1), st.floats(width=32))
    if field.type == T.TYPE_DOUBLE:
        return _mostly(st.floats(0.05, 1), st.floats())
    if field.type == T.TYPE_BOOL:
        return st.booleans()
    if field.type == T.TYPE_STRING:
        return _mostly(st.text("abcdefgh ROMEOéü.", min_size=1, max_size=30),
                       st.text(max_size=60) | st.sampled_from(["", " ", "\x00", "\ud7ff" * 3]))
    if field.type == T.TYPE_BYTES:
        return st.binary(max_size=60)
    if field.type == T.TYPE_ENUM:
        return _mostly(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 2 ** 31 - 1))
    raise AssertionError(f"no strategy for {field.full_name}")


def message(descriptor, depth=0):
    """A strategy of dicts {field name: value} filling any subset of `descriptor`'s fields."""
    fields = {}
    for field in descriptor.fields:
        if field.type == T.TYPE_MESSAGE:
            if depth > 3 or field.message_type.full_name.startswith("google.protobuf"):
                continue
            value = message(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        repeated = field.is_repeated
        fields[field.name] = st.lists(value, max_size=6) if repeated else value
    usually = {name: value for name, value in fields.items() if name in USUALLY_SET}
    anything = st.fixed_dictionaries({}, optional=fields)
    if not usually:
        return anything
    rest = {name: value for name, value in fields.items() if name not in usually}
    return _mostly(st.fixed_dictionaries(usually, optional=rest), anything)


def build(cls, values):
    request = cls()
    _fill(request, values)
    return request


def _fill(target, values):
    for name, value in values.items():
        field = target.DESCRIPTOR.fields_by_name[name]
        if field.type == T.TYPE_MESSAGE:
            if field.is_repeated:
                for item in value:
                    _fill(getattr(target, name).add(), item)
            else:
                getattr(target, name).SetInParent()
                _fill(getattr(target, name), value)
        elif field.is_repeated:
            getattr(target, name).extend(value)
        else:
            setattr(target, name, value)


@pytest.fixture(scope="module")
def fuzz_server(tiny_run, tiny_classifier, tmp_path_factory, backend):
    repo = tmp_path_factory.mktemp("fuzz-repo")
    shutil.copytree(tiny_run[1], repo / "tiny" / "1")
    shutil.copytree(tiny_classifier[1], repo / "classifier" / "1")
    process = ServerProcess(repo, "--no-warmup", "--poll-seconds", "0", backend=backend)
    yield process
    process.stop()
    print("\nfuzz outcomes (method, status: count):", dict(sorted(OUTCOMES.items())))


@pytest.fixture(scope="module")
def fuzz_channel(fuzz_server):
    with grpc.insecure_channel(fuzz_server.address) as channel:
        yield channel


def _call(channel, method, payload):
    """Sends `payload` (bytes) to `method`; returns its status code."""
    path = f"/{SERVICE.full_name}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path)(payload, timeout=60):
                pass
        else:
            channel.unary_unary(path)(payload, timeout=60)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        assert error.code() not in NEVER, (method.name, error.code(), error.details())
        return error.code()


def _fuzzed(test):
    test = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=SEED is None,
                    suppress_health_check=list(HealthCheck))(test)
    return seed(int(SEED))(test) if SEED else test


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_random_field_values_never_fault_the_server(fuzz_channel, method):
    request_class = getattr(pb, method.input_type.name, None) or _message_class(method.input_type)

    @_fuzzed
    @given(values=message(method.input_type))
    def check(values):
        code = _call(fuzz_channel, method, build(request_class, values).SerializeToString())
        OUTCOMES[method.name, code.name] += 1

    check()


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=lambda m: m.name)
def test_random_bytes_never_fault_the_server(fuzz_channel, method):
    @_fuzzed
    @given(payload=st.binary(max_size=200))
    def check(payload):
        code = _call(fuzz_channel, method, payload)
        OUTCOMES[method.name + " (bytes)", code.name] += 1

    check()


def test_the_server_serves_after_the_fuzzing(fuzz_server):
    with ZooClient(fuzz_server.address, timeout=60) as client:
        assert client.generate("tiny", "ROMEO.", max_new_tokens=3, temperature=0).usage.generated_tokens == 3
        assert client.classify("classifier", ["bonjour"]).results[0].label
    assert fuzz_server.process.poll() is None
    assert "Traceback" not in fuzz_server.log and "failed" not in fuzz_server.log, fuzz_server.log[-3000:]


def _message_class(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)
