"""The LSTM family: a recurrent language model that continues a prompt.

model.py (the network), presets.py, training.py (`zoo train lstm`'s library side, on the language
model training every such family shares), command.py (its flags), bench.py (`zoo bench --model lstm`) and generator.py (prompt ->
streamed continuation, the recurrent state as the cache).
"""

from zoo.families import Family
from zoo.families.lstm.presets import PRESETS
from zoo.families.perplexity import LanguageModelEvaluation


class LSTMFamily(LanguageModelEvaluation, Family):
    name = "lstm"
    description = "LSTM language model (stacked recurrent layers)"
    presets = PRESETS
    tasks = ("generate",)

    def train_command(self):
        from zoo.families.lstm.command import lstm

        return lstm

    def model_class(self, task):
        from zoo.families.lstm.model import LSTMLanguageModel

        return LSTMLanguageModel

    def context(self, model_config):
        """An LSTM reads any length, but it learned from blocks of --seq-len tokens, each from zero
        state; its context is the `max_length` it was trained with (the preset's, or --max-length,
        at least --seq-len): the prompt, start token included, and the output together, as a
        GPT's. The server's and `zoo generate`'s limits follow from it."""
        return int(model_config["max_length"]), None

    def runtime(self, task, model, tokenizer, path, info):
        if task != "generate":
            return None
        from zoo.families.lstm.generator import Generator

        return Generator(model, tokenizer)

    def bench_model(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        from zoo.families.lstm.bench import bench_model

        return bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches)


FAMILY = LSTMFamily()
