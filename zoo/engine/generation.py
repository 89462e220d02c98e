"""One request's side of generation, whatever the family: a `Continuation` turns logits rows into
tokens, text and a finish reason, and `run_stream` runs a generator's stream to its Result. The
same loop serves `zoo generate`, `zoo translate`, the server's continuous batching and beam
search's caller.

Sampling is done here on the host, one logits row per step, rather than with keras-hub's
samplers: those run the whole loop inside their own compiled while-loop, with no way to stream a
token, check a stop string, or stop a cancelled request between steps.
"""

import dataclasses

import numpy as np

from zoo.engine.sampling import logprob, sample

FINISH_LENGTH, FINISH_STOP, FINISH_END = "length", "stop", "end_token"


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
    applies the end token, stop strings and the budget (most tokens to generate). A generator's
    `stream` drives one on a 1-slot cache of its engine (GPT's and seq2seq's alike), and the
    server's continuous batcher many, one per slot of a shared cache.

        engine.prefill_slot(cache, slot, continuation.prompt_ids) -> the first logits row
        continuation.feed(logits_row)  -> the Steps to send (zero or one); sets .done when finished
        continuation.last_token, .position: what to decode next, and where
        continuation.close()           -> a generator: a last Step for held-back text, if any;
                                          returns the Result

    `prompt_ids` are what the engine prefills; `first_position` is where the first generated token
    goes in the cache (the engine's `first_position(prompt_ids)`: for a GPT after the prompt,
    len(prompt_ids), the default; for a seq2seq decoder 1, after its start token) and
    `prompt_tokens` what the Result reports as the prompt's length (default len(prompt_ids)).
    """

    def __init__(self, tokenizer, prompt_ids, config, budget, first_position=None, prompt_tokens=None):
        self.tokenizer, self.prompt_ids, self.config, self.budget = tokenizer, prompt_ids, config, budget
        self.first_position = len(prompt_ids) if first_position is None else first_position
        self.prompt_tokens = len(prompt_ids) if prompt_tokens is None else prompt_tokens
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
        return self.first_position + len(self.generated) - 1

    def feed(self, row):
        token = sample(row, self.config, self.rng)
        if token == self.tokenizer.end_token_id:
            self.finish, self.done = FINISH_END, True
            return []
        self.generated.append(token)
        self.logprobs.append(logprob(row, token))
        self.pending = self._decode_unsettled()
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

    def _decode_unsettled(self):
        """The text of the tokens since the last settling. Decoded after the last settled token and
        less that token's own text: a SentencePiece decoder drops a leading space (the word
        boundary "▁world" carries) when a piece comes first, as it must for a whole text."""
        new = self.generated[self.settled_tokens:]
        if not self.settled_tokens:
            return self.tokenizer.decode(new)
        context = self.generated[self.settled_tokens - 1:self.settled_tokens]
        before, text = self.tokenizer.decode(context), self.tokenizer.decode(context + new)
        return text[len(before):] if text.startswith(before) else self.tokenizer.decode(new)

    def close(self):
        text = self.settled + self.pending
        if self.emitted < len(text):
            yield Step(None, text[self.emitted:], 0.0)  # held-back text, flushed at the end
        return Result(text, self.generated, self.finish, self.prompt_tokens, self.logprobs)


def stream(engine, continuation):
    """Runs one request alone on a decode engine (a 1-slot cache): yields its Steps, returns (as
    StopIteration.value) its Result. Every generator's `stream` is this; the server's continuous
    batcher runs the same steps for many requests at once."""
    row, cache = engine.prefill(continuation.prompt_ids)
    while True:
        yield from continuation.feed(row)
        if continuation.done:
            break
        logits, cache = engine.decode([continuation.last_token], cache, [continuation.position])
        row = logits[0]
    return (yield from continuation.close())


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
