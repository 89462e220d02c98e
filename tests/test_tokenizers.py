"""Tokenizers round-trip any UTF-8 text and have the vocabulary size asked for."""

import pytest

from zoo.tokenizers import END_TOKEN, TextTokenizer, train_bpe, train_char

pytestmark = pytest.mark.backend_independent

TEXTS = {
    "ascii": "Hello, world!\n\tTabs,  double  spaces and trailing space ",
    "accented": "Café, naïve façade, Ærøskøbing, señor, Überstraße",
    "cjk": "日本語のテキスト。中文字符，한국어 문장",
    "emoji": "emoji 🎉🚀 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "special": f"before {END_TOKEN} after",
}


@pytest.fixture(scope="module")
def corpus_text(small_corpus):
    return small_corpus.read_text(encoding="utf-8")


@pytest.fixture(scope="module", params=["char", "bpe"])
def tokenizer(request, corpus_text):
    return train_char([corpus_text]) if request.param == "char" else train_bpe([corpus_text], 1000)


@pytest.mark.parametrize("name", TEXTS)
def test_round_trip(tokenizer, name):
    ids = tokenizer.encode(TEXTS[name])
    assert tokenizer.decode(ids) == TEXTS[name]


def test_unseen_characters_fall_back_to_bytes(corpus_text):
    tokenizer = train_char([corpus_text])  # the corpus is ASCII
    ids = tokenizer.encode("é")
    assert len(ids) == 2  # two UTF-8 bytes
    assert tokenizer.decode(ids) == "é"


@pytest.mark.parametrize("size", [300, 1000, 4000])
def test_bpe_vocabulary_size_is_as_asked(corpus_text, size):
    assert train_bpe([corpus_text], size).vocabulary_size == size


def test_bpe_compresses_better_than_characters(corpus_text):
    bpe, chars = train_bpe([corpus_text], 1000), train_char([corpus_text])
    assert len(bpe.encode(corpus_text[:5000])) < 0.5 * len(chars.encode(corpus_text[:5000]))


def test_save_and_load(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.kind == tokenizer.kind
    assert loaded.vocabulary_size == tokenizer.vocabulary_size
    assert loaded.end_token_id == tokenizer.end_token_id
    for text in TEXTS.values():
        assert loaded.encode(text) == tokenizer.encode(text)
