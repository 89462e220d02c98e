"""Text generation from a GPT with a KV cache: the prompt is run once (prefill), then one token
per step, both by the model's shared decode engine (`zoo.engine.backends.engine_for`). Used by
`zoo generate` and by the server alike; the per-request side is `zoo.engine.generation.Continuation`.
"""

from zoo.engine.backends import engine_for
from zoo.engine.generation import Continuation, run_stream, stream
from zoo.errors import ZooError


class Generator:
    """Generates text from a GPT model and its tokenizer.

    Steps run on `engine`: by default the model's shared compiled engine (`engine_for(model)`,
    made on first use and reused by every Generator of the model); `EagerEngine(model)` gives the
    uncompiled reference.
    """

    continues_prompt = True  # the output reads on from the prompt

    def __init__(self, model, tokenizer, engine=None):
        self.model, self.tokenizer = model, tokenizer
        self.max_length = model.max_length
        self._engine = engine

    @property
    def engine(self):
        if self._engine is None:
            self._engine = engine_for(self.model)
        return self._engine

    def prompt_ids(self, prompt, config):
        """The prompt's token ids, led by the end token (the document boundary the model was
        trained on), checked against the context length. A prompt given as token ids (a list) is
        taken as it is."""
        ids = [self.tokenizer.end_token_id] + (self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt))
        room = self.max_length - (config.max_new_tokens or 1)
        if len(ids) > room:
            if not config.truncate_prompt:
                raise ZooError(f"the prompt has {len(ids)} tokens (with the start token); with max_new_tokens "
                               f"{config.max_new_tokens or 1} that exceeds the model's context of {self.max_length} "
                               "tokens (shorten it, lower max_new_tokens, or truncate the prompt)")
            ids = ids[len(ids) - room:]
        return ids

    def stream(self, prompt, config):
        """Yields a Step per generated token; returns (as StopIteration.value) the Result."""
        return (yield from stream(self.engine, self.start(prompt, config)))

    def start(self, prompt, config):
        """A checked request's Continuation, ready for the logits of its prompt."""
        config.validate()
        if config.max_new_tokens is not None and config.max_new_tokens >= self.max_length:
            raise ZooError(f"max_new_tokens {config.max_new_tokens} must be below the context length {self.max_length}")
        ids = self.prompt_ids(prompt, config)
        budget = min(config.max_new_tokens or self.max_length, self.max_length - len(ids))
        return Continuation(self.tokenizer, ids, config, budget)

    def generate(self, prompt, config, on_text=None):
        """Runs `stream` to the end; calls on_text(chunk) for each piece of text. Returns the Result."""
        return run_stream(self.stream(prompt, config), on_text)
