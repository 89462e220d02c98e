"""The family registry: the one place that maps a family's name (`zoo train gpt`, a bundle's
"kind") to what that family declares. Nothing outside `zoo/families/` knows a family by name;
the bundle loader, `zoo generate/classify/eval/export/bench`, the server and the CLI ask here.

A family is a folder `zoo/families/<name>/` whose `__init__.py` defines `FAMILY`, an instance of
a `Family` subclass, and imports nothing heavy (no keras): `--help` and the CLI's choices read
its presets straight away. Adding a family is that folder plus one line in `BUILT_IN` below; a
family kept outside this package is added by naming its module in `$ZOO_FAMILIES`
(comma-separated), or by `register(family)` in-process.
"""

import dataclasses
import importlib
import os

from zoo.errors import ZooError

BUILT_IN = {
    "gpt": "zoo.families.gpt",
    "bert": "zoo.families.bert",
    "seq2seq": "zoo.families.seq2seq",
    "lstm": "zoo.families.lstm",
}
_FAMILIES = {}


class Family:
    """What a model family declares. Subclasses set the class attributes and override the hooks
    they support; hooks import their heavy modules inside, so that declaring costs nothing."""

    name = ""
    description = ""  # one line, for `zoo train --help`
    presets = {}  # preset name -> model settings (plain data)
    tasks = ()  # the tasks a run of this family can have, e.g. ("mlm", "classify")

    # --- training -------------------------------------------------------------------------------

    def train_command(self):
        """The click command `zoo train <name>` (built with `zoo.training.options.training_command`)."""
        raise NotImplementedError

    # --- models and bundles ---------------------------------------------------------------------

    def model_class(self, task):
        """The Keras model class of a run or bundle with this task (importing it registers it for
        safe-mode deserialization)."""
        raise NotImplementedError

    def context(self, model_config):
        """(tokens the model reads, most tokens it writes or None) for a run's model settings."""
        return int(model_config["max_length"]), None

    def source_tokenizer(self, path):
        """A second tokenizer the model reads its input with (seq2seq's source side), or None."""
        return None

    # --- pretrained checkpoints (zoo import) -----------------------------------------------------

    hf_architectures = ()  # the Hugging Face `architectures` names the family's converter imports

    def import_hf(self, checkpoint, progress=None):
        """The `Imported` model of a Hugging Face checkpoint (a zoo.pretrained.HFCheckpoint) whose
        architecture is one of `hf_architectures`; progress(done, total, name) per tensor."""
        raise NotImplementedError

    keras_hub_backbones = ()  # the KerasHub backbone classes the family's converter imports

    def import_keras_hub(self, preset, progress=None):
        """The `Imported` model of a KerasHub preset (a zoo.pretrained.KerasHubPreset) whose
        backbone class is one of `keras_hub_backbones`."""
        raise NotImplementedError

    def export_hf(self, model, tokenizer, info, directory, path):
        """Writes `model` and `tokenizer` (`info`: their BundleInfo; `path`: the run or bundle they
        came from) into `directory` as a Hugging Face model directory that transformers loads
        (`zoo export --format hf`); a ZooError when the model has no transformers equivalent."""
        raise ZooError(f"{self.name} models do not export to the Hugging Face format yet")

    # --- inference ------------------------------------------------------------------------------

    def runtime(self, task, model, tokenizer, path, info):
        """The inference object of a loaded model for `task`: a generator (`prompt_ids`, `start`,
        `stream`, `engine`, `generate`) for "generate", a classifier (`classify`, `embed`,
        `probabilities`) for "classify"; None when a task is not served."""
        return None

    def evaluate(self, model, tokenizer, info, path, data=None, beam_width=4):
        """The `zoo eval` report (a dict) of a loaded model, on `data` or its validation split."""
        raise ZooError(f"zoo eval does not score {self.name} models; see the validation loss in their metrics.jsonl")

    report_metrics = ()  # the names `zoo eval --metric` may choose among, when a report has several scores

    def format_report(self, report, metrics=()):
        """`report` (from `evaluate`) as text for the terminal; `metrics`: those of `report_metrics`
        to print (empty: all)."""
        raise NotImplementedError

    def headline_scores(self, report, metrics=()):
        """The main scores of `report` (from `evaluate`), [(name, value, higher is better)], that
        `zoo eval --baseline` compares between two models (`metrics`: those chosen, or all)."""
        return []

    # --- benchmarking ---------------------------------------------------------------------------

    def bench_model(self, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens, decode_batches):
        """What `zoo bench` measures of this family's model from `preset` (random weights), or None
        when it is not benchmarked. Made in the parent process too: it imports nothing heavy when
        made, and raises ZooError naming the flags when the settings do not fit the preset. It has:

        - `latency`: what its inference latency is, in words ("prefill of one 32-token prompt");
        - `build()`: the model, built, with random weights (keras's seed is set by then);
        - `loss()`: the loss `zoo train` compiles it with, or None for cross-entropy of the logits;
        - `train_batch(rng)`: (x, y, tokens the model reads) of one training step of `batch_size`
          rows of `seq_len` tokens, from a NumPy Generator;
        - `reference_inputs(rng)`: a dict of NumPy arrays, and `outputs(inputs)`, what the model
          computes from them as one NumPy array: compared across backends on the same weights;
        - `measure_inference(rng, timing)`: a dict with some of latency_ms,
          decode_tokens_per_s_b<n> (n in `decode_batches`) and engine_compile_s; `timing` offers
          `best_seconds(run)` and `engine(model, prompt, prompts_for_batch, new_tokens, batches)`,
          the measurements of a model with a decode engine (see zoo/bench.py).
        """
        return None


