"""How a token is picked from one row of logits, on the host: the request's SamplingConfig,
`sample`, and log-probabilities. Used by every generation path (zoo generate, the server, beam
search's scores)."""

import dataclasses
import math

import numpy as np

from zoo.errors import ZooError


class SamplingError(ZooError):
    """A bad sampling setting. `field` is the SamplingConfig attribute (`index`: which item of a
    list), `problem` the message without the name, so that each front end names the setting as its
    users know it: `named("sampling.top_p")` for the server's proto field, `named("--top-p")` for a
    flag. str() names the attribute: "top_p must be in (0, 1], got 2"."""

    def __init__(self, field, problem, index=None):
        self.field, self.problem, self.index = field, problem, index
        super().__init__(self.named(field))

    def named(self, name):
        """The message, with the setting called `name`."""
        return f"{name}{'' if self.index is None else f'[{self.index}]'} {self.problem}"


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

    @property
    def greedy(self):
        """Each token is the argmax: nothing is drawn, so steps need nothing from the host (the
        engines run greedy steps in chunks: DecodeEngine.decode_greedy)."""
        return self.temperature == 0

    def validate(self):
        """Raises SamplingError for the first bad setting. The one check of `zoo generate` and the
        server alike; each names the setting its own way (see SamplingError.named)."""
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise SamplingError("max_new_tokens", f"must be positive, got {self.max_new_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise SamplingError("temperature", f"must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError("top_k", f"must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError("top_p", f"must be in (0, 1], got {self.top_p}")
        for i, stop in enumerate(self.stop):
            if not stop:
                raise SamplingError("stop", "must not be empty", index=i)


def probabilities(logits, config):
    """The distribution `sample` draws from for one row of float logits, as float64 (temperature,
    then top-k, then top-p); None for greedy (temperature 0). Speculative decoding compares the
    draft's and the target's distributions after the same filters."""
    if config.greedy:
        return None
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
    return probs


def sample(logits, config, rng):
    """A token id from one row of float logits."""
    probs = probabilities(logits, config)
    return int(np.argmax(logits)) if probs is None else draw(probs, rng)


def draw(probs, rng):
    """A token id drawn from a distribution (float64, summing to 1) with `rng`."""
    return int(rng.choice(probs.size, p=probs))


def logprob(row, token):
    """log softmax(row)[token]: exponentials in float32, their sum in float64 (4x faster than
    the whole log-softmax in float64, which the server paid for every token of every request)."""
    top = row.max()
    return float(row[token] - top) - float(np.log(np.exp(row - top).sum(dtype=np.float64)))


def log_softmax(row):
    row = row.astype(np.float64)
    return row - (row.max() + np.log(np.exp(row - row.max()).sum()))
