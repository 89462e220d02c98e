"""Text generation from a GPT with a KV cache: the prompt is run once (prefill), then one token
per step, both by the model's shared decode engine (`zoo.engine.backends.engine_for`). Used by
`zoo generate` and by the server alike: zoo.engine's `LanguageModelGenerator`, which the lstm
family shares; the per-request side is `zoo.engine.generation.Continuation`.
"""

import sys

from zoo.engine.generation import LanguageModelGenerator


class Generator(LanguageModelGenerator):
    """Generates text from a GPT model and its tokenizer (`engine`: see LanguageModelGenerator).
    `trained_positions`: where a run trained on blocks shorter than the context left its learned
    position embeddings untrained (the bundle's provenance); a request that may reach past them
    gets a note on stderr, once per generator, since text there degrades into noise."""

    def __init__(self, model, tokenizer, engine=None, trained_positions=None):
        super().__init__(model, tokenizer, engine)
        self.trained_positions, self._noted = trained_positions, False

    def start(self, prompt, config):
        continuation = super().start(prompt, config)
        reach = len(continuation.prompt_ids) + continuation.budget
        if self.trained_positions and reach > self.trained_positions and not self._noted:
            self._noted = True
            print(f"note: this model was trained on blocks of {self.trained_positions} of its {self.max_length} "
                  f"positions; a prompt and output of {reach} tokens goes past them, where text degrades (keep "
                  f"them within {self.trained_positions} tokens, e.g. max new tokens "
                  f"{max(self.trained_positions - len(continuation.prompt_ids), 1)})", file=sys.stderr)
        return continuation
