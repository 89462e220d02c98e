"""Serving replicas: a client given two real `zoo serve` processes spreads its calls over both
(gRPC round_robin) and, when one is killed mid-run, retries the calls that are safe to repeat on
the other: none fails. Balancing and retries do not depend on the backend: these run once."""

import shutil
import signal
import threading

import grpc
import pytest

from conftest import run_zoo
from server.client import ZooClient, generate_request
from server.replicas import grpc_target, is_repeatable, service_config
from server_process import ServerProcess
from zoo.errors import ZooError

pytestmark = pytest.mark.backend_independent


@pytest.fixture(scope="module")
def replica_repo(tiny_run, tiny_classifier, tmp_path_factory):
    repo = tmp_path_factory.mktemp("replica-repo")
    shutil.copytree(tiny_run[1], repo / "tiny" / "1")
    shutil.copytree(tiny_classifier[1], repo / "classifier" / "1")
    return repo


@pytest.fixture(scope="module")
def replica(replica_repo, backend):
    process = ServerProcess(replica_repo, "--no-warmup", "--poll-seconds", "0", "--step-delay", "0.02",
                            backend=backend)
    yield process
    process.stop()


def served(server, method):
    return server.metric("zoo_requests_total", method=method, code="OK")


SAFE_CALLS = [
    lambda c, i: c.list_models(),
    lambda c, i: c.model_info("tiny"),
    lambda c, i: c.classify("classifier", ["bonjour", "hello"]),
    lambda c, i: c.embed("classifier", ["guten Tag"]),
    lambda c, i: c.generate("tiny", "ROMEO.", max_new_tokens=6, temperature=0),
    lambda c, i: c.generate("tiny", "ROMEO.", max_new_tokens=6, seed=i),
]  # not GenerateStream: a stream is retried only until its first message (then the text has been seen)


def test_calls_spread_over_replicas_and_survive_one_killed(replica, replica_repo, backend):
    # Slow decode steps: generations are in flight on the replica when it dies.
    a = replica
    b = ServerProcess(replica_repo, "--no-warmup", "--poll-seconds", "0", "--step-delay", "0.02", backend=backend)
    failures, done, killed = [], [0], threading.Event()
    try:
        with ZooClient(f"{a.address},{b.address}", timeout=60) as client:
            def caller(worker):
                for i in range(25):
                    if i == 8 and worker == 0:
                        b_share = sum(served(b, m) for m in ("Generate", "Classify", "ListModels"))
                        assert b_share > 0, "round robin sent the second replica nothing"
                        b.process.send_signal(signal.SIGKILL)
                        killed.set()
                    try:
                        SAFE_CALLS[(i + worker) % len(SAFE_CALLS)](client, i)
                    except grpc.RpcError as error:
                        failures.append((worker, i, killed.is_set(), error.code(), error.details()))
                    done[0] += 1

            threads = [threading.Thread(target=caller, args=(w,)) for w in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert killed.is_set() and b.process.wait(10) == -signal.SIGKILL
        assert not failures, failures
        assert done[0] == 100
        assert served(a, "Generate") > 0 and served(a, "Classify") > 0
    finally:
        b.stop()


def test_replica_targets_and_the_retry_rule():
    assert grpc_target("127.0.0.1:1,127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", None)
    assert grpc_target("[::1]:1, [::1]:2") == ("ipv6:[::1]:1,[::1]:2", None)
    assert grpc_target("localhost:1,127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", "localhost")
    assert grpc_target("models.example.com:8500") == ("models.example.com:8500", None)
    assert grpc_target("dns:///models:8500") == ("dns:///models:8500", None)
    for bad, words in (("127.0.0.1", "expected HOST:PORT"), ("127.0.0.1:1,b", "expected HOST:PORT"),
                       ("127.0.0.1:1,[::1]:2", "all IPv4 or all IPv6"),
                       ("127.0.0.1:1,no-such-host.invalid:2", "cannot resolve 'no-such-host.invalid'")):
        with pytest.raises(ZooError, match=words):
            grpc_target(bad)
    assert '"round_robin"' in service_config(retries=False) and "retryPolicy" not in service_config(retries=False)
    assert is_repeatable(generate_request("m", "x", temperature=0))
    assert is_repeatable(generate_request("m", "x", temperature=0.8, seed=3))
    assert not is_repeatable(generate_request("m", "x", temperature=0.8))
    assert not is_repeatable(generate_request("m", "x"))


def test_zoo_client_takes_a_list_of_replicas(replica):
    result = run_zoo("client", "models", "--server", f"{replica.address},{replica.address}")
    assert result.returncode == 0 and "tiny" in result.stdout, result.stderr
    refused = run_zoo("client", "models", "--server", "127.0.0.1")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "Error: --server '127.0.0.1': expected HOST:PORT"]
