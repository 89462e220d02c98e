"""Loading whichever tokenizer a run or bundle holds, by the kind recorded in its tokenizer.json."""

import json
from pathlib import Path

from zoo.errors import ZooError
from zoo.tokenizers.text_tokenizer import FILE_NAME, TextTokenizer
from zoo.tokenizers.wordpiece import WordPieceTokenizer


def load_tokenizer(directory):
    """The tokenizer saved in `directory`: a WordPieceTokenizer or a TextTokenizer ("char"/"bpe")."""
    path = Path(directory, FILE_NAME)
    if not path.is_file():
        raise ZooError(f"no {FILE_NAME} in {directory}")
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("zoo", {}).get("kind")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ZooError(f"{path}: not a tokenizer file ({e})") from None
    if kind == WordPieceTokenizer.kind:
        return WordPieceTokenizer.load(directory)
    return TextTokenizer.load(directory)
