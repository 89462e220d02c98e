"""What `zoo bench --model bert` measures (see zoo/bench.py for the rest): a classifier (the task
`zoo classify` and the server serve), trained on random labelled token sequences as `zoo train
bert --task classify` trains it, the latency of classifying one batch of texts through the compiled
predict step (as `zoo.families.bert.classifier.Classifier` does), and the encoder's outputs and
logits of fixed token ids for the agreement across backends. A classifier decodes nothing: its
decode and engine columns stay empty.

Constructing a BertBench imports nothing heavy and checks the settings against the preset, so that
a bad flag fails before any backend starts.
"""

from zoo.errors import ZooError
from zoo.families.bert.presets import PRESETS

NUM_CLASSES = 2


class BertBench:
    def __init__(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        context = PRESETS[preset]["max_length"]
        if seq_len > context or prompt_tokens > context:
            raise ZooError(f"--seq-len {seq_len} and --prompt-tokens {prompt_tokens} must each fit the bert {preset} "
                           f"preset's context of {context}")
        self.preset, self.vocabulary_size, self.seq_len, self.batch_size = preset, vocabulary_size, seq_len, batch_size
        self.prompt_tokens = prompt_tokens
        self.texts = max(decode_batches)  # the batch classified: as many texts as the largest decode batch
        self.latency = f"classifying a batch of {self.texts} texts of {prompt_tokens} tokens"
        self.model = None

    def build(self):
        from zoo.families.bert.model import bert_from_preset

        self.model = bert_from_preset(self.preset, self.vocabulary_size, task="classify", num_classes=NUM_CLASSES)
        return self.model

    def loss(self):
        return None  # zoo train bert --task classify's: cross-entropy of the logits

    def _inputs(self, rng, rows, length):
        import numpy as np

        return {"token_ids": rng.integers(0, self.vocabulary_size, (rows, length)).astype("int32"),
                "segment_ids": np.zeros((rows, length), "int32"), "padding_mask": np.ones((rows, length), bool)}

    def train_batch(self, rng):
        labels = rng.integers(0, NUM_CLASSES, self.batch_size).astype("int32")
        return self._inputs(rng, self.batch_size, self.seq_len), labels, self.batch_size * self.seq_len

    def reference_inputs(self, rng):
        length = min(32, self.model.max_length)
        inputs = self._inputs(rng, 2, length)
        inputs["segment_ids"][:, length // 2:] = 1  # a sentence pair
        inputs["padding_mask"][1, 3 * length // 4:] = False  # one text shorter: padding must not count
        return inputs

    def outputs(self, inputs):
        import keras
        import numpy as np

        sequence = keras.ops.convert_to_numpy(self.model.encoder(inputs)["sequence_output"])
        logits = keras.ops.convert_to_numpy(self.model(inputs))
        return np.concatenate([sequence[inputs["padding_mask"]].ravel(), logits.ravel()]).astype("float32")

    def measure_inference(self, rng, timing):
        inputs = self._inputs(rng, self.texts, self.prompt_tokens)
        self.model.predict_on_batch(inputs)  # compiles the predict step for this shape
        return {"latency_ms": 1000 * timing.best_seconds(lambda: self.model.predict_on_batch(inputs))}


def bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
    return BertBench(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)
