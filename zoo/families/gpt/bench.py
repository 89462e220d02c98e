"""What `zoo bench --model gpt` measures (see zoo/bench.py for the rest): training on next-token
blocks, the prefill latency of one prompt and greedy decoding at batch 1 and 8 on the compiled
engine, and the logits of fixed token ids for the agreement across backends.

Constructing a GPTBench imports nothing heavy and checks the settings against the preset, so that
a bad flag fails before any backend starts.
"""

from zoo.errors import ZooError
from zoo.families.gpt.presets import PRESETS


class GPTBench:
    def __init__(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        context = PRESETS[preset]["max_length"]
        if seq_len > context or prompt_tokens + new_tokens > context:
            raise ZooError(f"--seq-len {seq_len} and --prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} "
                           f"must each fit the gpt {preset} preset's context of {context}")
        self.preset, self.vocabulary_size, self.seq_len, self.batch_size = preset, vocabulary_size, seq_len, batch_size
        self.prompt_tokens, self.new_tokens, self.decode_batches = prompt_tokens, new_tokens, decode_batches
        self.latency = f"prefill of one {prompt_tokens}-token prompt"
        self.model = None

    def build(self):
        from zoo.families.gpt.model import gpt_from_preset

        self.model = gpt_from_preset(self.preset, self.vocabulary_size)
        return self.model

    def loss(self):
        return None  # zoo train gpt's: next-token cross-entropy

    def train_batch(self, rng):
        tokens = rng.integers(0, self.vocabulary_size, (self.batch_size, self.seq_len + 1)).astype("int32")
        return tokens[:, :-1], tokens[:, 1:], self.batch_size * self.seq_len

    def reference_inputs(self, rng):
        shape = (2, min(32, self.model.max_length))
        return {"token_ids": rng.integers(0, self.vocabulary_size, shape).astype("int32")}

    def outputs(self, inputs):
        import keras

        return keras.ops.convert_to_numpy(self.model(inputs["token_ids"]))

    def measure_inference(self, rng, timing):
        def prompts(batch):
            return rng.integers(0, self.vocabulary_size, (batch, self.prompt_tokens)).tolist()

        return timing.engine(self.model, prompts(1)[0], prompts, self.new_tokens, self.decode_batches)


def bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
    return GPTBench(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)
