"""Reading a KerasHub preset, family-neutral: a directory written by `save_to_preset`, or a handle
(kaggle://keras/gpt2/keras/gpt2_base_en, ...) that keras-hub downloads when online. keras-hub
itself loads the backbone (its own classes, Keras safe mode), so zoo reads exactly what KerasHub
computes with; the families' converters copy its weights into their models.

keras-hub is imported here only when a preset is imported, never by the rest of zoo's
TensorFlow-free paths beyond the layers the models already use.
"""

import json
from pathlib import Path

from zoo.errors import ZooError

HANDLE_SCHEMES = ("kaggle://",)
TOKENIZER_ASSETS = "assets/tokenizer"


def is_keras_hub_source(source):
    """Whether `source` is a KerasHub handle or a directory written by `save_to_preset`."""
    if source.startswith(HANDLE_SCHEMES):
        return True
    path = Path(source)
    if not (path / "metadata.json").is_file() or not (path / "config.json").is_file():
        return False
    try:
        return "keras_hub" in json.loads((path / "config.json").read_text(encoding="utf-8")).get("module", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


class KerasHubPreset:
    """A KerasHub preset: `config` (its backbone's), `architecture` (the backbone class),
    `backbone()`, `asset(name)` (a tokenizer asset file)."""

    def __init__(self, preset):
        self.source = self.preset = str(preset)
        self.config = json.loads(self.file("config.json").read_text(encoding="utf-8"))
        self.architecture = self.config.get("class_name", "(none)")

    def has(self, name):
        from keras_hub.src.utils.preset_utils import check_file_exists

        return check_file_exists(self.preset, name)

    def file(self, name, required_for=None):
        """The path of one of the preset's files: keras-hub's own resolver finds it in a local
        preset, or downloads (and caches) it for a handle."""
        from keras_hub.src.utils.preset_utils import get_file

        if not self.has(name):
            what = f" (needed for {required_for})" if required_for else ""
            raise ZooError(f"{self.source}: missing {name}{what}")
        try:
            return Path(get_file(self.preset, name))
        except Exception as e:  # kagglehub's and keras-hub's own errors when the handle cannot be fetched
            raise ZooError(f"{self.source}: cannot fetch {name} ({type(e).__name__}: {str(e).splitlines()[0]})") from None

    def backbone(self):
        import keras_hub

        return keras_hub.models.Backbone.from_preset(self.preset)

    def asset(self, name, required_for):
        return self.file(f"{TOKENIZER_ASSETS}/{name}", required_for)

    def provenance(self):
        from zoo.pretrained.huggingface import sha256

        weights = self.file("model.weights.h5")
        return {"source": self.source, "revision": None, "architecture": self.architecture,
                "weight_files": {weights.name: sha256(weights)}, "license": None}
