"""WordPiece tokenizer for the BERT-style encoder: [CLS] text [SEP] (pair: [CLS] a [SEP] b [SEP]).

Built on Hugging Face `tokenizers` like the GPT tokenizers: keras-hub's WordPieceTokenizer needs
tensorflow-text, which the JAX/torch GPU install does not have. The saved `tokenizer.json` is a
complete BERT tokenizer (normalizer, pre-tokenizer, [CLS]/[SEP] template, decoder), so Hugging
Face tools read it as is.
"""

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from zoo.errors import ZooError
from zoo.tokenizers.text_tokenizer import FILE_NAME, read_tokenizer_file, write_tokenizer_file

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # trained in this order: ids 0 to 4


class WordPieceTokenizer:
    """A trained WordPiece tokenizer: text (or a text pair) <-> token ids and segment ids."""

    kind = "wordpiece"

    def __init__(self, tokenizer, lowercase):
        self.tokenizer, self.lowercase = tokenizer, lowercase
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        if None in ids:
            raise ZooError(f"not a WordPiece tokenizer for BERT: it lacks {SPECIAL_TOKENS[ids.index(None)]}")
        self.pad_token_id, self.unk_token_id, self.cls_token_id, self.sep_token_id, self.mask_token_id = ids
        self.special_ids = ids

    @property
    def vocabulary_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def special_tokens(self):
        """The special tokens by role, as a bundle's zoo.json lists them."""
        return {"end": SEP, "cls": CLS, "sep": SEP, "pad": PAD, "mask": MASK, "unknown": UNK}

    def encode_ids_batch(self, texts):
        """Each text's token ids without [CLS]/[SEP]: a list of lists."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _assemble(self, a, b, max_length):
        """[CLS] a [SEP] (b [SEP]) as (token_ids, segment_ids, truncated), cut to max_length the way
        Hugging Face's "longest_first" does: tokens come off the end of the longer part."""
        truncated = False
        if max_length is not None:
            budget = max_length - (2 if b is None else 3)
            if budget < 1:
                raise ZooError(f"max_length {max_length} leaves no room for text between [CLS] and [SEP]")
            if b is None:
                truncated = len(a) > budget
                a = a[:budget]
            elif len(a) + len(b) > budget:
                keep_b = min(len(b), max(budget // 2, budget - len(a)))
                a, b, truncated = a[:budget - keep_b], b[:keep_b], True
        ids = [self.cls_token_id, *a, self.sep_token_id]
        segments = [0] * len(ids)
        if b is not None:
            ids += [*b, self.sep_token_id]
            segments += [1] * (len(b) + 1)
        return ids, segments, truncated

    def token_to_id(self, token):
        """The id of `token`, or None when the vocabulary lacks it."""
        return self.tokenizer.token_to_id(token)

    def encode(self, text, pair=None, max_length=None):
        """(token_ids, segment_ids, truncated) for `text` or the pair (`text`, `pair`).

        With `max_length`, the result has at most that many tokens, [CLS] and [SEP] kept;
        `truncated` says whether text was cut off.
        """
        a = self.tokenizer.encode(text, add_special_tokens=False).ids
        b = None if pair is None else self.tokenizer.encode(pair, add_special_tokens=False).ids
        return self._assemble(a, b, max_length)

    def encode_batch(self, texts, pairs=None, max_length=None):
        """Padded arrays for many texts (or pairs): ({"token_ids", "segment_ids", "padding_mask"}, truncated).

        The arrays are (rows, max_length) (without max_length: as long as the longest row), int32
        with a bool padding mask; `truncated` is a bool array, one flag per row.
        """
        texts = list(texts)
        a_ids = self.encode_ids_batch(texts)
        b_ids = [None] * len(texts) if pairs is None else self.encode_ids_batch(pairs)
        if len(b_ids) != len(texts):
            raise ZooError(f"{len(texts)} texts but {len(b_ids)} pairs")
        rows = [self._assemble(a, b, max_length) for a, b in zip(a_ids, b_ids)]
        length = max_length or max((len(ids) for ids, _, _ in rows), default=2)
        token_ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int32)
        segment_ids = np.zeros((len(rows), length), dtype=np.int32)
        padding_mask = np.zeros((len(rows), length), dtype=bool)
        for i, (ids, segments, _) in enumerate(rows):
            token_ids[i, :len(ids)] = ids
            segment_ids[i, :len(ids)] = segments
            padding_mask[i, :len(ids)] = True
        truncated = np.array([t for _, _, t in rows], dtype=bool)
        return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}, truncated

    def decode(self, ids, skip_special_tokens=True):
        """Text from token ids; the special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) are left out unless asked for."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, directory):
        """Writes `tokenizer.json` into `directory` (kind and lower-casing go into its "zoo" entry)."""
        write_tokenizer_file(self.tokenizer, directory, {"kind": self.kind, "lowercase": self.lowercase})

    @classmethod
    def load(cls, directory):
        tokenizer, zoo = read_tokenizer_file(directory)
        if zoo.get("kind") != cls.kind:
            raise ZooError(f"{Path(directory, FILE_NAME)}: a {zoo.get('kind', 'bpe')!r} tokenizer, not a WordPiece one")
        return cls(tokenizer, zoo.get("lowercase", True))


def train_wordpiece(texts, vocabulary_size, lowercase=True):
    """A WordPiece vocabulary of `vocabulary_size` tokens (the 5 special tokens included) from `texts`.

    Every character of the texts gets a token, so a small `vocabulary_size` on text with many
    distinct characters gives a larger vocabulary than asked for; the caller reports it.
    `lowercase` also strips accents, as BERT's uncased models do.
    """
    if vocabulary_size < len(SPECIAL_TOKENS) + 1:
        raise ZooError(f"--vocab-size {vocabulary_size} is too small for WordPiece: it needs at least "
                       f"{len(SPECIAL_TOKENS) + 1} (the special tokens {' '.join(SPECIAL_TOKENS)} and one more)")
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocabulary_size, special_tokens=SPECIAL_TOKENS,
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    _add_bert_template(tokenizer)
    return WordPieceTokenizer(tokenizer, lowercase)


def _add_bert_template(tokenizer):
    """[CLS] a [SEP] (pair: [CLS] a [SEP] b [SEP], b's segment 1), as BERT's tokenizers add them."""
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, tokenizer.token_to_id(CLS)), (SEP, tokenizer.token_to_id(SEP))])


def wordpiece_from_vocabulary(vocabulary, lowercase, strip_accents, split_on_cjk=True, suffix="##"):
    """BERT's WordPiece over a pretrained vocabulary (a token -> id dict, or a vocab.txt path), built
    as transformers' BertTokenizerFast converts one: its normalizer, pre-tokenizer and template.
    `strip_accents` None strips them when lower-casing, as BERT's own setting does."""
    if not isinstance(vocabulary, dict):
        vocabulary = models.WordPiece.read_file(str(vocabulary))
    tokenizer = Tokenizer(models.WordPiece(vocabulary, unk_token=UNK, continuing_subword_prefix=suffix))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=split_on_cjk,
                                                      strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=suffix)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)  # already in the vocabulary: marked special, as transformers does
    _add_bert_template(tokenizer)
    return WordPieceTokenizer(tokenizer, lowercase)
