"""What `zoo bench --model lstm` measures: zoo.bench's LanguageModelBench of an LSTM preset, as for
a GPT (the engine decodes it with its recurrent state as the cache)."""

from zoo.bench import LanguageModelBench
from zoo.families.lstm.presets import PRESETS


def _build(preset, vocabulary_size):
    from zoo.families.lstm.model import LSTMLanguageModel

    model = LSTMLanguageModel(vocabulary_size=vocabulary_size, **PRESETS[preset])
    model.build()
    return model


def bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
    return LanguageModelBench("lstm", PRESETS, _build, preset, vocabulary_size, seq_len, batch_size, prompt_tokens,
                              new_tokens, decode_batches)
