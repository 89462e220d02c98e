"""Seq2seq through the real `zoo` command and a real server: training on pairs from a .tsv (a copy
task the tiny model learns, so that BLEU and chrF are far from 0), `zoo translate`/`generate`/`eval`,
Generate and GenerateStream, one-line data errors."""

import json

import pytest

from conftest import run_zoo, zoo_json
from server.client import ZooClient
from server_process import ServerProcess

SOURCES = ["red cat two moon", "big old tree", "five small fish sun star"]  # none in the training pairs
MODEL = "copier-bundle"
GOOD = 50  # BLEU and chrF (0-100) of a model that has learnt the copy task: 100 on every backend


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_validation_loss_and_scores_bleu(tiny_copier):
    run, _, summary = tiny_copier
    evals = [m for m in _metrics(run) if "val_loss" in m]
    assert [m["step"] for m in evals] == [125, 250]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    scores = summary["translation"]
    assert scores["pairs"] == 20 and scores["beam"]["width"] == 4
    for decoding in ("greedy", "beam"):
        assert scores[decoding]["bleu"] > GOOD and scores[decoding]["chrf"] > GOOD, scores
    assert len(scores["examples"]) == 3 and all(e["reference"] and e["hypothesis"] for e in scores["examples"])


@pytest.mark.backend_independent
def test_translate_generate_and_eval(tiny_copier, tmp_path):
    run, bundle, _ = tiny_copier
    greedy = zoo_json("generate", run, "--prompt", SOURCES[0], "--temperature", "0")
    beam1 = json.loads(run_zoo("translate", bundle, SOURCES[0], "--beam-width", "1", "--json", check=True).stdout)
    assert beam1["text"] == greedy["text"] and beam1["token_ids"] == greedy["token_ids"]  # width 1 is greedy
    pairs = tmp_path / "dev.tsv"
    pairs.write_text("".join(f"{s}\t{s}\n" for s in SOURCES), encoding="utf-8")
    report = zoo_json("eval", bundle, "--data", pairs, "--beam-width", "2")
    assert report["kind"] == "seq2seq" and report["pairs"] == 3 and report["beam"]["width"] == 2
    for decoding in ("greedy", "beam"):  # the pairs copy each sentence, as the model learnt to
        assert report[decoding]["bleu"] > GOOD and report[decoding]["chrf"] > GOOD, report
        assert min(report[decoding][m] for m in ("rouge1", "rouge2", "rougeL")) > GOOD, report
    assert [e["source"] for e in report["examples"]] == SOURCES
    # --metric picks what is printed; a name the report lacks is refused before anything is scored.
    text = run_zoo("eval", bundle, "--data", pairs, "--beam-width", "2", "--metric", "rougeL", "--metric", "rouge2",
                   check=True).stdout
    assert "ROUGE-L" in text and "ROUGE-2" in text and "BLEU" not in text and "ROUGE-1" not in text
    refused = run_zoo("eval", bundle, "--metric", "accuracy")
    assert refused.returncode == 1 and "--metric accuracy: not a score of a seq2seq model's report; choose from " \
        "bleu, chrf, rouge1, rouge2, rougeL" in refused.stderr
    # zoo summarize is zoo translate under the name summarization users look for.
    summarized = run_zoo("summarize", bundle, *SOURCES, "--beam-width", "2", check=True)
    translated = run_zoo("translate", bundle, *SOURCES, "--beam-width", "2", check=True)
    assert summarized.stdout == translated.stdout and "texts 3/3 (100%)" in translated.stderr  # with progress


@pytest.fixture(scope="module")
def generator(tiny_copier):
    """The bundle's generator in this process, on this backend."""
    from zoo.bundle import load_runtime

    return load_runtime(tiny_copier[1])[0]


@pytest.fixture(scope="module")
def server(tiny_copier, backend):
    """The bundle served with decode steps of at least 50 ms (so that requests can be seen sharing
    them) and 4 decode slots."""
    process = ServerProcess(tiny_copier[1], "--step-delay", "0.05", "--decode-slots", "4", "--no-warmup",
                            backend=backend)
    yield process
    process.stop()


