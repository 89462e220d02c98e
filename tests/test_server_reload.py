"""Hot reload of the model repository on a real `zoo serve`: versions added and removed under
load with no failed request, a corrupt bundle refused while every other model serves, and the
version policies. What is checked (files, scheduling, statuses) does not depend on the backend:
these run once."""

import asyncio
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import ZooClient
from server_process import ServerProcess

pytestmark = pytest.mark.backend_independent


def flip_a_byte(bundle, name="model.weights.h5"):
    path = bundle / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def publish(bundle, version_dir):
    """As the README tells writers: copy beside the repository's directory, then rename into place."""
    staging = version_dir.parent / f".{version_dir.name}.staging"
    shutil.copytree(bundle, staging)
    staging.rename(version_dir)


@pytest.fixture(scope="module")
def reload_repo(tiny_run, tmp_path_factory):
    repo = tmp_path_factory.mktemp("reload-repo")
    for version in (1, 2):
        shutil.copytree(tiny_run[1], repo / "tiny" / str(version))
    shutil.copytree(tiny_run[1], repo / "broken" / "1")
    flip_a_byte(repo / "broken" / "1")
    return repo


@pytest.fixture(scope="module")
def reloading_server(reload_repo, backend):
    # Warm-up on: a new version must be compiled before it takes requests. Slow steps keep the
    # streams of version 1 running while it is taken out of service.
    process = ServerProcess(reload_repo, "--poll-seconds", "0.5", "--step-delay", "0.5", "--decode-slots", "16",
                            "--max-queue", "64", backend=backend)
    yield process
    process.stop()


def health_of(server, service):
    with grpc.insecure_channel(server.address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                        timeout=10).status


def wait_until(condition, what, timeout=90):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_corrupt_bundle_is_refused_and_every_other_model_serves(reloading_server, reload_repo):
    log = reloading_server.log
    assert re.search(r"model broken version 1: not loaded: .*model\.weights\.h5: sha256 does not match zoo\.json", log), log
    assert health_of(reloading_server, "broken") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_of(reloading_server, "tiny") == health_pb2.HealthCheckResponse.SERVING
    with ZooClient(reloading_server.address, timeout=60) as client:
        assert [m.model_spec.name for m in client.list_models()] == ["tiny"]
        with pytest.raises(grpc.RpcError) as info:
            client.model_info("broken")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_versions_added_and_removed_under_load_fail_no_request(reloading_server, reload_repo, tiny_run):
    failures, finals, first_chunks = [], [], threading.Barrier(17, timeout=120)

    def stream(client, version, tokens):
        final = None
        for i, message in enumerate(client.stream("tiny", "ROMEO.", version=version, max_new_tokens=tokens,
                                                  temperature=0)):
            if i == 0 and version == 1:
                first_chunks.wait()
            if message.HasField("final"):
                final = message.final
        finals.append(final)
        return final

    def pinned_to_version_1(client):  # one long stream each (24 steps of at least 0.5 s), started before v1 leaves
        try:
            stream(client, 1, 24)
        except Exception as error:  # noqa: BLE001 (collected: the test fails on any)
            failures.append(error)

    def on_the_default_version(client):  # short streams one after another, until one is answered by version 3
        first_chunks.wait()
        deadline = time.monotonic() + 120
        try:
            while stream(client, 0, 4).model_spec.version != 3:
                assert time.monotonic() < deadline, "version 3 never answered"
        except Exception as error:  # noqa: BLE001
            failures.append(error)

    with ZooClient(reloading_server.address, timeout=120) as client, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(pinned_to_version_1, client) for _ in range(8)]
        futures += [pool.submit(on_the_default_version, client) for _ in range(8)]
        first_chunks.wait()  # all 16 streams are running
        publish(tiny_run[1], reload_repo / "tiny" / "3")
        shutil.rmtree(reload_repo / "tiny" / "1")
        wait_until(lambda: client.model_info("tiny").versions == [2, 3], "versions 2 and 3 to serve")
        for future in futures:
            future.result()
        assert not failures, failures
        # Version 1 left service with its streams still running, and was unloaded once they ended.
        retired = re.search(r"model tiny version 1: out of service; unloading once its (\d+) RPCs in flight finish",
                            reloading_server.log)
        assert retired and int(retired.group(1)) >= 1, reloading_server.log
        wait_until(lambda: "model tiny version 1: unloaded" in reloading_server.log, "version 1 to unload")
        versions = [final.model_spec.version for final in finals]
        assert versions.count(1) == 8 and 3 in versions
        # Every version holds the same weights: greedy answers agree (the short ones are prefixes).
        longest = max((list(final.token_ids) for final in finals), key=len)
        assert all(list(final.token_ids) == longest[:len(final.token_ids)] for final in finals)
        assert client.generate("tiny", "ROMEO.", version=3, max_new_tokens=3, temperature=0).model_spec.version == 3
        with pytest.raises(grpc.RpcError) as info:
            client.generate("tiny", "ROMEO.", version=1, max_new_tokens=3)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    compiled = re.search(r"model tiny version 3: serving \(gpt, task generate\) from .*decode engine compiled in",
                         reloading_server.log)
    assert compiled, reloading_server.log


