"""Classification and sentence embeddings from a BERT classifier: used by `zoo classify`,
`zoo eval` and the server's Classify/Embed alike.

Texts are tokenized, cut to the model's context (and flagged when cut), and run in batches
padded to bucketed shapes (powers of two in rows and length), so that the compiled predict step
sees a handful of shapes instead of one per request.
"""

import dataclasses

import numpy as np

from zoo.errors import ZooError

MIN_LENGTH_BUCKET = 16


@dataclasses.dataclass
class Classification:
    label: str
    probabilities: np.ndarray  # one per class, in `Classifier.labels` order
    truncated: bool

    @property
    def probability(self):
        return float(self.probabilities.max())


def _bucket(n, smallest=1, largest=None):
    size = max(smallest, 1 << max(n - 1, 0).bit_length())
    return min(size, largest) if largest else size


def _softmax(logits):
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class Classifier:
    """A BERT classifier with its tokenizer and class names."""

    def __init__(self, model, tokenizer, labels, max_batch_size=64):
        if len(labels) != model.num_classes:
            raise ZooError(f"the model has {model.num_classes} classes but {len(labels)} labels were given")
        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.max_length, self.max_batch_size = model.max_length, max_batch_size

    def _padded(self, texts, pairs, start, stop):
        inputs, truncated = self.tokenizer.encode_batch(
            texts[start:stop], None if pairs is None else pairs[start:stop], max_length=self.max_length)
        rows = len(truncated)
        length = _bucket(int(inputs["padding_mask"].sum(axis=1).max()), MIN_LENGTH_BUCKET, self.max_length)
        batch = _bucket(rows)
        padded = {}
        for key, array in inputs.items():
            padded[key] = np.zeros((batch, length), dtype=array.dtype)
            padded[key][:rows] = array[:, :length]
        # Filler rows hold a lone [CLS]: a row with nothing to attend to would give NaNs.
        padded["token_ids"][rows:, 0] = self.tokenizer.cls_token_id
        padded["padding_mask"][rows:, 0] = True
        return padded, rows, truncated

    def _batches(self, texts, pairs):
        texts = list(texts)
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise ZooError(f"{len(texts)} texts but {len(pairs)} text pairs: give one pair per text, or none")
        for start in range(0, len(texts), self.max_batch_size):
            yield self._padded(texts, pairs, start, start + self.max_batch_size)

    def probabilities(self, texts, pairs=None):
        """(probabilities (n, classes), truncated (n,)) for the texts (and their pairs)."""
        probs, flags = [], []
        for inputs, rows, truncated in self._batches(texts, pairs):
            logits = np.asarray(self.model.predict_on_batch(inputs), dtype=np.float64)
            probs.append(_softmax(logits[:rows]))
            flags.append(truncated)
        return np.concatenate(probs), np.concatenate(flags)

    def classify(self, texts, pairs=None):
        """A Classification per text."""
        probs, truncated = self.probabilities(texts, pairs)
        return [Classification(self.labels[int(row.argmax())], row, bool(cut)) for row, cut in zip(probs, truncated)]

    def embed(self, texts, pairs=None):
        """(vectors (n, hidden_dim) float32, truncated (n,)): the pooled [CLS] vectors."""
        import keras

        vectors, flags = [], []
        for inputs, rows, truncated in self._batches(texts, pairs):
            vectors.append(keras.ops.convert_to_numpy(self.model.embed(inputs))[:rows].astype(np.float32))
            flags.append(truncated)
        return np.concatenate(vectors), np.concatenate(flags)


def classification_report(true_ids, predicted_ids, labels):
    """Accuracy, macro-F1 (the unweighted mean of per-class F1) and the confusion matrix
    (rows: true class, columns: predicted), as plain Python values."""
    true_ids, predicted_ids = np.asarray(true_ids), np.asarray(predicted_ids)
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (true_ids, predicted_ids), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros(n), where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros(n), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=precision + recall > 0)
    majority = int(np.bincount(true_ids, minlength=n).max())
    return {"accuracy": float(tp.sum() / max(len(true_ids), 1)), "macro_f1": float(f1.mean()),
            "majority_baseline": majority / max(len(true_ids), 1), "examples": int(len(true_ids)),
            "labels": list(labels), "per_class_f1": [round(float(x), 4) for x in f1],
            "confusion": confusion.tolist()}


def format_report(report):
    """The report as text: the headline figures, then the confusion matrix with label names."""
    labels = report["labels"]
    width = max(8, *(len(label) for label in labels))
    lines = [f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
             f"(majority-class baseline {report['majority_baseline']:.4f}, {report['examples']} examples)",
             "confusion matrix (rows: true label, columns: predicted):",
             " " * width + " " + " ".join(f"{label[:width]:>{width}}" for label in labels)]
    for label, row in zip(labels, report["confusion"]):
        lines.append(f"{label:>{width}} " + " ".join(f"{count:>{width}}" for count in row))
    return "\n".join(lines)
