"""Loading whichever tokenizer a run or bundle holds: a SentencePiece model (Marian's), else the
kind recorded in its tokenizer.json."""

from pathlib import Path

from zoo.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer, is_sentencepiece_directory
from zoo.tokenizers.text_tokenizer import FILE_NAME, TextTokenizer, read_tokenizer_file
from zoo.tokenizers.wordpiece import WordPieceTokenizer


def load_tokenizer(directory):
    """The tokenizer saved in `directory`: a SentencePieceTokenizer, a WordPieceTokenizer or a
    TextTokenizer ("char"/"bpe")."""
    if is_sentencepiece_directory(directory):
        return SentencePieceTokenizer.load(directory)
    tokenizer, zoo = read_tokenizer_file(directory)
    if zoo.get("kind") == WordPieceTokenizer.kind:
        return WordPieceTokenizer(tokenizer, zoo.get("lowercase", True))
    return TextTokenizer.from_settings(tokenizer, zoo)


def is_tokenizer_directory(directory):
    """Whether `directory` holds a saved tokenizer (of any kind)."""
    return is_sentencepiece_directory(directory) or Path(directory, FILE_NAME).is_file()


def same_tokenizer(a, b):
    """Whether two tokenizers map ids to the same text, id by id: what a speculative-decoding draft
    (its proposals are ids) and a distillation teacher (its distribution is over ids) need."""
    if a.vocabulary_size != b.vocabulary_size or a.end_token_id != b.end_token_id:
        return False
    return all(a.decode([i]) == b.decode([i]) for i in range(a.vocabulary_size))
