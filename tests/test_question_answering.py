"""Extractive question answering (`zoo train bert --task qa`): reading SQuAD v1.1 JSON, windows
over long contexts mapped back to characters, SQuAD's exact match and F1 by hand, a tiny model
that learns a toy span task, `zoo answer`/`zoo eval`, and the Answer RPC over a real server.
These run once: the encoder and its training are the classifier's, checked on every backend."""

import json
import random
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from conftest import TINY_BERT, run_zoo, zoo_json
from server.client import ZooClient
from server_process import ServerProcess
from zoo.data.squad import read_squad, split_squad
from zoo.errors import DataError
from zoo.families.bert.answerer import best_answers, make_windows
from zoo.families.bert.squad_scores import exact_match, f1, normalize_answer, squad_scores

pytestmark = pytest.mark.backend_independent

COLORS = "red blue green black white pink gold grey".split()
FILLER = ["the sky is calm .", "the door is open .", "a dog sleeps here .", "we like tea .", "the road is long .",
          "my cat runs fast .", "it rains today .", "the lamp is off ."]


def toy_squad(count, seed):
    """SQuAD v1.1 JSON of short contexts that name the box's colour among other sentences."""
    rng, articles = random.Random(seed), []
    for i in range(count):
        sentences, color = rng.sample(FILLER, rng.randint(2, 4)), rng.choice(COLORS)
        sentences.insert(rng.randint(0, len(sentences)), f"the box is {color} .")
        context = " ".join(sentences)
        start = context.index("the box is ") + len("the box is ")
        articles.append({"title": f"t{i}", "paragraphs": [{"context": context, "qas": [
            {"id": f"q{i}", "question": "what color is the box ?", "answers": [{"text": color, "answer_start": start}]}]}]})
    return {"version": "1.1", "data": articles}


@pytest.fixture(scope="module")
def tiny_answerer(tmp_path_factory):
    base = tmp_path_factory.mktemp("qa")
    data = base / "toy.json"
    data.write_text(json.dumps(toy_squad(600, seed=0), indent=1), encoding="utf-8")
    run = base / "answerer"
    summary = zoo_json("train", "bert", "--task", "qa", "--data", data, "--out", run, *TINY_BERT, "--hidden-dim", "64",
                       "--intermediate-dim", "128", "--vocab-size", "200", "--max-steps", "100", "--eval-every", "50",
                       "--lr", "3e-3", backend="jax")
    bundle = base / "answerer-bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle, summary


def test_squad_files_are_read_and_bad_answers_are_named(tmp_path):
    good = tmp_path / "train.json"
    good.write_text(json.dumps(toy_squad(10, seed=1), indent=1), encoding="utf-8")
    questions = read_squad(good)
    assert len(questions) == 10 and all(q.context[s:s + len(t)] == t for q in questions for t, s in q.answers)
    train, validation = split_squad(questions, 0.2)
    assert (len(train), len(validation)) == (8, 2) and not {q.context for q in train} & {q.context for q in validation}
    broken = toy_squad(3, seed=1)
    broken["data"][2]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 1
    (tmp_path / "shifted.json").write_text(json.dumps(broken, indent=1), encoding="utf-8")
    with pytest.raises(DataError, match=r"shifted.json, line \d+ \(question q2\): the answer '\w+' is not at offset"):
        read_squad(tmp_path / "shifted.json")
    line = next(i for i, text in enumerate((tmp_path / "shifted.json").read_text().splitlines(), 1) if '"q2"' in text)
    with pytest.raises(DataError, match=f"line {line} "):
        read_squad(tmp_path / "shifted.json")
    for name, text, message in (("empty.json", " \n", "empty.json: is empty"),
                                ("bad.json", '{"data": [\n}', "bad.json, line 2: not valid JSON"),
                                ("nodata.json", '{"version": "1.1"}', "'data' must be a list"),
                                ("noanswer.json", json.dumps({"data": [{"paragraphs": [{"context": "a b", "qas": [
                                    {"id": "x", "question": "q?", "answers": []}]}]}]}), "at least one answer")):
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message):
            read_squad(tmp_path / name)


