"""Tokenizers: train on a training split, save next to the model, load anywhere (no TensorFlow).

Built on Hugging Face `tokenizers` (Rust): keras-hub's own tokenizers need tensorflow-text,
which the JAX/torch GPU install does not have. The saved `tokenizer.json` is the standard
Hugging Face file, readable by the ecosystem's tools. Marian's checkpoints bring SentencePiece
models, read with the `sentencepiece` library (sentencepiece_tokenizer.py).
"""

from zoo.tokenizers.loading import is_tokenizer_directory, load_tokenizer, same_tokenizer
from zoo.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from zoo.tokenizers.text_tokenizer import (END_TOKEN, TextTokenizer, byte_level_bpe, train_bpe, train_char,
                                            train_text_tokenizer)
from zoo.tokenizers.wordpiece import WordPieceTokenizer, train_wordpiece

__all__ = ["END_TOKEN", "SentencePieceTokenizer", "TextTokenizer", "WordPieceTokenizer", "byte_level_bpe",
           "is_tokenizer_directory", "load_tokenizer", "same_tokenizer", "train_bpe", "train_char", "train_text_tokenizer", "train_wordpiece"]
