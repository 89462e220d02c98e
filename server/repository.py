"""The model repository: what is on disk (`scan`), and the versions being served (`Repository`).

On disk: one bundle, or `REPO/<name>/<version>/` with a bundle per positive integer version (the
TF Serving / Triton layout). Which versions serve, and when they change, is server/reload.py's.
"""

import dataclasses
import os
import threading
from pathlib import Path

from zoo.bundle import is_bundle
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


@dataclasses.dataclass(frozen=True)
class Found:
    """A version directory on disk. `fingerprint` changes whenever a file in it is added, removed,
    replaced or written, so a version that failed to load is tried again once it changed."""

    name: str
    version: int
    path: Path
    fingerprint: tuple
    published: bool  # has zoo.json


def _fingerprint(directory):
    stats = [os.stat(directory)]
    for root, _, files in os.walk(directory):
        stats.extend(os.stat(Path(root, f)) for f in files)
    return (stats[0].st_ino, len(stats), max(s.st_mtime_ns for s in stats), sum(s.st_size for s in stats))


def scan(path):
    """[Found] for a bundle (served under its directory name as version 1) or a repository
    directory. A ZooError when `path` is neither."""
    path = Path(path)
    if not path.exists():
        raise ZooError(f"{path}: no such bundle or model repository")
    if is_bundle(path):
        return [Found(path.resolve().name, 1, path, _fingerprint(path), True)]
    if not path.is_dir():
        raise ZooError(f"{path}: not a directory")
    found = []
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            if int(version_dir.name) > 0:
                try:
                    found.append(Found(model_dir.name, int(version_dir.name), version_dir,
                                       _fingerprint(version_dir), is_bundle(version_dir)))
                except FileNotFoundError:  # removed while we looked
                    continue
    return found


class Repository:
    """The runtimes (server/runtimes.py) being served, by model name and version. Changed only on
    the server's event loop, so a request sees a version either fully loaded or not at all."""

    def __init__(self):
        self.models = {}

    def add(self, runtime):
        m = runtime.model
        self.models.setdefault(m.name, {})[m.version] = runtime

    def remove(self, name, version):
        """Takes the version out of service; returns its runtime."""
        runtime = self.models[name].pop(version)
        if not self.models[name]:
            del self.models[name]
        return runtime

    def names(self):
        return sorted(self.models)

    def versions(self, name):
        return sorted(self.models.get(name, {}))

    def all(self):
        """Every served runtime."""
        return [r for versions in self.models.values() for r in versions.values()]

    def get(self, name, version=0, visible=None):
        """The runtime of the model version; raises KeyError with a message naming what is missing.
        `visible(name)`: whether the caller may know of a model (others are not listed)."""
        if not name:
            raise KeyError("model_spec.name is required")
        if name not in self.models:
            shown = [n for n in self.names() if visible is None or visible(n)]
            raise KeyError(f"model_spec.name: no model named {name!r} (served: {', '.join(shown) or 'none'})")
        versions = self.models[name]
        if not version:
            return versions[max(versions)]
        if version not in versions:
            raise KeyError(f"model_spec.version: model {name!r} has no version {version} "
                           f"(serving: {', '.join(map(str, sorted(versions)))})")
        return versions[version]