def test_windows_over_a_long_context_overlap_by_the_stride_and_map_back_to_characters():
    from zoo.tokenizers import train_wordpiece

    words = [f"w{i}" for i in range(60)]
    context = "  ".join(words)  # double spaces: offsets are the raw text's
    tokenizer = train_wordpiece([context, "where is it ?"], 200)
    answer = ("w41  w42", context.index("w41"))
    windows, positions = make_windows(tokenizer, [("where is it ?", context)], length=32, stride=8, answers=[answer])
    question_pieces = len(tokenizer.encode_ids_batch(["where is it ?"])[0])
    budget = 32 - question_pieces - 3
    starts = [int(np.flatnonzero(spans[:, 0] >= 0)[0]) for spans in windows.spans]
    assert len(windows.owner) > 2 and set(starts) == {question_pieces + 2}
    covered = [tuple(map(tuple, spans[spans[:, 0] >= 0])) for spans in windows.spans]
    for before, after in zip(covered, covered[1:]):  # consecutive windows share `stride` pieces
        assert before[-8:] == after[:8] and len(before) == budget
    assert sorted({span for window in covered for span in window}) == sorted(
        tokenizer.tokenizer.encode(context, add_special_tokens=False).offsets)
    holding = [w for w, (s, e) in enumerate(positions) if s]
    assert holding  # the windows that hold the whole answer point at it; the others at [CLS]
    for w in holding:
        s, e = positions[w]
        assert context[windows.spans[w, s, 0]:windows.spans[w, e, 1]] == answer[0]
    assert all(tuple(positions[w]) == (0, 0) for w in range(len(positions)) if w not in holding)
    # Decoding: a span planted in the last window holding the answer wins over every window, and
    # comes back as the context's characters; an end before its start, or too long a span, never does.
    logits = np.zeros((len(windows.owner), 2, windows.spans.shape[1]))
    w, (s, e) = holding[-1], positions[holding[-1]]
    logits[w, 0, s], logits[w, 1, e] = 9.0, 9.0
    found = best_answers(windows, logits, [context])[0]
    assert (found.text, found.start, found.end) == (answer[0], answer[1], answer[1] + len(answer[0]))
    assert 0 < found.score <= 1
    assert best_answers(windows, logits, [context], max_answer_tokens=1)[0].text != answer[0]  # 2 pieces long
    logits[w, 0, e], logits[w, 1, s] = 20.0, 20.0  # the best start after the best end: (e, e) wins, not (e, s)
    assert best_answers(windows, logits, [context])[0].text == "w42"


def test_exact_match_and_f1_follow_the_official_squad_definitions():
    assert normalize_answer("The  Cat, sat!") == "cat sat" and normalize_answer("an apple") == "apple"
    assert exact_match("the Denver Broncos", "Denver Broncos.") == 1.0
    assert f1("a red cat sat", "the red cat") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))  # 2 of 3, 2 of 2
    assert f1("dog", "cat") == 0.0 and f1("", "cat") == 0.0
    scores = squad_scores(["Denver Broncos", "red cat", "1990"], [["Denver Broncos"], ["a cat", "the red cat"], ["1989"]])
    assert scores == {"exact_match": pytest.approx(200 / 3), "f1": pytest.approx(200 / 3), "questions": 3}


def test_a_tiny_model_learns_a_toy_span_task(tiny_answerer):
    run, bundle, summary = tiny_answerer
    assert summary["report"]["squad"]["exact_match"] == 100.0 and summary["val_f1"] == 100.0
    context = "it rains today . the box is gold . my cat runs fast ."
    answered = json.loads(run_zoo("answer", bundle, "--question", "what color is the box ?", "--context", context,
                                  "--json", check=True).stdout)
    assert (answered["text"], answered["start"]) == ("gold", context.index("gold")) and answered["score"] > 0.5
    assert zoo_json("eval", run)["squad"]["exact_match"] == 100.0
    # --context: a file's text, or the text itself however long (it is no file name then).
    long_context = " ".join(["it rains today ."] * 30 + ["the box is red ."])
    (run.parent / "context.txt").write_text(long_context, encoding="utf-8")
    for given in (long_context, run.parent / "context.txt"):
        printed = run_zoo("answer", bundle, "--question", "what color is the box ?", "--context", given, check=True)
        assert printed.stdout.split("\t")[-1] == "red\n"


def test_answer_over_a_server_matches_local_answers(tiny_answerer, tmp_path):
    from zoo.bundle import load_runtime

    repository = tmp_path / "models"
    shutil.copytree(tiny_answerer[1], repository / "qa" / "1")
    contexts = [a["paragraphs"][0]["context"] for a in toy_squad(6, seed=9)["data"]]
    pairs = [("what color is the box ?", c) for c in contexts]
    expected = load_runtime(tiny_answerer[1])[0].answer(pairs)
    server = ServerProcess(repository, "--max-batch-delay-ms", "50", backend="jax")
    try:
        with ZooClient(server.address, timeout=60) as client:
            assert client.model_info("qa").task == 4  # TASK_QUESTION_ANSWERING
            answers = client.answer("qa", pairs).answers
            assert [(a.text, a.start, a.end) for a in answers] == [(e.text, e.start, e.end) for e in expected]
            barrier = threading.Barrier(8)

            def call(i):
                barrier.wait()
                return client.answer("qa", [pairs[i % len(pairs)]]).answers[0].text

            with ThreadPoolExecutor(8) as pool:
                assert list(pool.map(call, range(8))) == [expected[i % len(pairs)].text for i in range(8)]
            for request, words in ((lambda: client.answer("qa", []), "questions: give at least one question"),
                                   (lambda: client.answer("qa", [("what?", " ")]), "questions[0].context is empty"),
                                   (lambda: client.classify("qa", ["x"]), "Classify needs a classification model")):
                with pytest.raises(grpc.RpcError) as refused:
                    request()
                assert words in refused.value.details()
        printed = run_zoo("client", "answer", "qa", "--question", pairs[0][0], "--context", pairs[0][1], "--server",
                          server.address, check=True).stdout
        e = expected[0]
        assert printed == f"{e.score:.4f}\t{e.start}\t{e.end}\t{e.text}\n"
    finally:
        server.stop()
