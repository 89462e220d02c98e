"""The model repository: one bundle, or `REPO/<name>/<version>/` with a bundle per integer version
(the TF Serving / Triton layout). Every version is loaded at start-up with `zoo.bundle.load_bundle`."""

import dataclasses
import threading
from pathlib import Path

from zoo.bundle import is_bundle, load_bundle
from zoo.errors import ZooError


@dataclasses.dataclass
class LoadedModel:
    """One loaded version of a model. `lock` serializes calls into the Keras model."""

    name: str
    version: int
    path: Path
    model: object
    tokenizer: object
    info: object  # the bundle's zoo.configs.BundleInfo
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def task(self):
        return self.info.task

    @property
    def context_length(self):
        """Tokens the model reads: its context (gpt, bert) or its longest source (seq2seq)."""
        return int(self.info.max_length or self.model.max_length)

    @property
    def max_new_tokens_bound(self):
        """The most tokens one request may generate: the longest target (seq2seq), or one less
        than the context (gpt: the prompt takes at least one position)."""
        return int(self.info.max_target_length) if self.info.max_target_length else self.context_length - 1


class Repository:
    """Every loaded model version, by name and version."""

    def __init__(self, models):
        self.models = {}
        for m in models:
            self.models.setdefault(m.name, {})[m.version] = m

    @classmethod
    def scan(cls, path):
        """[(name, version, bundle_dir)] for a bundle or a repository directory."""
        path = Path(path)
        if not path.exists():
            raise ZooError(f"{path}: no such bundle or model repository")
        if is_bundle(path):
            return [(path.resolve().name, 1, path)]
        if not path.is_dir():
            raise ZooError(f"{path}: not a directory")
        found = []
        for model_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
                if not is_bundle(version_dir):
                    raise ZooError(f"{version_dir}: a version directory without a bundle (no zoo.json)")
                if int(version_dir.name) <= 0:
                    raise ZooError(f"{version_dir}: versions must be positive integers")
                found.append((model_dir.name, int(version_dir.name), version_dir))
        if not found:
            raise ZooError(f"{path}: neither a bundle (no zoo.json) nor a repository of REPO/<name>/<version>/ bundles")
        return found

    @classmethod
    def load(cls, path, log=None):
        models = []
        for name, version, bundle_dir in cls.scan(path):
            model, tokenizer, info = load_bundle(bundle_dir)
            models.append(LoadedModel(name, version, Path(bundle_dir), model, tokenizer, info))
            if log:
                log(f"loaded model {name} version {version} ({info.kind}, task {info.task}) from {bundle_dir}")
        return cls(models)

    def names(self):
        return sorted(self.models)

    def versions(self, name):
        return sorted(self.models.get(name, {}))

    def all(self):
        """Every loaded model version."""
        return [m for versions in self.models.values() for m in versions.values()]

    def get(self, name, version=0):
        """The model version; raises KeyError with a message naming what is missing."""
        if not name:
            raise KeyError("model_spec.name is required")
        if name not in self.models:
            raise KeyError(f"model_spec.name: no model named {name!r} (served: {', '.join(self.names())})")
        versions = self.models[name]
        if not version:
            return versions[max(versions)]
        if version not in versions:
            raise KeyError(f"model_spec.version: model {name!r} has no version {version} "
                           f"(loaded: {', '.join(map(str, sorted(versions)))})")
        return versions[version]
