"""Named-entity recognition (`zoo train bert --task tag`): reading CoNLL and .jsonl, word-piece
alignment, entity-level scores against hand computation and seqeval, a tiny tagger that learns a
toy pattern, `zoo tag`/`zoo eval`, and the Tag RPC over a real server."""

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
from zoo.data.tagged import encode_tags, read_tagged, split_tagged, tag_names
from zoo.errors import DataError
from zoo.families.bert.entities import entity_scores, entity_spans

PEOPLE = [["Alice"], ["Bob"], ["Carol"], ["Mary", "Ann"], ["Jean", "Luc"], ["Omar"], ["Priya"], ["Kenji"]]
PLACES = [["Paris"], ["Rome"], ["New", "York"], ["Hong", "Kong"], ["Oslo"], ["Lima"], ["Cairo"], ["Quebec"]]
TEMPLATES = ["i met {p} in {l} today", "{p} flew to {l} .", "we saw {p} near {l}", "the weather in {l} was nice",
             "{p} likes tea", "did {p} call from {l} ?"]


def toy_sentences(count, seed):
    """(tokens, tags) of sentences about PEOPLE and PLACES: the pattern a tagger must learn."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(count):
        tokens, tags = [], []
        for word in rng.choice(TEMPLATES).split():
            kind, names = {"{p}": ("person", PEOPLE), "{l}": ("location", PLACES)}.get(word, (None, None))
            if kind is None:
                tokens.append(word), tags.append("O")
                continue
            name = rng.choice(names)
            tokens += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        sentences.append((tokens, tags))
    return sentences


def write_conll(path, sentences):
    path.write_text("".join("".join(f"{t}\t{g}\n" for t, g in zip(*s)) + "\n" for s in sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory, backend):
    """A tiny BERT tagger trained through the real CLI (on the session's backend: these tests run
    once) on 600 toy sentences, its bundle and the training summary."""
    base = tmp_path_factory.mktemp("tagger")
    data = write_conll(base / "toy.conll", toy_sentences(600, seed=0))
    run = base / "tagger"
    summary = zoo_json("train", "bert", "--task", "tag", "--data", data, "--out", run, *TINY_BERT,
                       "--hidden-dim", "64", "--intermediate-dim", "128", "--vocab-size", "200", "--cased",
                       "--max-steps", "150", "--eval-every", "75", "--lr", "3e-3")
    bundle = base / "tagger-bundle"
    run_zoo("export", run, "--out", bundle, check=True)
    return run, bundle, summary


@pytest.mark.backend_independent
def test_conll_and_jsonl_are_read_and_bad_data_is_named(tmp_path):
    conll = tmp_path / "train.txt"
    conll.write_text("-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n \nPeter NNP B-NP B-PER\n"
                     "Blackburn NNP I-NP I-PER\n", encoding="utf-8")
    data = read_tagged(conll)  # the tag is the last field; a whitespace-only line ends a sentence
    assert data.tokens == [["EU", "rejects"], ["Peter", "Blackburn"]] and data.lines == [3, 6]
    assert data.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert read_tagged(conll, tag_column=2).tags[0] == ["B-NP", "B-VP"]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text('{"tokens": ["Taylor", "Swift", "sings"], "tags": ["B-person", "I-person", "O"]}\n',
                     encoding="utf-8")
    assert read_tagged(jsonl).tags == [["B-person", "I-person", "O"]]
    assert tag_names(read_tagged(jsonl)) == ["O", "B-person", "I-person"]
    bad = {"untagged.conll": ("EU B-ORG\nrejects\n", "untagged.conll, line 2: 1 field(s), expected a token and a tag"),
           "bioes.conll": ("EU S-ORG\n", "bioes.conll, line 1: tag 'S-ORG' is not BIO (IOB2)"),
           "bare.conll": ("EU ORG\n", "bare.conll, line 1: tag 'ORG' is not BIO"),
           "empty.conll": ("\n \n", "empty.conll: is empty"),
           "short.jsonl": ('{"tokens": ["a", "b"], "tags": ["O"]}\n', "short.jsonl, line 1: 2 tokens but 1 tags"),
           "fields.jsonl": ('{"words": ["a"], "tags": ["O"]}\n', "fields.jsonl, line 1: no 'tokens' field")}
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=message.replace("(", "\\(").replace(")", "\\)")):
            read_tagged(tmp_path / name)
    with pytest.raises(DataError, match="line 3: 4 field\\(s\\), expected a tag in column 4"):
        read_tagged(conll, tag_column=4)
    train, validation = split_tagged(read_tagged(write_conll(tmp_path / "toy.conll", toy_sentences(40, 1))), 0.25)
    assert (len(train), len(validation)) == (30, 10)
    validation.tags[0][0] = "B-vehicle"
    with pytest.raises(DataError, match="tag 'B-vehicle' does not occur in the training data"):
        encode_tags(validation, tag_names(train))


@pytest.mark.backend_independent
def test_word_pieces_carry_the_tag_of_their_word():
    from zoo.families.bert.tagger import encode_tagged, token_tags
    from zoo.tokenizers import train_wordpiece

    tokenizer = train_wordpiece(["visited the big apple", "u s a"], 40)  # small: long words split into pieces
    names = ["O", "B-location", "I-location"]
    sentence = ["@bob", "visited", "U.S.", "yesterday"]
    tags = [np.array([0, 0, 1, 0])]
    inputs, labels, weights, first_piece, truncated = encode_tagged(tokenizer, [sentence], tags, names, seq_len=40)
    pieces = tokenizer.tokenizer.encode(sentence, is_pretokenized=True, add_special_tokens=False).tokens
    n = len(pieces)
    assert inputs["padding_mask"][0].sum() == n + 2 and not truncated[0]
    tagged = {i: (pieces[i - 1], names[labels[0, i]]) for i in range(n + 2) if weights[0, i]}
    # The first piece of each word: "@" and "bob" are two words of one token, "U.S." four (its
    # first takes B-location, the rest continue it); "##" pieces, [CLS] and [SEP] carry none.
    words = [p for p in pieces if not p.startswith("##")]
    assert [piece for piece, _ in tagged.values()] == words
    assert [tag for _, tag in tagged.values()] == (
        ["O", "O", "O", "B-location", "I-location", "I-location", "I-location", "O"])
    assert weights[0, 0] == 0 and weights[0, n + 1] == 0 and weights[0, n + 2:].sum() == 0
    # "yesterday" has letters the tokenizer never saw: one [UNK] piece, which carries its tag.
    assert pieces[first_piece[0, 2] - 1] == "u" and pieces[first_piece[0, 3] - 1] == "[UNK]"
    predicted = np.zeros((1, 40), int)
    predicted[0, first_piece[0, 2]] = 1
    assert token_tags(predicted, first_piece, [4], names) == [["O", "O", "B-location", "O"]]
    cut = encode_tagged(tokenizer, [sentence], tags, names, seq_len=5)
    assert cut[4][0] and list(cut[3][0]) == [1, 3, -1, -1]  # "U.S." and "yesterday" were cut off


@pytest.mark.backend_independent
def test_entity_scores_are_conll_s_by_hand_and_seqeval_s():
    from seqeval.metrics import f1_score, precision_score, recall_score

    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG"]) == [
        ("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7)]  # an I- without its B- starts one
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    guess = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-ORG"]]
    scores = entity_scores(true, guess)  # 2 of 4 predicted entities right; 2 of 3 true ones found
    assert (scores["precision"], scores["recall"]) == (0.5, pytest.approx(2 / 3))
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert scores["types"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert scores["types"]["ORG"]["precision"] == pytest.approx(1 / 3) and scores["types"]["ORG"]["recall"] == 1.0
    assert scores["types"]["PER"]["f1"] == 1.0
    rng = random.Random(0)
    tags = ["O", "B-a", "I-a", "B-b", "I-b"]
    for _ in range(20):
        true = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(30)]
        guess = [[rng.choice(tags) for _ in sentence] for sentence in true]
        scores = entity_scores(true, guess)
        assert scores["precision"] == pytest.approx(precision_score(true, guess))
        assert scores["recall"] == pytest.approx(recall_score(true, guess))
        assert scores["f1"] == pytest.approx(f1_score(true, guess))


@pytest.mark.backend_independent  # the encoder trains on every backend in the classifier's tests
def test_a_tiny_tagger_learns_the_toy_pattern(tiny_tagger, tmp_path):
    run, bundle, summary = tiny_tagger
    report = summary["report"]["entities"]
    assert report["f1"] == 1.0 and report["support"] > 50, report
    assert summary["val_f1"] == 1.0
    # Raw text (uneven spaces, punctuation against a word): offsets into it as it was given.
    text = "did  Mary Ann call from Hong Kong?"
    tagged = json.loads(run_zoo("tag", bundle, text, "--json", check=True).stdout)
    found = [(e["label"], e["text"], e["start"]) for e in tagged["entities"]]
    assert found == [("person", "Mary Ann", 5), ("location", "Hong Kong", 24)]
    for entity in tagged["entities"]:
        assert text[entity["start"]:entity["end"]] == entity["text"] and 0.5 < entity["score"] <= 1
    evaluated = zoo_json("eval", run)
    assert evaluated["entities"]["f1"] == 1.0 and evaluated["sentences"] == summary["report"]["sentences"]


@pytest.mark.backend_independent
def test_fine_tuning_a_pretrained_encoder_keeps_its_tokenizer_and_encoder(tiny_classifier, tmp_path):
    import keras

    from zoo.bundle import load_model

    data = write_conll(tmp_path / "toy.conll", toy_sentences(100, seed=2))
    run = tmp_path / "tuned"
    result = run_zoo("train", "bert", "--task", "tag", "--init", tiny_classifier[1], "--data", data, "--out", run,
                     "--max-steps", "1", "--lr", "1e-9", "--batch-size", "8", check=True)
    assert "encoder weights carried over from" in result.stderr and "new 5-tag head" in result.stderr
    (tagger, tokenizer, _), (pretrained, pretrained_tokenizer, _) = load_model(run), load_model(tiny_classifier[1])
    assert tagger.num_tags == 5 and tagger.hidden_dim == pretrained.hidden_dim
    assert tokenizer.tokenizer.get_vocab() == pretrained_tokenizer.tokenizer.get_vocab()
    embeddings = [keras.ops.convert_to_numpy(m.encoder.token_embedding.embeddings) for m in (tagger, pretrained)]
    np.testing.assert_allclose(*embeddings, atol=1e-6)  # one step at lr 1e-9


@pytest.mark.backend_independent
def test_tag_over_a_server_matches_local_tagging_and_batches_concurrent_requests(tiny_tagger, tiny_classifier,
                                                                                tmp_path, backend):
    from zoo.bundle import load_runtime

    repository = tmp_path / "models"
    for name, source in (("tagger", tiny_tagger[1]), ("classifier", tiny_classifier[1])):
        shutil.copytree(source, repository / name / "1")
    local, _ = load_runtime(tiny_tagger[1])
    texts = [" ".join(tokens) for tokens, _ in toy_sentences(12, seed=5)]
    expected = local.tag(texts)
    server = ServerProcess(repository, "--max-batch-delay-ms", "50", backend=backend)
    try:
        with ZooClient(server.address, timeout=60) as client:
            info = client.model_info("tagger")
            labels = json.loads((tiny_tagger[0] / "config.json").read_text())["labels"]
            assert info.task == 3 and list(info.labels) == labels  # TASK_TOKEN_CLASSIFICATION, the tags
            response = client.tag("tagger", texts)
            assert len(response.results) == len(texts)
            for result, reference in zip(response.results, expected):
                assert [(e.label, e.text, e.start, e.end) for e in result.entities] == [
                    (e.label, e.text, e.start, e.end) for e in reference.entities]
                assert [e.score for e in result.entities] == pytest.approx([e.score for e in reference.entities])
            before = server.metric("zoo_batch_requests_count", model="tagger", method="Tag")
            barrier = threading.Barrier(16)

            def call(i):
                barrier.wait()
                return client.tag("tagger", [texts[i % len(texts)]]).results[0]

            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(call, range(16)))
            for i, answer in enumerate(answers):
                assert [e.text for e in answer.entities] == [e.text for e in expected[i % len(texts)].entities]
            passes = server.metric("zoo_batch_requests_count", model="tagger", method="Tag") - before
            assert passes < 16  # concurrent requests shared forward passes
            for call, code, words in ((lambda: client.tag("tagger", []), grpc.StatusCode.INVALID_ARGUMENT,
                                       "texts: give at least one text to tag"),
                                      (lambda: client.tag("tagger", ["ok", " "]), grpc.StatusCode.INVALID_ARGUMENT,
                                       "texts[1] is empty"),
                                      (lambda: client.tag("classifier", ["Paris"]),
                                       grpc.StatusCode.FAILED_PRECONDITION, "Tag needs a token-classification model"),
                                      (lambda: client.classify("tagger", ["Paris"]),
                                       grpc.StatusCode.FAILED_PRECONDITION, "Classify needs a classification model")):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == code and words in refused.value.details()
        printed = run_zoo("client", "tag", "tagger", texts[0], "--server", server.address, check=True).stdout
        assert printed.splitlines() == [f"0\t{e.label}\t{e.start}\t{e.end}\t{e.score:.4f}\t{e.text}"
                                        for e in expected[0].entities]
    finally:
        server.stop()
