"""Extractive question answering with a BERT span model: used by `zoo train bert --task qa`,
`zoo answer`, `zoo eval` and the server's Answer RPC alike.

A question and its context become one or more windows `[CLS] question [SEP] context piece [SEP]`
(segments 0 and 1): a context longer than the model's length is cut into pieces that overlap by
`stride` word pieces, as BERT's SQuAD recipe does, so every answer lies whole in some window. The
model scores every position as the answer's first and last piece; the answer is the best span
of context pieces (end not before start, at most `max_answer_tokens` long) over all windows, by
the sum of its start and end logits, mapped back to characters of the context through the
tokenizer's offsets.
"""

import dataclasses

import numpy as np

from zoo.errors import ZooError
from zoo.families.bert.classifier import MIN_LENGTH_BUCKET, _bucket

MAX_QUESTION_TOKENS = 64  # longer questions are cut (BERT's SQuAD setting)
MAX_ANSWER_TOKENS = 30
TOP_CANDIDATES = 20  # starts and ends considered per window


@dataclasses.dataclass
class Answer:
    text: str  # context[start:end]
    start: int  # offsets in characters (Python str indices) of the context; end exclusive
    end: int
    score: float  # the model's probability of this span in its window


@dataclasses.dataclass
class Windows:
    """The windows of some (question, context) pairs: arrays for the model, and for each window
    its pair (`owner`) and the context character span of each of its positions (`spans`, (-1, -1)
    where the position is not context)."""

    inputs: dict  # {"token_ids", "segment_ids", "padding_mask"} (windows, length)
    owner: np.ndarray  # (windows,)
    spans: np.ndarray  # (windows, length, 2)


def default_stride(length, max_question_tokens=MAX_QUESTION_TOKENS):
    """The overlap between windows: 128 pieces (BERT's), or half a window's context when less."""
    return max(1, min(128, (length - min(max_question_tokens, length // 2) - 3) // 2))


def make_windows(tokenizer, pairs, length, stride=None, answers=None):
    """The Windows of [(question, context)] at `length` pieces (padded to a bucketed length). With
    `answers` ([(text, start)] per pair), also (windows, 2) start/end positions of each answer in
    each window, 0 (the [CLS] position) where it does not lie whole in the window."""
    if not pairs:
        raise ZooError("no questions to answer")
    questions = tokenizer.tokenizer.encode_batch([q for q, _ in pairs], add_special_tokens=False)
    contexts = tokenizer.tokenizer.encode_batch([c for _, c in pairs], add_special_tokens=False)
    rows, owner, spans, positions = [], [], [], []
    for i, (question, context) in enumerate(zip(questions, contexts)):
        q_ids = question.ids[:min(MAX_QUESTION_TOKENS, length // 2)]
        budget = length - len(q_ids) - 3
        step = budget - (stride or default_stride(length))
        if step < 1:
            raise ZooError(f"--doc-stride {stride} leaves no new context per window of {length} pieces")
        first = len(q_ids) + 2  # the position of the window's first context piece
        span = _answer_pieces(context, answers[i]) if answers is not None else None
        for start in range(0, max(len(context.ids) - budget, 0) + step, step):
            piece = context.ids[start:start + budget]
            rows.append(([tokenizer.cls_token_id, *q_ids, tokenizer.sep_token_id, *piece, tokenizer.sep_token_id],
                         first))
            owner.append(i)
            spans.append(context.offsets[start:start + len(piece)])
            inside = span is not None and start <= span[0] and span[1] < start + len(piece)
            positions.append((span[0] - start + first, span[1] - start + first) if inside else (0, 0))
            if start + budget >= len(context.ids):
                break
    width = _bucket(max(len(ids) for ids, _ in rows), MIN_LENGTH_BUCKET, length)
    token_ids = np.full((len(rows), width), tokenizer.pad_token_id, np.int32)
    segment_ids = np.zeros((len(rows), width), np.int32)
    padding_mask = np.zeros((len(rows), width), bool)
    offsets = np.full((len(rows), width, 2), -1, np.int64)
    for r, ((ids, first), window_spans) in enumerate(zip(rows, spans)):
        token_ids[r, :len(ids)], padding_mask[r, :len(ids)] = ids, True
        segment_ids[r, first:len(ids)] = 1
        if window_spans:
            offsets[r, first:first + len(window_spans)] = window_spans
    windows = Windows({"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask},
                      np.array(owner), offsets)
    return (windows, np.array(positions, np.int32)) if answers is not None else windows


def _answer_pieces(context, answer):
    """(first, last) context piece of the answer (text, character start), or None if no piece
    covers it (an answer of characters the tokenizer drops)."""
    text, start = answer
    end = start + len(text)
    covered = [j for j, (a, b) in enumerate(context.offsets) if a < end and b > start]
    return (covered[0], covered[-1]) if covered else None


def _log_softmax(logits):
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def best_answers(windows, logits, contexts, max_answer_tokens=MAX_ANSWER_TOKENS):
    """The best Answer of each pair from the model's logits (windows, 2, length)."""
    logits = np.where(windows.inputs["padding_mask"][:, None, :], np.asarray(logits, np.float64), -1e9)
    log_probs = _log_softmax(logits)
    best = [None] * len(contexts)
    for w in range(len(windows.owner)):
        pair, spans = int(windows.owner[w]), windows.spans[w]
        context_positions = np.flatnonzero(spans[:, 0] >= 0)
        ranked = context_positions[np.argsort(-logits[w, 0, context_positions])][:TOP_CANDIDATES]
        ends = context_positions[np.argsort(-logits[w, 1, context_positions])][:TOP_CANDIDATES]
        for s in ranked:
            for e in ends:
                if e < s or e - s + 1 > max_answer_tokens:
                    continue
                score = logits[w, 0, s] + logits[w, 1, e]
                if best[pair] is None or score > best[pair][0]:
                    best[pair] = (score, w, s, e)
    answers = []
    for pair, found in enumerate(best):
        if found is None:  # an empty context
            answers.append(Answer("", 0, 0, 0.0))
            continue
        _, w, s, e = found
        start, end = int(windows.spans[w, s, 0]), int(windows.spans[w, e, 1])
        probability = float(np.exp(log_probs[w, 0, s] + log_probs[w, 1, e]))
        answers.append(Answer(contexts[pair][start:end], start, end, probability))
    return answers


class Answerer:
    """A BERT span model with its tokenizer: (question, context) pairs -> Answers."""

    def __init__(self, model, tokenizer, max_batch_size=32):
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.length = model.max_length

    def answer(self, pairs):
        """An Answer per (question, context) pair."""
        pairs = [(q, c) for q, c in pairs]
        windows = make_windows(self.tokenizer, pairs, self.length)
        rows = len(windows.owner)
        logits = []
        for start in range(0, rows, self.max_batch_size):
            batch = {k: v[start:start + self.max_batch_size] for k, v in windows.inputs.items()}
            count = len(batch["token_ids"])
            padded = {k: np.concatenate([v, np.zeros((_bucket(count) - count, *v.shape[1:]), v.dtype)])
                      for k, v in batch.items()}
            padded["token_ids"][count:, 0], padded["padding_mask"][count:, 0] = self.tokenizer.cls_token_id, True
            logits.append(np.asarray(self.model.predict_on_batch(padded))[:count])
        return best_answers(windows, np.concatenate(logits), [c for _, c in pairs])
