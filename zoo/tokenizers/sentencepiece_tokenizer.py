"""Marian's tokenizer: a SentencePiece model cuts text into pieces, and a separate vocabulary
(Marian's vocab.json) gives each piece its id, as transformers' MarianTokenizer does.

The `sentencepiece` library does the cutting and the joining back; the piece -> id step is
Marian's own (its ids are not the SentencePiece model's), so it is written here: a piece the
vocabulary lacks is <unk>, and a leading language code such as ">>fr<<" (a multilingual model's
target language) is one token, as MarianTokenizer.remove_language_code has it.
"""

import json
from pathlib import Path

from zoo.errors import ZooError

MODEL_FILE = "sentencepiece.model"
SETTINGS_FILE = "sentencepiece.json"


class SentencePieceTokenizer:
    """text <-> ids through a SentencePiece model and a piece vocabulary (Marian's)."""

    kind = "sentencepiece"

    def __init__(self, model_proto, vocab, end_token="</s>", unk_token="<unk>", pad_token="<pad>"):
        import sentencepiece

        self.model_proto, self.vocab = model_proto, dict(vocab)
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        missing = [token for token in (end_token, unk_token, pad_token) if token not in self.vocab]
        if missing:
            raise ZooError(f"the vocabulary has no {missing[0]!r} token")
        self.end_token, self.unk_token, self.pad_token = end_token, unk_token, pad_token
        self.end_token_id, self.unk_token_id = self.vocab[end_token], self.vocab[unk_token]
        self.pieces = {i: piece for piece, i in self.vocab.items()}
        # Decoding leaves these out, as transformers' decode(skip_special_tokens=True) does.
        self.skipped = {self.end_token_id, self.unk_token_id, self.vocab[pad_token]}

    @property
    def vocabulary_size(self):
        return max(self.vocab.values()) + 1

    def special_tokens(self):
        return {"end": self.end_token, "unknown": self.unk_token, "pad": self.pad_token}

    def token_to_id(self, token):
        """The id of `token`, or None when the vocabulary lacks it."""
        return self.vocab.get(token)

    def encode(self, text):
        code = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:  # a language code, as Marian has it
            code, text = [text[:end + 2]], text[end + 2:]
        pieces = code + self.processor.encode(text, out_type=str)
        return [self.vocab.get(piece, self.unk_token_id) for piece in pieces]

    def encode_batch(self, texts):
        return [self.encode(text) for text in texts]

    def decode(self, ids):
        pieces = [self.pieces.get(int(i), self.unk_token) for i in ids if int(i) not in self.skipped]
        return self.processor.decode_pieces(pieces).replace("\u2581", " ").strip()

    def save(self, directory):
        """Writes the SentencePiece model and the vocabulary (with the special tokens) into `directory`."""
        Path(directory, MODEL_FILE).write_bytes(self.model_proto)
        settings = {"kind": self.kind, "end_token": self.end_token, "unk_token": self.unk_token,
                    "pad_token": self.pad_token, "vocab": self.vocab}
        Path(directory, SETTINGS_FILE).write_text(json.dumps(settings, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory):
        try:
            settings = json.loads(Path(directory, SETTINGS_FILE).read_text(encoding="utf-8"))
            return cls(Path(directory, MODEL_FILE).read_bytes(), settings["vocab"], settings["end_token"],
                       settings["unk_token"], settings["pad_token"])
        except (OSError, ValueError, KeyError) as e:
            raise ZooError(f"{directory}: not a SentencePiece tokenizer ({e})") from None


def is_sentencepiece_directory(directory):
    return Path(directory, MODEL_FILE).is_file()
