"""Speculative decoding: a small draft model proposes `k` tokens one at a time, and the target
checks them all in one forward pass over its cache (`DecodeEngine.verify`), which costs about as
much as one decode step where decoding is bound by reading the weights.

The acceptance rule is the standard one (Leviathan et al. 2023, "Fast Inference from Transformers
via Speculative Decoding"; Chen et al. 2023): proposal x, drawn from the draft's distribution q, is
kept with probability min(1, p(x) / q(x)), p the target's; at the first rejection the token is
drawn from the residual max(0, p - q), normalized; if all k are kept, one more is drawn from the
target's next distribution. So the output follows the target's distribution exactly, and with
greedy decoding it is the target's own greedy output token for token: a proposal is kept when it
is the target's argmax, and the first that is not is replaced by that argmax. p and q are the
distributions after the request's temperature, top-k and top-p (`sampling.probabilities`). Every
random draw (the draft's, the acceptance test's, the residual's) comes from the request's one
seeded generator, so a seeded request is reproducible.

A rejected proposal's keys and values stay in both caches beyond the accepted position, where no
query looks and the next tokens overwrite them: so both models need a cache that keeps every
position apart (`positional_cache`, a GPT's), not a recurrent state. Runs one request on 1-slot
caches (a latency tool for batch 1); `SpeculativeGenerator` gives `zoo generate --draft` and the
server's per-model `--draft` the generator interface.
"""

import dataclasses

import numpy as np

from zoo.engine.generation import LanguageModelGenerator, run_stream
from zoo.engine.sampling import draw, probabilities
from zoo.errors import ZooError
from zoo.tokenizers import same_tokenizer


@dataclasses.dataclass
class SpeculationStats:
    """What speculation did for a request (or, summed, for a model): `proposed` draft tokens, of
    which `accepted` were kept, over `verifies` target passes that committed `committed` tokens."""

    proposed: int = 0
    accepted: int = 0
    verifies: int = 0
    committed: int = 0

    @property
    def acceptance_rate(self):
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self):
        """Tokens committed per target forward pass (1 without speculation)."""
        return self.committed / self.verifies if self.verifies else 0.0

    def add(self, other):
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def _pick(row, config, rng):
    """(token, its distribution or None for greedy) from one logits row."""
    probs = probabilities(row, config)
    return (int(np.argmax(row)), None) if probs is None else (draw(probs, rng), probs)


def _check(row, proposal, draft_probs, config, rng):
    """The acceptance rule for one proposal against the target's logits `row`: (True, proposal)
    if kept, else (False, the token drawn in its place)."""
    probs = probabilities(row, config)
    if probs is None:  # greedy: keep the target's argmax
        best = int(np.argmax(row))
        return best == proposal, best
    # q(x) > 0, since the draft drew x from q.
    if rng.random() < probs[proposal] / draft_probs[proposal]:
        return True, proposal
    residual = np.maximum(probs - draft_probs, 0.0)
    total = residual.sum()
    # The residual is empty only when p == q (then nothing is ever rejected, but float rounding may).
    return False, draw(residual / total if total > 0 else probs, rng)


