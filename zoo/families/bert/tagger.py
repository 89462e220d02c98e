"""Named-entity recognition with a BERT tagger: tags on word pieces, entities on characters. Used
by `zoo train bert --task tag`, `zoo tag`, `zoo eval` and the server's Tag RPC alike.

Which pieces carry a tag: the first piece of each *word*, where a word is what BERT's
pre-tokenizer makes of the text (it splits at whitespace and around every punctuation mark, as
Hugging Face's token-classification pipeline reads words). A data set's token can hold several
such words ("@user", "U.S."): its first word takes the token's tag and the others continue it
(I-TYPE, or O), so training and tagging raw text label the same positions. Every other piece
(a word's "##" continuations, [CLS], [SEP], padding) has weight 0 in the loss.

A text longer than the model's context is cut (and flagged): its last words get no tag (O).
"""

import dataclasses

import numpy as np

from zoo.errors import ZooError
from zoo.families.bert.classifier import MIN_LENGTH_BUCKET, _bucket, _softmax
from zoo.families.bert.entities import entity_spans


@dataclasses.dataclass
class Entity:
    label: str  # the entity type, e.g. "person"
    text: str  # text[start:end] of the tagged text
    start: int  # offsets in characters (Python str indices) of the tagged text; end exclusive
    end: int
    score: float  # the mean probability of its words' tags


@dataclasses.dataclass
class TaggedText:
    entities: list
    truncated: bool


def _word_starts(encoding, prefix, token_starts):
    """Whether each piece of `encoding` starts a word: not a "##" continuation, or the first
    piece of one of the given tokens (`token_starts`: True where the token index changes)."""
    return [started or not piece.startswith(prefix) for piece, started in zip(encoding.tokens, token_starts)]


def _changes(word_ids):
    return [i == 0 or w != word_ids[i - 1] for i, w in enumerate(word_ids)]


def _assemble(tokenizer, ids, length):
    """[CLS] ids [SEP] into rows of `length`: (token_ids, padding_mask) int32 / bool arrays."""
    token_ids = np.full(length, tokenizer.pad_token_id, np.int32)
    row = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
    token_ids[:len(row)] = row
    mask = np.zeros(length, bool)
    mask[:len(row)] = True
    return token_ids, mask


def encode_tagged(tokenizer, sentences, tags, names, seq_len):
    """Training arrays for tagged sentences (lists of tokens; `tags`: int32 indices into `names`
    per sentence): ({"token_ids", "segment_ids", "padding_mask"}, labels, weights, first_piece,
    truncated). `labels`/`weights` are (rows, seq_len) with weight 1 at the first piece of each
    word; `first_piece` (rows, tokens) is the position of each token's first piece, -1 when cut off."""
    prefix = tokenizer.tokenizer.model.continuing_subword_prefix
    inside = {i: names.index("I-" + name[2:]) if name != "O" else i for i, name in enumerate(names)}
    encodings = tokenizer.tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True,
                                                 add_special_tokens=False)
    rows, budget = len(sentences), seq_len - 2
    token_ids = np.zeros((rows, seq_len), np.int32)
    padding_mask = np.zeros((rows, seq_len), bool)
    labels = np.zeros((rows, seq_len), np.int32)
    weights = np.zeros((rows, seq_len), np.float32)
    first_piece = np.full((rows, max(map(len, sentences))), -1, np.int32)
    truncated = np.zeros(rows, bool)
    for row, (encoding, sentence_tags) in enumerate(zip(encodings, tags)):
        words = encoding.word_ids[:budget]
        truncated[row] = len(encoding.ids) > budget
        token_ids[row], padding_mask[row] = _assemble(tokenizer, encoding.ids[:budget], seq_len)
        new_token = _changes(words)
        for piece, (word, starts) in enumerate(zip(words, _word_starts(encoding, prefix, new_token))):
            if not starts:
                continue
            tag = int(sentence_tags[word])
            labels[row, piece + 1] = tag if new_token[piece] else inside[tag]
            weights[row, piece + 1] = 1.0
            if new_token[piece]:
                first_piece[row, word] = piece + 1
    inputs = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}
    return inputs, labels, weights, first_piece, truncated


def token_tags(predicted, first_piece, lengths, names):
    """Each sentence's predicted tag names per token, from tag indices per piece (rows, length):
    a token's is its first piece's; a token cut off is O."""
    return [[names[predicted[row, p]] if p >= 0 else "O" for p in first_piece[row, :n]]
            for row, n in enumerate(lengths)]


class Tagger:
    """A BERT tagger with its tokenizer and tag names: texts -> entities with character offsets."""

    def __init__(self, model, tokenizer, names, max_batch_size=64):
        if len(names) != model.num_tags:
            raise ZooError(f"the model has {model.num_tags} tags but {len(names)} tag names were given")
        self.model, self.tokenizer, self.names = model, tokenizer, list(names)
        self.max_length, self.max_batch_size = model.max_length, max_batch_size
        self.prefix = tokenizer.tokenizer.model.continuing_subword_prefix

    def tag(self, texts):
        """A TaggedText per text."""
        texts = list(texts)
        results = []
        for start in range(0, len(texts), self.max_batch_size):
            results += self._tag_batch(texts[start:start + self.max_batch_size])
        return results

    def _tag_batch(self, texts):
        encodings = self.tokenizer.tokenizer.encode_batch(texts, add_special_tokens=False)
        budget = self.max_length - 2
        longest = max(min(len(e.ids), budget) for e in encodings) + 2
        length, batch = _bucket(longest, MIN_LENGTH_BUCKET, self.max_length), _bucket(len(texts))
        token_ids = np.zeros((batch, length), np.int32)
        padding_mask = np.zeros((batch, length), bool)
        token_ids[:, 0], padding_mask[:, 0] = self.tokenizer.cls_token_id, True  # filler rows: a lone [CLS]
        for row, encoding in enumerate(encodings):
            token_ids[row], padding_mask[row] = _assemble(self.tokenizer, encoding.ids[:budget], length)
        inputs = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}
        probabilities = _softmax(np.asarray(self.model.predict_on_batch(inputs), dtype=np.float64))
        return [self._entities(text, encoding, probabilities[row], budget)
                for row, (text, encoding) in enumerate(zip(texts, encodings))]

    def _entities(self, text, encoding, probabilities, budget):
        """The entities of one text from its pieces' tag probabilities (length, tags)."""
        kept = min(len(encoding.ids), budget)
        starts = _word_starts(encoding, self.prefix, _changes(encoding.word_ids))[:kept]
        words = [piece for piece in range(kept) if starts[piece]]  # each word's first piece
        ends = [*words[1:], kept]  # each word's pieces: words[i] .. ends[i] - 1
        chosen = [int(probabilities[piece + 1].argmax()) for piece in words]
        entities = []
        for label, first, last in entity_spans([self.names[i] for i in chosen]):
            start, end = encoding.offsets[words[first]][0], encoding.offsets[ends[last - 1] - 1][1]
            score = float(np.mean([probabilities[words[w] + 1, chosen[w]] for w in range(first, last)]))
            entities.append(Entity(label, text[start:end], start, end, score))
        return TaggedText(entities, len(encoding.ids) > budget)
