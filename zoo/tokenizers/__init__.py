"""Tokenizers: train on a training split, save next to the model, load anywhere (no TensorFlow).

Built on Hugging Face `tokenizers` (Rust): keras-hub's own tokenizers need tensorflow-text,
which the JAX/torch GPU install does not have. The saved `tokenizer.json` is the standard
Hugging Face file, readable by the ecosystem's tools.
"""

from zoo.tokenizers.loading import load_tokenizer
from zoo.tokenizers.text_tokenizer import END_TOKEN, TextTokenizer, train_bpe, train_char
from zoo.tokenizers.wordpiece import WordPieceTokenizer, train_wordpiece

__all__ = ["END_TOKEN", "TextTokenizer", "WordPieceTokenizer", "load_tokenizer", "train_bpe", "train_char",
           "train_wordpiece"]
