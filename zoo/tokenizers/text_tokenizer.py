"""Character-level and byte-level BPE tokenizers for the language models.

Both round-trip any UTF-8 text exactly: byte-level BPE works on bytes by construction, and the
character tokenizer falls back to one token per UTF-8 byte for a character it never saw in
training (so a prompt in any script still encodes, and decodes back to itself).
"""

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zoo.errors import ZooError

END_TOKEN = "<|endoftext|>"
FILE_NAME = "tokenizer.json"


class TextTokenizer:
    """A trained or imported tokenizer: text <-> token ids. `kind` is "char" or "bpe". `end_token`
    marks document boundaries (a GPT's prompts start with it); an imported tokenizer names its own.
    `begin_token` (BART's <s>), when set, begins every encoded text and is dropped when decoding."""

    def __init__(self, tokenizer, kind, end_token=END_TOKEN, begin_token=None):
        self.tokenizer, self.kind, self.end_token, self.begin_token = tokenizer, kind, end_token, begin_token
        self.end_token_id = tokenizer.token_to_id(end_token)
        self.begin_token_id = None if begin_token is None else tokenizer.token_to_id(begin_token)
        self._begin = [] if begin_token is None else [self.begin_token_id]

    @property
    def vocabulary_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def special_tokens(self):
        """The special tokens by role, as a bundle's zoo.json lists them."""
        return {"end": self.end_token} if self.begin_token is None else {"end": self.end_token, "begin": self.begin_token}

    def token_to_id(self, token):
        """The id of `token`, or None when the vocabulary lacks it."""
        return self.tokenizer.token_to_id(token)

    def encode(self, text):
        return self._begin + self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts):
        return [self._begin + e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        ids = [i for i in ids if i != self.begin_token_id] if self._begin else list(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, directory):
        """Writes `tokenizer.json` into `directory` (the kind and end token go into its "zoo" entry)."""
        settings = {"kind": self.kind}
        if self.end_token != END_TOKEN:
            settings["end_token"] = self.end_token
        if self.begin_token is not None:
            settings["begin_token"] = self.begin_token
        write_tokenizer_file(self.tokenizer, directory, settings)

    @classmethod
    def load(cls, directory):
        return cls.from_settings(*read_tokenizer_file(directory))

    @classmethod
    def from_settings(cls, tokenizer, zoo):
        """From a tokenizer file's parts (`read_tokenizer_file`)."""
        return cls(tokenizer, zoo.get("kind", "bpe"), zoo.get("end_token", END_TOKEN), zoo.get("begin_token"))


def write_tokenizer_file(tokenizer, directory, zoo):
    """Writes the Hugging Face `tokenizer.json` of `tokenizer` into `directory`, with zoo's own
    settings (`zoo`, a dict holding at least "kind") under a "zoo" key that HF tools ignore."""
    data = json.loads(tokenizer.to_str())
    data["zoo"] = zoo
    Path(directory, FILE_NAME).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def read_tokenizer_file(directory):
    """(Hugging Face Tokenizer, zoo settings dict) from `directory/tokenizer.json`."""
    path = Path(directory, FILE_NAME)
    if not path.is_file():
        raise ZooError(f"no {FILE_NAME} in {directory}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        zoo = data.pop("zoo", {})
        return Tokenizer.from_str(json.dumps(data)), zoo if isinstance(zoo, dict) else {}
    except Exception as e:  # JSON, UTF-8, or the Rust parser's own (plain Exception) errors
        raise ZooError(f"{path}: not a tokenizer file ({e})") from None


def train_char(texts):
    """A character vocabulary from `texts` (an iterable of strings), plus 256 byte-fallback tokens."""
    chars = set()
    for text in texts:
        chars.update(text)
    vocab = {END_TOKEN: 0}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in sorted(chars):
        vocab.setdefault(char, len(vocab))
    # A BPE model with no merges is a character tokenizer; byte_fallback covers unseen characters.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([END_TOKEN])
    return TextTokenizer(tokenizer, "char")


def train_bpe(texts, vocabulary_size):
    """Byte-level BPE (GPT-2 style) with `vocabulary_size` tokens, END_TOKEN included.

    The result is smaller when the texts hold fewer distinct pairs than that; the caller reports it.
    """
    if vocabulary_size < 257 + 1:
        raise ZooError(f"--vocab-size {vocabulary_size} is too small for byte-level BPE: it needs at least 258 (256 bytes + the end token + one merge)")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary_size, special_tokens=[END_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return TextTokenizer(tokenizer, "bpe")


def train_text_tokenizer(texts, kind, vocabulary_size):
    """A "bpe" tokenizer of `vocabulary_size` tokens or a "char" one (`vocabulary_size` unused)
    trained on `texts`, as `zoo train gpt|lstm` and `zoo prepare` train theirs; a note on stderr
    when the texts support fewer BPE tokens than asked for."""
    if kind == "char":
        return train_char(texts)
    tokenizer = train_bpe(texts, vocabulary_size)
    if tokenizer.vocabulary_size < vocabulary_size:
        print(f"note: the training split supports only {tokenizer.vocabulary_size} BPE tokens "
              f"(asked for {vocabulary_size})", file=sys.stderr)
    return tokenizer


def byte_level_bpe(vocab, merges):
    """GPT-2's byte-level BPE (a Hugging Face Tokenizer) from its vocabulary (JSON) and merges
    files, as transformers' GPT2TokenizerFast converts them (GPT-2's and BART's checkpoints)."""
    hf_tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tokenizer.decoder = decoders.ByteLevel()
    return hf_tokenizer
