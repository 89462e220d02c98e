"""Reading a Hugging Face model directory, family-neutral: where it is (a local directory, or a
hub id fetched with `huggingface_hub`), its config, its safetensors weights tensor by tensor, its
files' checksums and its licence. The families' converters (zoo/families/<name>/huggingface.py)
turn what this reads into their models.

Weights are read with `safetensors`' lazy `safe_open`: one tensor in memory at a time, so that an
import's peak memory is the model plus its largest tensor, not twice the checkpoint. Pickle
(`pytorch_model.bin`) is never loaded.
"""

import hashlib
import json
import os
import re
from pathlib import Path

from zoo.errors import ZooError

HUB_PREFIX = "hf://"
CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# What an import downloads from the hub: the config, the weights, the tokenizer files of every
# supported family, and the model card (its licence).
HUB_FILES = ["config.json", "*.safetensors", SHARD_INDEX, "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "vocab.json", "target_vocab.json", "merges.txt", "vocab.txt", "*.spm", "*.model",
             "README.md", "LICENSE*", "generation_config.json"]
TO_SAFETENSORS = ("convert it to safetensors first, e.g. in Python: transformers.AutoModel.from_pretrained(DIR)"
                  ".save_pretrained(DIR, safe_serialization=True), or use the hub's convert space")


def resolve(source, revision=None):
    """(local directory, revision or None) of `source`: a local Hugging Face model directory, or
    `hf://<repo id>` downloaded with huggingface_hub (its cache, $HF_HOME and $HF_HUB_OFFLINE
    apply: offline, only what is already cached is found)."""
    if not source.startswith(HUB_PREFIX):
        path = Path(source)
        if not path.is_dir():
            raise ZooError(f"{source}: no such directory (a Hugging Face model directory, or hf://<repo id>)")
        return path, revision
    repo_id = source[len(HUB_PREFIX):]
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
        raise ZooError(f"{source}: not a hub id (hf://<owner>/<name> or hf://<name>)")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        path = huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError:
        raise ZooError(f"{source}: not in the local Hugging Face cache, and the hub cannot be reached "
                       f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); download it when online, "
                       "or import a local directory") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ZooError(f"{source}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    # The snapshot directory is named after the commit it holds.
    return Path(path), Path(path).name


class HFCheckpoint:
    """A Hugging Face model directory: `config`, `architecture`, `tensor(name)`, `names()`."""

    def __init__(self, directory, source=None, revision=None):
        self.directory, self.source, self.revision = Path(directory), source or str(directory), revision
        config_path = self.directory / CONFIG
        if not config_path.is_file():
            raise ZooError(f"{self.source}: no {CONFIG} (not a Hugging Face model directory)")
        try:
            self.config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ZooError(f"{config_path}: not valid JSON ({e})") from None
        architectures = self.config.get("architectures") or []
        self.architecture = architectures[0] if architectures else self.config.get("model_type", "(none)")
        self.weight_files = self._weight_files()
        self._where = {}  # tensor name -> file
        for file in self.weight_files:
            with _open_safetensors(file) as handle:
                for name in handle.keys():
                    self._where[name] = file

    def _weight_files(self):
        index = self.directory / SHARD_INDEX
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            missing = [name for name in shards if not (self.directory / name).is_file()]
            if missing:
                raise ZooError(f"{self.source}: {SHARD_INDEX} names {missing[0]}, which is missing")
            return [self.directory / name for name in shards]
        if (self.directory / SINGLE_FILE).is_file():
            return [self.directory / SINGLE_FILE]
        pickled = [name for name in PICKLE_FILES if (self.directory / name).is_file()]
        if pickled:
            raise ZooError(f"{self.source}: has only {pickled[0]}, which zoo never loads (pickle and framework "
                           f"formats can run code or need that framework); {TO_SAFETENSORS}")
        raise ZooError(f"{self.source}: no {SINGLE_FILE} or {SHARD_INDEX}")

    def names(self):
        return list(self._where)

    def has(self, name):
        return name in self._where

    def tensor(self, name):
        """One tensor as a NumPy array (a copy), read from its file now. The file is mapped only
        while it is read: a mapping kept open would hold every page read so far in the process's
        memory, the whole checkpoint by the end of an import."""
        if name not in self._where:
            raise ZooError(f"{self.source}: the checkpoint has no tensor {name!r} (is it a {self.architecture}?)")
        with _open_safetensors(self._where[name]) as handle:
            return handle.get_tensor(name)

    def assign(self, model, pairs, progress=None):
        """Reads each (tensor name, Keras variable) pair's tensor into its variable, one tensor in
        memory at a time; calls progress(done, total, name) after each."""
        self.assign_items([(name, variable, lambda name=name: self.tensor(name)) for name, variable in pairs], progress)

    def assign_items(self, items, progress=None):
        """`assign_arrays` of (name, variable, read) items, read() giving a tensor in the model's
        layout (transposed, reshaped) from this checkpoint."""
        assign_arrays(self.source, items, progress)

    def file(self, name, required_for=None):
        """The path of a file of the directory; a ZooError naming it when it is missing and
        `required_for` says what needs it."""
        path = self.directory / name
        if required_for and not path.is_file():
            raise ZooError(f"{self.source}: missing tokenizer file {name} (needed for {required_for})")
        return path

    def provenance(self):
        """Where the weights came from: source, revision, sha256 of each weight file, licence."""
        return {"source": self.source, "revision": self.revision, "architecture": self.architecture,
                "weight_files": {file.name: sha256(file) for file in self.weight_files},
                "license": self.license()}

    def license(self):
        """The licence the model card declares (its YAML front matter's `license:`), or None."""
        card = self.directory / "README.md"
        if not card.is_file():
            return None
        match = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.S)
        found = match and re.search(r"^license:\s*(\S+)", match.group(1), re.M)
        return found.group(1).strip("'\"") if found else None


