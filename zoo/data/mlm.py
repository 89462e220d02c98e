"""Batches for the BERT-style encoder: masked-LM pretraining and classification fine-tuning.

Masking is numpy rather than keras-hub's MaskedLMMaskGenerator, which needs tensorflow-text (not
in the JAX/torch GPU install). It follows BERT: `mask_rate` (15%) of each row's ordinary tokens
are chosen (at least one; [CLS], [SEP], [PAD] and the other special tokens never), and of those
80% become [MASK], 10% a random ordinary token and 10% stay as they are; the model predicts the
original token at every chosen position.

Masks are dynamic (RoBERTa): drawn afresh for every batch from an RNG seeded with (seed, step),
so each epoch masks each sequence differently while batch `step` stays a pure function of the
step number, and a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

import math

import numpy as np

from zoo.errors import DataError


def mask_tokens(token_ids, padding_mask, rng, vocabulary_size, special_ids, mask_token_id, mask_rate=0.15,
                max_predictions=None, segment_ids=None):
    """Masks a batch of sequences: returns (inputs, targets, sample_weight).

    `inputs` has "token_ids" (masked), "segment_ids" (zeros if not given), "padding_mask" and
    "mask_positions" (batch, max_predictions), the chosen positions in order; `targets` are the
    original tokens there and `sample_weight` is 1 for a chosen position, 0 for an unused slot
    (whose position and target are 0). `max_predictions` defaults to ceil(length * mask_rate),
    enough for every row: a row chooses round(its ordinary tokens * mask_rate), capped at it.
    """
    token_ids, padding_mask = np.asarray(token_ids, np.int32), np.asarray(padding_mask, bool)
    batch, length = token_ids.shape
    if max_predictions is None:
        max_predictions = max(1, math.ceil(length * mask_rate))
    candidates = padding_mask & ~np.isin(token_ids, special_ids)
    available = candidates.sum(axis=1)
    count = np.minimum(np.floor(available * mask_rate + 0.5).astype(int), max_predictions)
    count = np.where(available > 0, np.maximum(count, 1), 0)

    # Candidates in a random order first (scores below 1), everything else after them.
    order = np.argsort(rng.random((batch, length)) + ~candidates, axis=1)[:, :max_predictions]
    if order.shape[1] < max_predictions:
        order = np.pad(order, ((0, 0), (0, max_predictions - order.shape[1])), constant_values=length)
    used = np.arange(max_predictions)[None, :] < count[:, None]
    positions = np.sort(np.where(used, order, length), axis=1)  # chosen positions in order, unused (= length) last
    used = positions < length
    positions = np.where(used, positions, 0).astype(np.int32)
    targets = np.where(used, np.take_along_axis(token_ids, positions, axis=1), 0).astype(np.int32)

    ordinary = np.setdiff1d(np.arange(vocabulary_size), special_ids)
    draw = rng.random((batch, max_predictions))
    replacement = np.where(draw < 0.8, mask_token_id, targets)  # 80% [MASK], 10% kept (0.9 and above)
    random_ids = ordinary[rng.integers(len(ordinary), size=(batch, max_predictions))]
    replacement = np.where((draw >= 0.8) & (draw < 0.9), random_ids, replacement)  # 10% a random token
    masked = token_ids.copy()
    rows, slots = np.nonzero(used)
    masked[rows, positions[rows, slots]] = replacement[rows, slots]

    inputs = {"token_ids": masked,
              "segment_ids": np.zeros_like(token_ids) if segment_ids is None else np.asarray(segment_ids, np.int32),
              "padding_mask": padding_mask, "mask_positions": positions}
    return inputs, targets, used.astype(np.float32)


class _EpochBatches:
    """Rows drawn without repetition within an epoch, in an order fixed by (seed, epoch)."""

    def __init__(self, arrays, batch_size, seed, split):
        self.rows = len(arrays["token_ids"])
        if self.rows == 0:
            raise DataError(f"the {split} split has no sequences")
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.seq_len = arrays["token_ids"].shape[1]
        self.tokens_per_batch = batch_size * self.seq_len
        self._epoch, self._order = None, None

    def _indices(self, step):
        indices = []
        for i in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, position = divmod(i, self.rows)
            if epoch != self._epoch:
                self._order = np.random.default_rng([self.seed, 0, epoch]).permutation(self.rows)
                self._epoch = epoch
            indices.append(self._order[position])
        return np.array(indices)

    def _take(self, indices, keys=("token_ids", "segment_ids", "padding_mask")):
        return {key: self.arrays[key][indices] for key in keys}

    def epoch_of(self, step):
        return step * self.batch_size / self.rows


class MLMBatches(_EpochBatches):
    """Masked-LM batches, a pure function of the step: `batch(step)` -> (inputs, targets, sample_weight).

    `sequences` is {"token_ids", "segment_ids", "padding_mask"} as `mlm_sequences` or a
    tokenizer's `encode_batch` makes them.
    """

    def __init__(self, sequences, batch_size, seed, vocabulary_size, special_ids, mask_token_id, mask_rate=0.15,
                 max_predictions=None, split="training"):
        super().__init__(sequences, batch_size, seed, split)
        self.masking = dict(vocabulary_size=vocabulary_size, special_ids=list(special_ids),
                            mask_token_id=mask_token_id, mask_rate=mask_rate,
                            max_predictions=max_predictions or max(1, math.ceil(self.seq_len * mask_rate)))
        self.max_predictions = self.masking["max_predictions"]

    def _masked(self, indices, rng):
        rows = self._take(indices)
        return mask_tokens(rows["token_ids"], rows["padding_mask"], rng, segment_ids=rows["segment_ids"],
                           **self.masking)

    def batch(self, step):
        return self._masked(self._indices(step), np.random.default_rng([self.seed, 1, step]))

    def fixed(self, max_rows):
        """Up to `max_rows` rows spread evenly over the data, masked once with a fixed RNG: the same
        (inputs, targets, sample_weight) every time, for validation."""
        indices = np.unique(np.linspace(0, self.rows - 1, num=min(self.rows, max_rows)).astype(int))
        return self._masked(indices, np.random.default_rng([self.seed, 2]))


class ClassificationBatches(_EpochBatches):
    """Classification batches, a pure function of the step: `batch(step)` -> (inputs, label_ids), or
    (inputs, label_ids, sample_weight) with `class_weights` (one weight per class)."""

    def __init__(self, encoded, label_ids, batch_size, seed, class_weights=None, split="training"):
        super().__init__(encoded, batch_size, seed, split)
        self.label_ids = np.asarray(label_ids, np.int32)
        if len(self.label_ids) != self.rows:
            raise ValueError(f"{self.rows} rows but {len(self.label_ids)} labels")
        self.class_weights = None if class_weights is None else np.asarray(class_weights, np.float32)

    def batch(self, step):
        indices = self._indices(step)
        labels = self.label_ids[indices]
        if self.class_weights is None:
            return self._take(indices), labels
        return self._take(indices), labels, self.class_weights[labels]


def class_weights_balanced(label_ids, num_classes):
    """Per-class weights rows / (num_classes * rows of the class), as scikit-learn's "balanced":
    every class weighs the same in the loss in all. A class without rows gets 0."""
    counts = np.bincount(np.asarray(label_ids), minlength=num_classes)
    with np.errstate(divide="ignore"):
        weights = np.where(counts > 0, len(label_ids) / (num_classes * counts), 0.0)
    return weights.astype(np.float32)


def mlm_sequences(tokenizer, documents, seq_len):
    """Documents cut into [CLS] ... [SEP] sequences of up to `seq_len` tokens, for masked-LM training.

    Each document's non-blank lines are packed in order, as many whole lines per sequence as fit; a
    line longer than a sequence is cut into pieces. Sequences never span two documents. Returns
    {"token_ids", "segment_ids", "padding_mask"} arrays (sequences, seq_len).
    """
    if seq_len < 3:
        raise DataError(f"--seq-len {seq_len} is too short: a sequence needs [CLS], [SEP] and a token")
    lines, owners = [], []
    for number, document in enumerate(documents):
        for line in document.splitlines():
            if line.strip():
                lines.append(line)
                owners.append(number)
    budget = seq_len - 2
    packed, current, current_owner = [], [], None
    for ids, owner in zip(tokenizer.encode_ids_batch(lines), owners):
        if current and (owner != current_owner or len(current) + len(ids) > budget):
            packed.append(current)
            current = []
        current_owner = owner
        while len(ids) > budget:
            packed.append(ids[:budget])
            ids = ids[budget:]
        current = current + ids
    if current:
        packed.append(current)
    if not packed:
        raise DataError("no text to make masked-LM sequences from")
    token_ids = np.full((len(packed), seq_len), tokenizer.pad_token_id, dtype=np.int32)
    padding_mask = np.zeros((len(packed), seq_len), dtype=bool)
    for i, ids in enumerate(packed):
        token_ids[i, :len(ids) + 2] = [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]
        padding_mask[i, :len(ids) + 2] = True
    return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}


class RowBatches(_EpochBatches):
    """Batches of encoded rows with per-row targets, a pure function of the step: `batch(step)` ->
    (inputs, *targets), each target array indexed by row: a tagger's labels and weights per word
    piece (zoo.families.bert.tagger), a span model's start and end positions (answerer)."""

    def __init__(self, encoded, targets, batch_size, seed, split="training"):
        super().__init__(encoded, batch_size, seed, split)
        self.targets = targets

    def batch(self, step):
        indices = self._indices(step)
        return (self._take(indices), *(target[indices] for target in self.targets))