def speculative_stream(target, draft, continuation, draft_tokens, stats):
    """Runs one request on engines `target` and `draft` (each on its own 1-slot cache): yields its
    Steps, returns its Result (as StopIteration.value), like zoo.engine.generation.stream, whose
    output it gives. `draft_tokens` is k, the proposals per target pass; `stats` (a
    SpeculationStats) is added to as it goes."""
    config, rng = continuation.config, continuation.rng
    sequence = list(continuation.prompt_ids)  # every token so far, at its position
    row, cache = target.prefill(sequence)
    # A draft with a shorter context than the target's proposes while its context lasts; past
    # it (or for a prompt it cannot take) the target decodes alone.
    draft_cache, draft_length = None, 0
    if len(sequence) <= draft.max_prompt_length:
        draft_cache, draft_length = draft.prefill(sequence)[1], draft.max_length
    draft_next = len(sequence)  # the first position the draft's cache lacks
    token, _ = _pick(row, config, rng)
    yield from continuation.feed_token(token, row)
    last_position = target.max_length - 1
    while not continuation.done:
        sequence.append(continuation.last_token)
        position = continuation.position  # where the last token goes: both caches hold all before it
        remaining = continuation.budget - len(continuation.generated)
        # The target checks positions position .. position + k; the draft proposes from position
        # .. position + k - 1.
        k = max(0, min(draft_tokens, last_position - position, draft_length - position, remaining - 1))
        # When all were kept, the draft lacks the last proposal (one token; k only falls to 0 once
        # for good): it and the last token go through the draft in one pass, whose last row is the
        # first proposal's (one call instead of two steps: 2-4% faster on torch, 5-9% on JAX).
        first = None
        if k and draft_next < position:
            logits, draft_cache = draft.verify(sequence[draft_next:position + 1], draft_cache, draft_next)
            first = logits[-1]
        proposals, draft_probs, proposal = [], [], sequence[position]
        if config.greedy:  # the draft's greedy steps in one call (on the device where compiled)
            if first is not None:
                proposal = int(np.argmax(first))
                proposals.append(proposal)
            if k > len(proposals):
                chosen, _, draft_cache = draft.decode_greedy([proposal], draft_cache, [position + len(proposals)],
                                                             k - len(proposals))
                proposals += chosen[:, 0].tolist()
            draft_probs = [None] * k
        else:
            row = first
            for i in range(k):
                if row is None:
                    logits, draft_cache = draft.decode([proposal], draft_cache, [position + i])
                    row = logits[0]
                proposal, probs = _pick(row, config, rng)
                proposals.append(proposal)
                draft_probs.append(probs)
                row = None
        draft_next = position + k if k else draft_next
        # The target checks them in one pass, padded to k + 1 tokens where the context allows, so
        # that one compiled function serves every pass (padding's keys land beyond, unread).
        checked = [sequence[position]] + proposals
        padded = checked + [0] * (draft_tokens - k) if position + draft_tokens <= last_position else checked
        logits, cache = target.verify(padded, cache, position)
        stats.verifies += 1
        stats.proposed += k
        committed = 0
        for i, proposal in enumerate(proposals):
            kept, token = _check(logits[i], proposal, draft_probs[i], config, rng)
            stats.accepted += kept
            committed += 1
            yield from continuation.feed_token(token, logits[i])
            if not kept or continuation.done:
                break
        else:  # every proposal kept: the target's next token comes free
            token, _ = _pick(logits[k], config, rng)
            committed += 1
            yield from continuation.feed_token(token, logits[k])
        stats.committed += committed
        # `sequence` gets the committed tokens but the last (appended at the loop's top).
        sequence.extend(continuation.generated[len(sequence) - len(continuation.prompt_ids):-1])
    return (yield from continuation.close())


class SpeculativeGenerator:
    """A language model's generator (`target`, a LanguageModelGenerator) that decodes with a draft
    (another one, sharing its tokenizer) proposing `draft_tokens` tokens per target pass.

    It has the generator interface `zoo generate` and the server use (`prompt_ids`, `stream`,
    `generate`, `continues_prompt`) but no `start`: the server runs its requests one at a time
    rather than continuously batched, since speculation trades spare compute for batch-1 latency.
    `stats` sums every request's SpeculationStats; `last_stats` is the last request's."""

    continues_prompt = True

    def __init__(self, target, draft, draft_tokens=4):
        for name, generator in (("target", target), ("draft", draft)):
            if not isinstance(generator, LanguageModelGenerator):
                raise ZooError(f"speculative decoding: the {name} must be a language model that continues a prompt")
            if not getattr(generator.model, "positional_cache", False):
                raise ZooError(f"speculative decoding: the {name} ({type(generator.model).__name__}) keeps a "
                               "recurrent state, which cannot go back past a rejected proposal; use a GPT")
        if draft_tokens < 1:
            raise ZooError(f"speculative decoding: draft tokens must be at least 1, got {draft_tokens}")
        if not same_tokenizer(target.tokenizer, draft.tokenizer):
            raise ZooError("speculative decoding: the draft's tokenizer differs from the target's; a draft must "
                           "share its target's tokenizer (train it on the same tokenizer)")
        self.target, self.draft, self.draft_tokens = target, draft, draft_tokens
        self.tokenizer, self.max_length = target.tokenizer, target.max_length
        self.stats, self.last_stats = SpeculationStats(), SpeculationStats()

    def warmup(self):
        """Compiles both engines' 1-slot functions, the target's check of k + 1 tokens and the
        draft's catch-up of 2 at every reach, ahead of the first request: (seconds, functions
        compiled)."""
        target, draft = self.target.engine, self.draft.engine
        target.warmup()
        draft.warmup()
        for engine, width in ((target, self.draft_tokens + 1), (draft, 2)):  # a check; a catch-up
            cache = engine.new_cache(1)
            for reach in engine.reaches:
                if reach >= width:
                    cache = engine.verify([0] * width, cache, reach - width)[1]
        return target.compile_seconds + draft.compile_seconds, target.compile_count + draft.compile_count

    def prompt_ids(self, prompt, config):
        return self.target.prompt_ids(prompt, config)

    def stream(self, prompt, config):
        continuation = self.target.start(prompt, config)
        stats = self.last_stats = SpeculationStats()
        try:
            return (yield from speculative_stream(self.target.engine, self.draft.engine, continuation,
                                                  self.draft_tokens, stats))
        finally:
            self.stats.add(stats)

    def generate(self, prompt, config, on_text=None):
        return run_stream(self.stream(prompt, config), on_text)
