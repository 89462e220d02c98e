"""What `zoo bench --model gpt` measures: zoo.bench's LanguageModelBench of a GPT preset (training
on next-token blocks, prefill latency, greedy decoding at batch 1 and 8 on the compiled engine, and
the logits of fixed token ids across backends). Making it imports nothing heavy and checks the
settings against the preset, so that a bad flag fails before any backend starts.
"""

from zoo.bench import LanguageModelBench
from zoo.families.gpt.presets import PRESETS


def _build(preset, vocabulary_size):
    from zoo.families.gpt.model import gpt_from_preset

    return gpt_from_preset(preset, vocabulary_size)


def bench_model(preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
    return LanguageModelBench("gpt", PRESETS, _build, preset, vocabulary_size, seq_len, batch_size, prompt_tokens,
                              new_tokens, decode_batches)
