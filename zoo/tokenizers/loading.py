"""Loading whichever tokenizer a run or bundle holds, by the kind recorded in its tokenizer.json."""

from zoo.tokenizers.text_tokenizer import TextTokenizer, read_tokenizer_file
from zoo.tokenizers.wordpiece import WordPieceTokenizer


def load_tokenizer(directory):
    """The tokenizer saved in `directory`: a WordPieceTokenizer or a TextTokenizer ("char"/"bpe")."""
    tokenizer, zoo = read_tokenizer_file(directory)
    if zoo.get("kind") == WordPieceTokenizer.kind:
        return WordPieceTokenizer(tokenizer, zoo.get("lowercase", True))
    return TextTokenizer.from_settings(tokenizer, zoo)
