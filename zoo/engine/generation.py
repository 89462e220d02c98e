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

from zoo.engine.backends import engine_for
from zoo.engine.sampling import logprob, sample
from zoo.errors import ZooError

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
        continuation.feed_token(token, logits_row)  -> the same, for a token picked elsewhere
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
        return self.feed_token(sample(row, self.config, self.rng), row)

    def feed_token(self, token, row):
        """`feed` of a token already picked from logits `row` (its log-prob is read there):
        speculative decoding picks its tokens itself."""
        return self.feed_scored(token, None if token == self.tokenizer.end_token_id else logprob(row, token))

    def feed_scored(self, token, token_logprob):
        """`feed` of a token picked elsewhere with its log-prob: a chunk of greedy steps run on the
        device (`engine.decode_greedy`) gives both."""
        if token == self.tokenizer.end_token_id:
            self.finish, self.done = FINISH_END, True
            return []
        self.generated.append(token)
        self.logprobs.append(float(token_logprob))
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
    batcher runs the same steps for many requests at once. A greedy request's steps run in chunks
    (`engine.decode_greedy`), so its Steps come in bursts of up to `engine.decode_chunk`."""
    row, cache = engine.prefill(continuation.prompt_ids)
    yield from continuation.feed(row)
    greedy = continuation.config.greedy
    while not continuation.done:
        last, position = [continuation.last_token], [continuation.position]
        if greedy:
            steps = min(engine.decode_chunk, continuation.budget - len(continuation.generated))
            chosen, logprobs, cache = engine.decode_greedy(last, cache, position, steps,
                                                           continuation.tokenizer.end_token_id)
            for token, token_logprob in zip(chosen[:, 0].tolist(), logprobs[:, 0].tolist()):
                yield from continuation.feed_scored(token, token_logprob)
                if continuation.done:
                    break
        else:
            logits, cache = engine.decode(last, cache, position)
            yield from continuation.feed(logits[0])
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



class EngineGenerator:
    """A generator whose steps run on `engine`: by default the model's shared compiled engine
    (`engine_for(model)`, made on first use and reused by every generator of the model), which
    runs the model's cache protocol (zoo.engine.interface); `EagerEngine(model)` gives the
    uncompiled reference. Having an `engine` and `start`, a generator joins the server's
    continuous batching."""

    def __init__(self, model, engine=None):
        self.model, self._engine = model, engine

    @property
    def engine(self):
        if self._engine is None:
            self._engine = engine_for(self.model)
        return self._engine


class LanguageModelGenerator(EngineGenerator):
    """The generator of a decoder-only language model (gpt, lstm), for `zoo generate` and the
    server alike: continues a prompt, led by the end token (the document boundary the model was
    trained on), within the model's context of `model.max_length` tokens, prompt included.
    """

    continues_prompt = True  # the output reads on from the prompt

    def __init__(self, model, tokenizer, engine=None):
        super().__init__(model, engine)
        self.tokenizer, self.max_length = tokenizer, model.max_length

    def prompt_ids(self, prompt, config):
        """The prompt's token ids, led by the end token, checked against the context length. A
        prompt given as token ids (a list) is taken as it is."""
        ids = [self.tokenizer.end_token_id] + (self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt))
        room = self.max_length - (config.max_new_tokens or 1)
        if len(ids) > room:
            if not config.truncate_prompt:
                raise ZooError(f"the prompt has {len(ids)} tokens (with the start token); with max_new_tokens "
                               f"{config.max_new_tokens or 1} that exceeds the model's context of {self.max_length} "
                               "tokens (shorten it, lower max_new_tokens, or truncate the prompt)")
            ids = ids[len(ids) - room:]
        return ids

    def start(self, prompt, config):
        """A checked request's Continuation, ready for the logits of its prompt."""
        config.validate()
        if config.max_new_tokens is not None and config.max_new_tokens >= self.max_length:
            raise ZooError(f"max_new_tokens {config.max_new_tokens} must be below the context length {self.max_length}")
        ids = self.prompt_ids(prompt, config)
        budget = min(config.max_new_tokens or self.max_length, self.max_length - len(ids))
        return Continuation(self.tokenizer, ids, config, budget)

    def stream(self, prompt, config):
        """Yields a Step per generated token; returns (as StopIteration.value) the Result."""
        return (yield from stream(self.engine, self.start(prompt, config)))

    def generate(self, prompt, config, on_text=None):
        """Runs `stream` to the end; calls on_text(chunk) for each piece of text. Returns the Result."""
        return run_stream(self.stream(prompt, config), on_text)