def test_a_corrupt_new_version_leaves_the_previous_one_serving(reloading_server, reload_repo, tiny_run, tmp_path):
    staged = tmp_path / "4"
    shutil.copytree(tiny_run[1], staged)
    flip_a_byte(staged, "tokenizer.json")
    publish(staged, reload_repo / "tiny" / "4")
    wait_until(lambda: "model tiny version 4: not loaded" in reloading_server.log, "version 4 to be refused")
    assert re.search(r"model tiny version 4: not loaded: .*tokenizer\.json: sha256 does not match",
                     reloading_server.log)
    with ZooClient(reloading_server.address, timeout=60) as client:
        assert client.model_info("tiny").versions == [2, 3]
        assert client.generate("tiny", "ROMEO.", max_new_tokens=2, temperature=0).model_spec.version == 3
    assert health_of(reloading_server, "tiny") == health_pb2.HealthCheckResponse.SERVING


# --- the policies, on the Reloader in this process -----------------------------------------------------------


def test_version_policies_choose_and_parse():
    from server.reload import VersionPolicy
    from zoo.errors import ZooError

    assert VersionPolicy.parse("all").choose([1, 2, 5]) == {1, 2, 5}
    assert VersionPolicy.parse("latest:2").choose([1, 7, 2, 5]) == {5, 7}
    assert VersionPolicy.parse("specific:2,9").choose([1, 2, 5]) == {2}
    for bad in ("latest:0", "latest", "specific:", "newest:1"):
        with pytest.raises(ZooError, match="--version-policy"):
            VersionPolicy.parse(bad)


def test_latest_policy_skips_a_broken_version_until_it_is_fixed(tiny_run, tmp_path):
    from server.reload import Reloader, VersionPolicy
    from server.repository import Repository
    from server.runtimes import Settings

    repo = tmp_path / "repo"
    for version in (1, 2):
        shutil.copytree(tiny_run[1], repo / "m" / str(version))
    (repo / "m" / "7").mkdir()  # a version being written in place: no zoo.json yet

    async def scenario():
        repository = Repository()
        with ThreadPoolExecutor(1) as executor:
            reloader = Reloader(repo, VersionPolicy.parse("latest:1"), repository, Settings(executor), executor,
                                warmup=False)
            assert await reloader.reconcile() == (1, 0) and repository.versions("m") == [2]
            broken = tmp_path / "3"
            shutil.copytree(tiny_run[1], broken)
            (broken / "model.weights.h5").write_bytes((broken / "model.weights.h5").read_bytes()[:1000])  # cut short
            publish(broken, repo / "m" / "3")
            assert await reloader.reconcile() == (0, 0) and repository.versions("m") == [2]
            assert await reloader.reconcile() == (0, 0)  # not tried again while unchanged
            shutil.rmtree(repo / "m" / "3")
            publish(tiny_run[1], repo / "m" / "3")
            assert await reloader.reconcile() == (1, 1) and repository.versions("m") == [3]
            await asyncio.gather(*reloader.retiring)

    asyncio.run(scenario())
