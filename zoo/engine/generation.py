"""Text generation from a GPT with a KV cache: the prompt is run once (prefill), then one token
per step, both by the model's compiled engine (`zoo.engine.compiled`). Used by `zoo generate` and
by the server alike.

Sampling is done here on the host, one logits row per step, rather than with keras-hub's
samplers: those run the whole loop inside their own compiled while-loop, with no way to stream a
token, check a stop string, or stop a cancelled request between steps.
"""

import dataclasses
import math

import numpy as np

from zoo.engine.compiled import engine_for
from zoo.errors import ZooError

FINISH_LENGTH, FINISH_STOP, FINISH_END = "length", "stop", "end_token"


@dataclasses.dataclass
class SamplingConfig:
    """How to pick tokens. temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    max_new_tokens: int | None = None  # None: up to the end of the context
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple = ()
    truncate_prompt: bool = False  # keep the prompt's last tokens instead of refusing a long prompt

    def validate(self):
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ZooError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise ZooError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ZooError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ZooError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ZooError("stop strings must not be empty")


@dataclasses.dataclass
class Step:
    """One generated token: its id (None for a last flush of held-back text), the text it completes
    (may be "" while held back), its log-prob."""

    token_id: int | None
    text: str
    logprob: float


@dataclasses.dataclass
class Result:
    text: str
    token_ids: list
    finish_reason: str
    prompt_tokens: int
    logprobs: list


def sample(logits, config, rng):
    """A token id from one row of float logits."""
    if config.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / config.temperature
    if 0 < config.top_k < z.size:
        z[z < np.partition(z, -config.top_k)[-config.top_k]] = -np.inf
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if config.top_p < 1:
        order = np.argsort(-probs)
        before = np.cumsum(probs[order]) - probs[order]
        probs[order[before >= config.top_p]] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def _logprob(row, token):
    """log softmax(row)[token]: exponentials in float32, their sum in float64 (4x faster than
    the whole log-softmax in float64, which the server paid for every token of every request)."""
    top = row.max()
    return float(row[token] - top) - float(np.log(np.exp(row - top).sum(dtype=np.float64)))


def _log_softmax(row):
    row = row.astype(np.float64)
    return row - (row.max() + np.log(np.exp(row - row.max()).sum()))


def _held_back(text, stops):
    """How many characters at the end of `text` could still begin a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class Continuation:
    """One request's side of generation, apart from the model: picks each token from a logits
    row (the request's own sampling settings and random generator), turns tokens into text, and
    applies the end token, stop strings and the budget (most tokens to generate). `Generator.stream`
    drives one with a 1-slot cache, `Seq2SeqGenerator.stream` one with the decoder's cache, and the
    server's continuous batcher many, one per slot of a shared cache.

        continuation.feed(logits_row)  -> the Steps to send (zero or one); sets .done when finished
        continuation.last_token, .position: what to decode next, and where
        continuation.close()           -> a generator: a last Step for held-back text, if any;
                                          returns the Result
    """

    def __init__(self, tokenizer, prompt_ids, config, budget):
        self.tokenizer, self.prompt_ids, self.config, self.budget = tokenizer, prompt_ids, config, budget
        self.rng = np.random.default_rng(config.seed)
        self.generated, self.logprobs = [], []
        self.finish, self.done = FINISH_LENGTH, False
        # Text is "settled" once the tokens since the last settling decode without a trailing
        # U+FFFD (a partial UTF-8 character); decoding only those tokens keeps settled text fixed,
        # so the streamed chunks always add up to the result's text.
        self.settled, self.settled_tokens, self.pending, self.emitted = "", 0, "", 0

    @property
    def last_token(self):
        return self.generated[-1]

    @property
    def position(self):
        """Where the last generated token goes into the cache."""
        return len(self.prompt_ids) + len(self.generated) - 1

    def feed(self, row):
        token = sample(row, self.config, self.rng)
        if token == self.tokenizer.end_token_id:
            self.finish, self.done = FINISH_END, True
            return []
        self.generated.append(token)
        self.logprobs.append(_logprob(row, token))
        self.pending = self.tokenizer.decode(self.generated[self.settled_tokens:])
        if not self.pending.endswith("\ufffd"):
            self.settled, self.settled_tokens, self.pending = self.settled + self.pending, len(self.generated), ""
        text, stops = self.settled + self.pending, self.config.stop
        hits = [i for i in (text.find(s, max(self.emitted - len(s), 0)) for s in stops) if i >= 0]
        if hits:
            self.settled, self.pending, self.finish, self.done = text[:min(hits)], "", FINISH_STOP, True
            step = Step(token, self.settled[self.emitted:], self.logprobs[-1])
            self.emitted = len(self.settled)
            return [step]
        # Hold back anything that may be the beginning of a stop string.
        ready = len(self.settled) - _held_back(self.settled, stops)
        step = Step(token, self.settled[self.emitted:ready], self.logprobs[-1])
        self.emitted = max(self.emitted, ready)
        self.done = len(self.generated) == self.budget
        return [step]

    def close(self):
        text = self.settled + self.pending
        if self.emitted < len(text):
            yield Step(None, text[self.emitted:], 0.0)  # held-back text, flushed at the end
        return Result(text, self.generated, self.finish, len(self.prompt_ids), self.logprobs)


class Generator:
    """Generates text from a GPT model and its tokenizer.

    Steps run on `engine`: by default the model's shared compiled engine (`engine_for(model)`,
    made on first use and reused by every Generator of the model); `EagerEngine(model)` gives the
    uncompiled reference.
    """

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
        trained on), checked against the context length."""
        ids = [self.tokenizer.end_token_id] + self.tokenizer.encode(prompt)
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
        continuation = self.start(prompt, config)
        row, cache = self.engine.prefill(continuation.prompt_ids)
        while True:
            yield from continuation.feed(row)
            if continuation.done:
                break
            logits, cache = self.engine.decode([continuation.last_token], cache, [continuation.position])
            row = logits[0]
        return (yield from continuation.close())

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


def run_stream(steps, on_text=None):
    """Runs a generator's `stream` to the end, calling on_text(chunk) for each piece of text;
    returns its Result."""
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if on_text and step.text:
            on_text(step.text)
