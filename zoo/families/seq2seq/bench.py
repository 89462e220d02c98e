"""What `zoo bench --model seq2seq` measures (see zoo/bench.py for the rest): training on random
source/target pairs with `zoo train seq2seq`'s loss, the latency of encoding one source and
running the decoder's first step (the engine's prefill), greedy decoding at batch 1 and 8 on the
compiled engine, and the logits of fixed pairs for the agreement across backends.

Constructing a Seq2SeqBench imports nothing heavy and checks the settings against the preset, so
that a bad flag fails before any backend starts.
"""

from zoo.errors import ZooError
from zoo.families.seq2seq.presets import PRESETS

LABEL_SMOOTHING = 0.1  # `zoo train seq2seq`'s default


class Seq2SeqBench:
    def __init__(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        source, target = PRESETS[preset]["max_source_length"], PRESETS[preset]["max_target_length"]
        too_long = [f"{flag} {value} exceeds {what}" for flag, value, limit, what in [
            ("--seq-len", seq_len, min(source, target), "them" if source == target else "the shorter"),
            ("--prompt-tokens", prompt_tokens, source, "the source's"), ("--new-tokens", new_tokens, target, "the target's")]
            if value > limit]
        if too_long:
            raise ZooError(f"the seq2seq {preset} preset's source and target lengths are {source} and {target}: "
                           + "; ".join(too_long))
        self.preset, self.vocabulary_size, self.seq_len, self.batch_size = preset, vocabulary_size, seq_len, batch_size
        self.prompt_tokens, self.new_tokens, self.decode_batches = prompt_tokens, new_tokens, decode_batches
        self.latency = f"encoding one {prompt_tokens}-token source and the first decoder step"
        self.model = None

    def build(self):
        from zoo.families.seq2seq.model import seq2seq_from_preset

        self.model = seq2seq_from_preset(self.preset, self.vocabulary_size)
        return self.model

    def loss(self):
        from zoo.families.seq2seq.training import label_smoothed_loss

        return label_smoothed_loss(LABEL_SMOOTHING)

    def _pairs(self, rng, rows, length):
        import numpy as np

        source = rng.integers(0, self.vocabulary_size, (rows, length)).astype("int32")
        target = rng.integers(0, self.vocabulary_size, (rows, length + 1)).astype("int32")
        return {"source_ids": source, "source_padding_mask": np.ones((rows, length), bool),
                "target_ids": target[:, :-1]}, target[:, 1:]

    def train_batch(self, rng):
        inputs, labels = self._pairs(rng, self.batch_size, self.seq_len)
        return inputs, labels, self.batch_size * 2 * self.seq_len  # the source's tokens and the target's

    def reference_inputs(self, rng):
        length = min(32, self.model.max_source_length, self.model.max_target_length)
        inputs, _ = self._pairs(rng, 2, length)
        inputs["source_padding_mask"][1, length // 2:] = False  # one source shorter: padding must not count
        return inputs

    def outputs(self, inputs):
        import keras

        return keras.ops.convert_to_numpy(self.model(inputs))

    def measure_inference(self, rng, timing):
        # The engine's prompt is the decoder's start token, then the source (zoo.families.seq2seq.generator).
        def prompts(batch):
            return rng.integers(0, self.vocabulary_size, (batch, 1 + self.prompt_tokens)).tolist()

        return timing.engine(self.model, prompts(1)[0], prompts, self.new_tokens, self.decode_batches)


def bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
    return Seq2SeqBench(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)