@dataclasses.dataclass
class Imported:
    """A model a family's converter built from a pretrained checkpoint, ready to be a bundle."""

    model: object  # the Keras model, built, with the checkpoint's weights
    tokenizer: object  # its (main) tokenizer
    task: str
    labels: list | None = None
    extra_tokenizers: dict = dataclasses.field(default_factory=dict)  # subdirectory -> a second tokenizer


def register(family):
    """Adds (or replaces) a family in this process's registry; returns it."""
    if not family.name:
        raise ValueError("a family needs a name")
    _FAMILIES[family.name] = family
    return family


def _load(module_name):
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ZooError(f"cannot import the model family module {module_name!r}: {e}") from None
    family = getattr(module, "FAMILY", None)
    if not isinstance(family, Family):
        raise ZooError(f"{module_name}: defines no FAMILY (a zoo.families.Family)")
    return family


def _load_all():
    modules = list(BUILT_IN.values())
    modules += [name.strip() for name in os.environ.get("ZOO_FAMILIES", "").split(",") if name.strip()]
    for module_name in modules:
        family = _load(module_name)
        _FAMILIES.setdefault(family.name, family)


def names():
    """Every family's name, built-in ones first."""
    if not _FAMILIES or len(_FAMILIES) < len(BUILT_IN):
        _load_all()
    return list(_FAMILIES)


def get(name):
    """The family called `name`; a ZooError naming the known ones otherwise."""
    if name not in _FAMILIES:
        _load_all()
    if name not in _FAMILIES:
        raise ZooError(f"model family {name!r} is not known to this version of zoo (known: {', '.join(names())})")
    return _FAMILIES[name]


def for_architecture(architecture, source, declared="hf_architectures"):
    """The family whose `declared` list (hf_architectures or keras_hub_backbones) holds
    `architecture`; a ZooError listing the supported ones otherwise."""
    for name in names():
        if architecture in getattr(_FAMILIES[name], declared):
            return _FAMILIES[name]
    supported = ", ".join(a for name in names() for a in getattr(_FAMILIES[name], declared))
    raise ZooError(f"{source}: architecture {architecture} is not supported (supported: {supported})")


def of_model(model):
    """The family whose model class `model` is an instance of."""
    for name in names():
        family = _FAMILIES[name]
        if any(isinstance(model, family.model_class(task)) for task in family.tasks):
            return family
    raise ZooError(f"{type(model).__name__} belongs to no registered model family")