def assign_arrays(source, items, progress=None):
    """For each (name, Keras variable, read) item: read() gives the variable's new value (an array
    of its shape), assigned and dropped before the next is read. progress(done, total, name)."""
    for done, (name, variable, read) in enumerate(items, 1):
        array = read()
        if tuple(array.shape) != tuple(variable.shape):
            raise ZooError(f"{source}: weight {name} has shape {tuple(array.shape)}, the model expects "
                           f"{tuple(variable.shape)} (the config and the weights disagree)")
        variable.assign(array.astype(variable.dtype, copy=False))
        del array
        if progress is not None:
            progress(done, len(items), name)


def mapped_items(checkpoint, mapped):
    """`assign_items` items of a weight map: (tensor name, our variable, input axes), where a torch
    Linear weight (outputs, inputs) is our kernel with its `input axes` first, flattened and
    transposed, and input axes None means the same numbers, reshaped."""
    def reader(name, variable, input_axes):
        def read():
            array = checkpoint.tensor(name)
            return (array.T if input_axes else array).reshape(variable.shape)
        return read

    return [(name, variable, reader(name, variable, axes)) for name, variable, axes in mapped]


def mapped_tensors(mapped):
    """{tensor name: float32 NumPy array} of a weight map (see `mapped_items`), in transformers'
    layout: what an export writes with safetensors."""
    import math

    import keras
    import numpy as np

    tensors = {}
    for name, variable, input_axes in mapped:
        array = keras.ops.convert_to_numpy(variable.value).astype("float32")
        if input_axes:
            array = array.reshape(math.prod(array.shape[:input_axes]), -1).T
        tensors[name] = np.ascontiguousarray(array.reshape(-1) if name.endswith(".bias") else array)
    return tensors


def _open_safetensors(path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as e:  # safetensors raises its own SafetensorError (a plain Exception) on a bad file
        raise ZooError(f"{path}: not a readable safetensors file ({e})") from None


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
