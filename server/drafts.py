"""Draft models for speculative decoding, per served model (`zoo serve --draft NAME=BUNDLE`).

Each draft is loaded once, when the server starts (a bad path fails the start, not a request), and
every version of model NAME then generates through zoo.engine.speculative's SpeculativeGenerator
with it: one request at a time on its own caches, rather than continuously batched, since
speculation spends spare compute for batch-1 latency. The acceptance counts are exported as
Prometheus gauges.
"""

from prometheus_client import Gauge

from zoo.engine.speculative import SpeculativeGenerator
from zoo.errors import ZooError

PROPOSED = Gauge("zoo_draft_tokens_proposed", "Speculative decoding: tokens the draft proposed (a running total).",
                 ["model", "version"])
ACCEPTED = Gauge("zoo_draft_tokens_accepted", "Speculative decoding: proposed tokens the model kept (a running total).",
                 ["model", "version"])


class Drafts:
    """The drafts of a server: `paths` maps a model name to its draft's run or bundle;
    `draft_tokens` is the proposals per pass of the model."""

    def __init__(self, paths, draft_tokens=4):
        self.paths, self.draft_tokens = dict(paths), draft_tokens
        self._generators = {}

    def load(self):
        """Loads every draft now: a ZooError naming the flag if one cannot serve as a draft."""
        from zoo.bundle import load_runtime  # keras: after the server's settings are checked

        for name, path in self.paths.items():
            try:
                self._generators[name], _ = load_runtime(path, "generate")
            except ZooError as e:
                raise ZooError(f"--draft {name}={path}: {e}") from None

    def check_names(self, names):
        """A ZooError for a draft whose model is not served."""
        for name in self.paths:
            if name not in names:
                raise ZooError(f"--draft {name}={self.paths[name]}: no model {name!r} is served "
                               f"(models: {', '.join(sorted(names))})")

    def wrap(self, name, version, generator):
        """Model `name`'s generator, decoding speculatively if it has a draft."""
        if name not in self.paths:
            return generator
        try:  # one draft, shared by the model's versions (its engine compiles under its own lock)
            speculative = SpeculativeGenerator(generator, self._generators[name], self.draft_tokens)
        except ZooError as e:
            raise ZooError(f"--draft {name}={self.paths[name]}: {e}") from None
        labels = (name, str(version))
        PROPOSED.labels(*labels).set_function(lambda: speculative.stats.proposed)
        ACCEPTED.labels(*labels).set_function(lambda: speculative.stats.accepted)
        return speculative
