"""The two configuration files zoo writes, typed, and the only module that reads or writes them:

- a run's `config.json` (`RunConfig`): what `zoo train` was asked to do, enough to resume it and
  to export it;
- a bundle's `zoo.json` (`BundleInfo`): what a server or `zoo generate` needs to know about a
  model without the code that trained it.

Each carries a format version. A file whose version is newer than this code is refused with one
line naming both versions (an older zoo cannot know what a newer one changed); every older
version keeps loading. Runs written before the version field existed are version 1.
"""

import dataclasses
import json
from pathlib import Path

from zoo.atomic import atomic_write_text
from zoo.errors import ZooError

RUN_FORMAT_VERSION = 1
BUNDLE_FORMAT_VERSION = 3  # the newest read. 2: zoo.json records every file's sha256 ("files"); 3: a quantized bundle
QUANTIZATION_MODES = ("int8", "int4")  # what `zoo quantize --mode` makes (zoo.quantize)
QUANTIZED_BUNDLE_FORMAT = 3  # ("quantization": its weights are Keras's quantized layers', which a zoo before 3 cannot load)
RUN_CONFIG = "config.json"
BUNDLE_INFO = "zoo.json"


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON ({e.msg})") from None


def _check_version(path, what, found, supported):
    if not isinstance(found, int) or found < 1:
        raise ZooError(f"{path}: {what} format version {found!r} is not a positive integer")
    if found > supported:
        raise ZooError(f"{path}: {what} format version {found} is newer than this zoo reads ({supported}); "
                       "upgrade zoo to load it")


def _from_dict(cls, data, path, what):
    """`cls(**data)`: known fields by name, a missing required one named in the error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ZooError(f"{path}: not a zoo {what} (no {missing[0]!r} entry)")
    known = {k: v for k, v in data.items() if k in fields}
    return cls(**known), {k: v for k, v in data.items() if k not in fields}


@dataclasses.dataclass
class RunConfig:
    """A run directory's config.json. `settings` holds the family's own top-level entries
    (sequence length, label smoothing, ...), written beside the shared ones."""

    kind: str  # the model family's name
    task: str
    model: dict  # the model's constructor arguments
    tokenizer: dict
    train: dict  # the TrainConfig fields
    data: dict  # where the data came from, its checksum and split
    preset: str | None = None
    labels: list | None = None
    backend: str | None = None
    versions: dict | None = None
    command: list | None = None
    created: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)
    format_version: int = RUN_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data, path="config.json"):
        data = dict(data)
        data.setdefault("format_version", 1)
        _check_version(path, "run config", data["format_version"], RUN_FORMAT_VERSION)
        config, extra = _from_dict(cls, data, path, "run config")
        config.settings = {**config.settings, **extra}
        return config

    def to_dict(self):
        data = dataclasses.asdict(self)
        return {**{k: v for k, v in data.items() if k != "settings"}, **self.settings}


@dataclasses.dataclass
class BundleInfo:
    """A bundle's zoo.json."""

    kind: str  # the model family's name
    task: str
    max_length: int  # tokens the model reads: its context, or its longest source
    vocabulary_size: int
    tokenizer: dict
    special_tokens: dict
    max_target_length: int | None = None  # the most tokens an encoder-decoder writes
    labels: list | None = None  # a classifier's class names, in output order
    provenance: dict = dataclasses.field(default_factory=dict)
    files: dict | None = None  # {path inside the bundle: sha256}; None in a format-1 bundle (unverified)
    quantization: str | None = None  # "int8" or "int4" (`zoo quantize`, zoo.quantize): None for float weights
    format_version: int = BUNDLE_FORMAT_VERSION

    @classmethod
    def from_dict(cls, data, path="zoo.json"):
        if "format_version" not in data:
            raise ZooError(f"{path}: not a zoo bundle description (no 'format_version' entry)")
        _check_version(path, "bundle", data["format_version"], BUNDLE_FORMAT_VERSION)
        if data["format_version"] >= 2 and not isinstance(data.get("files"), dict):
            raise ZooError(f"{path}: a format-{data['format_version']} bundle must list its files' sha256 "
                           "('files' entry missing)")
        quantization = data.get("quantization")
        if quantization is not None and (data["format_version"] < QUANTIZED_BUNDLE_FORMAT
                                         or quantization not in QUANTIZATION_MODES):
            raise ZooError(f"{path}: quantization {quantization!r} is not one this zoo reads in a format-"
                           f"{data['format_version']} bundle ({', '.join(QUANTIZATION_MODES)}, from format "
                           f"{QUANTIZED_BUNDLE_FORMAT})")
        return _from_dict(cls, data, path, "bundle description")[0]

    def to_dict(self):
        data = dataclasses.asdict(self)
        if data["quantization"] is None:  # a float bundle's zoo.json is as before quantization existed
            del data["quantization"]
        return data

    def written_format(self):
        """The format version a bundle with this description is written in: the oldest that has
        everything it uses, so that older zoo versions keep reading float bundles."""
        return QUANTIZED_BUNDLE_FORMAT if self.quantization else 2


def read_run_config(run_dir):
    path = Path(run_dir, RUN_CONFIG)
    return RunConfig.from_dict(read_json(path), path)


def write_run_config(run_dir, config):
    atomic_write_text(Path(run_dir, RUN_CONFIG), json.dumps(config.to_dict(), indent=2))


def read_bundle_info(bundle_dir):
    path = Path(bundle_dir, BUNDLE_INFO)
    return BundleInfo.from_dict(read_json(path), path)


def bundle_info_json(info):
    return json.dumps(info.to_dict(), indent=2)