def test_generate_and_stream_over_a_server_equal_local_greedy(generator, server):
    from zoo.engine import SamplingConfig

    local = [generator.generate(s, SamplingConfig(temperature=0)) for s in SOURCES]
    sampling = dict(temperature=0.9, top_k=20, top_p=0.9, seed=3, max_new_tokens=10)
    local_sampled = generator.generate(SOURCES[0], SamplingConfig(**sampling, stop=("zzz",)))
    with ZooClient(server.address, timeout=60) as client:
        info = client.model_info(MODEL)
        assert info.kind == 3 and info.max_new_tokens == 16 and info.context_length == 16  # MODEL_KIND_SEQ2SEQ
        for source, expected in zip(SOURCES, local, strict=True):
            response = client.generate(MODEL, source, temperature=0)
            assert response.text == expected.text
            assert list(response.token_ids) == expected.token_ids
            chunks = list(client.stream(MODEL, source, temperature=0))
            assert "".join(c.chunk.text for c in chunks[:-1]) == expected.text
            assert chunks[-1].final.text == expected.text
        sampled = [client.generate(MODEL, SOURCES[0], **sampling, stop=["zzz"]) for _ in range(2)]
        # The same seed gives the same tokens, and those of the local generator with that seed.
        for response in sampled:
            assert (response.text, list(response.token_ids)) == (local_sampled.text, local_sampled.token_ids)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name, content, args, message", [
    ("pairs.tsv", "source\ttarget\nhello\tbonjour\n", ["--source-column", "en"], "en"),
    ("pairs.tsv", "", [], "empty"),
    ("pairs.tsv", "hello\tbonjour\njust one column\n", [], "line 2"),
    ("pairs.jsonl", '{"source": "hello", "target": "bonjour"}\n{"source": "hi"}\n', [], "line 2"),
])
def test_data_errors_are_one_line(tmp_path, name, content, args, message):
    data = tmp_path / name
    data.write_text(content, encoding="utf-8")
    result = run_zoo("train", "seq2seq", "--data", data, "--out", tmp_path / "run", *args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert message in result.stderr


def test_seq2seq_requests_share_decode_steps_and_cancel_frees_the_slot(generator, server):
    """Seq2seq joins the server's continuous batching as GPT does: three requests on four slots,
    two joining while the first decodes, each get the tokens they get alone, in shared steps; a
    cancelled stream's slot is freed."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from zoo.engine import SamplingConfig

    alone = [generator.generate(s, SamplingConfig(temperature=0)) for s in SOURCES]
    assert len({a.text for a in alone}) == len(SOURCES)
    # Counted from here: the test above may have run on the same server.
    before = server.metric("zoo_decode_batch_requests_count", model=MODEL, version="1"), \
        server.metric("zoo_decode_batch_requests_bucket", model=MODEL, version="1", le="1.0")

    def steps():
        """Decode steps since `before`, and those of them that held more than one request."""
        count = server.metric("zoo_decode_batch_requests_count", model=MODEL, version="1")
        alone_steps = server.metric("zoo_decode_batch_requests_bucket", model=MODEL, version="1", le="1.0")
        return count - before[0], (count - alone_steps) - (before[0] - before[1])

    def wait_for(condition, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    with ZooClient(server.address, timeout=60) as client:
        first = client.stream(MODEL, SOURCES[0], temperature=0)
        received = [next(first)]  # the first request is decoding before the others arrive
        with ThreadPoolExecutor(2) as pool:
            others = list(pool.map(lambda s: client.generate(MODEL, s, temperature=0), SOURCES[1:]))
        messages = received + list(first)
        together = [messages[-1].final] + others
        for a, t in zip(alone, together, strict=True):
            assert (list(t.token_ids), t.text) == (a.token_ids, a.text)
        total, shared = steps()
        assert shared >= 2, f"only {shared} of {total} decode steps held more than one request"
        assert total < sum(len(a.token_ids) for a in alone)
        # Cancel a stream after its first token: its slot is freed before its output is done.
        tokens = server.metric("zoo_decode_steps_total", model=MODEL, version="1")
        stream = client.stream(MODEL, SOURCES[2], temperature=0)
        next(stream)
        stream.cancel()
        wait_for(lambda: server.metric("zoo_decode_slots_busy", model=MODEL, version="1") == 0, "the slot freed")
        handed = server.metric("zoo_decode_steps_total", model=MODEL, version="1") - tokens
        assert 1 <= handed < len(alone[2].token_ids)
