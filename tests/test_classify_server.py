"""Classify and Embed over a real `zoo serve` process: single, batched and 32 concurrent requests,
dynamic batching observed in the server's metrics, truncation, and precise errors."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from conftest import run_zoo
from server.client import ZooClient
from server_process import ServerProcess

TEXTS = ["Mot de passe oublié", "Passwort zurücksetzen", "Show all results", "Ver todos los resultados",
         "Nascondi i conteggi", "Voer twee geldige datums in", "Mostrar todos os resultados"]


@pytest.fixture(scope="module")
def server(tiny_classifier, backend):
    # A long batching window, so that concurrent requests surely meet in one batch.
    process = ServerProcess(tiny_classifier[1], "--max-batch-delay-ms", "50", "--max-batch-size", "64",
                            backend=backend)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    with ZooClient(server.address, timeout=60) as zoo_client:
        yield zoo_client


@pytest.fixture(scope="module")
def local(tiny_classifier):
    """The same bundle classified in this process, for comparison."""
    from zoo.bundle import load_model
    from zoo.families.bert.classifier import Classifier

    model, tokenizer, info = load_model(tiny_classifier[1])
    return Classifier(model, tokenizer, info.labels)


def test_single_and_batched_requests_match_local_classification(client, local):
    name = "classifier-bundle"
    expected = local.classify(TEXTS)
    one = client.classify(name, TEXTS[:1]).results[0]
    assert one.label == expected[0].label
    batch = client.classify(name, TEXTS).results
    assert [r.label for r in batch] == [e.label for e in expected]
    for result, reference in zip(batch, expected):
        probabilities = [c.probability for c in result.classes]
        np.testing.assert_allclose(probabilities, reference.probabilities, atol=1e-5)
        assert result.probability == pytest.approx(max(probabilities))
        assert [c.label for c in result.classes] == local.labels
        assert not result.truncated
    assert client.classify(name, [" ".join(["mot"] * 300)]).results[0].truncated


def test_32_concurrent_clients_are_batched_together(client, server, local):
    name = "classifier-bundle"
    before_passes = server.metric("zoo_batch_requests_count", model=name, method="Classify")
    before_requests = server.metric("zoo_batch_requests_sum", model=name, method="Classify")
    expected = {text: result.label for text, result in zip(TEXTS, local.classify(TEXTS))}
    barrier = threading.Barrier(32)

    def call(i):
        text = TEXTS[i % len(TEXTS)]
        barrier.wait()
        return text, client.classify(name, [text]).results[0].label

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(32)))
    assert all(label == expected[text] for text, label in answers)
    passes = server.metric("zoo_batch_requests_count", model=name, method="Classify") - before_passes
    requests = server.metric("zoo_batch_requests_sum", model=name, method="Classify") - before_requests
    assert requests == 32
    assert passes < 32  # some forward passes served more than one request
    assert server.metric("zoo_batch_requests_bucket", model=name, method="Classify", le="1.0") < \
        server.metric("zoo_batch_requests_count", model=name, method="Classify")


def test_embed_returns_one_vector_per_text(client, local):
    response = client.embed("classifier-bundle", TEXTS[:3])
    vectors = np.array([e.values for e in response.embeddings])
    assert vectors.shape == (3, 64)  # conftest's tiny_classifier --hidden-dim
    expected, _ = local.embed(TEXTS[:3])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embed_reads_text_pairs(client, local):
    alone = np.array([e.values for e in client.embed("classifier-bundle", TEXTS[:2]).embeddings])
    paired = np.array([e.values for e in client.embed("classifier-bundle", TEXTS[:2], pairs=TEXTS[2:4]).embeddings])
    assert not np.allclose(alone, paired, atol=1e-4)
    expected, _ = local.embed(TEXTS[:2], TEXTS[2:4])
    np.testing.assert_allclose(paired, expected, atol=1e-5)
    with pytest.raises(grpc.RpcError) as info:
        client.embed("classifier-bundle", TEXTS[:2], pairs=TEXTS[:1])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "text_pairs" in info.value.details()


@pytest.mark.parametrize("texts, pairs, code, words", [
    ([], None, grpc.StatusCode.INVALID_ARGUMENT, ["texts"]),
    (["ok", "  "], None, grpc.StatusCode.INVALID_ARGUMENT, ["texts[1]"]),
    (["a", "b"], ["only one"], grpc.StatusCode.INVALID_ARGUMENT, ["text_pairs"]),
])
def test_bad_classify_requests(client, texts, pairs, code, words):
    with pytest.raises(grpc.RpcError) as info:
        client.classify("classifier-bundle", texts, pairs=pairs)
    assert info.value.code() == code
    assert all(word in info.value.details() for word in words)


def test_cli_client_classify_and_embed(server):
    result = run_zoo("client", "classify", "classifier-bundle", *TEXTS[:2], "--server", server.address, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].endswith(TEXTS[0])
    result = run_zoo("client", "embed", "classifier-bundle", TEXTS[0], "--server", server.address, check=True)
    assert len(json.loads(result.stdout)["embedding"]) == 64
