"""Text generation from a GPT with a KV cache: the prompt is run once (prefill), then one token
per step, both by the model's shared decode engine (`zoo.engine.backends.engine_for`). Used by
`zoo generate` and by the server alike: zoo.engine's `LanguageModelGenerator`, which the lstm
family shares; the per-request side is `zoo.engine.generation.Continuation`.
"""

from zoo.engine.generation import LanguageModelGenerator


class Generator(LanguageModelGenerator):
    """Generates text from a GPT model and its tokenizer (`engine`: see LanguageModelGenerator)."""
