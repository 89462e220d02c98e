"""Run directories and the self-contained model bundle.

A run directory (`zoo train ... --out RUN`) holds `config.json`, `tokenizer.json`, `metrics.jsonl`
and `checkpoints/`. `export_bundle` turns its newest checkpoint into a bundle directory laid out
like a keras-hub preset:

    config.json         the Keras-serialized model (class and constructor arguments)
    model.weights.h5    the weights (Keras .weights.h5: plain arrays, any backend)
    tokenizer.json      the Hugging Face tokenizer file (with zoo's "kind" entry), or Marian's
                        sentencepiece.model + sentencepiece.json; a family with a second tokenizer
                        (seq2seq's source side) keeps it in a subdirectory
    zoo.json            format version, family ("kind"), task, context length, special tokens,
                        provenance, and the sha256 of every other file (`zoo.configs.BundleInfo`)

Loading verifies every file against zoo.json's checksums first (`zoo.integrity`): a missing,
altered or unlisted file is refused with its name. Bundles of format 1 (before checksums) load
unverified, with a warning.

A quantized bundle (`zoo quantize`, zoo.quantize) records its mode in zoo.json ("quantization");
loading builds the model with those layers already in the mode's integer layout (their quantized
dtype policy, as Keras loads a quantized model), then loads the weights.

Loading deserializes with Keras `safe_mode=True` (no code from the bundle runs) and works on any
backend, whatever backend trained the model. The model's family (`zoo.families`) names its class.
"""

import dataclasses
import logging
import shutil
from pathlib import Path

from zoo import families
from zoo.atomic import atomic_directory, refuse_existing
from zoo.configs import BUNDLE_INFO, RUN_CONFIG, BundleInfo, bundle_info_json, read_bundle_info, read_run_config
from zoo.errors import ZooError
from zoo.integrity import file_digests, verify
from zoo.tokenizers import is_tokenizer_directory, load_tokenizer

log = logging.getLogger("zoo")


def is_bundle(path):
    return Path(path, BUNDLE_INFO).is_file()


def is_run(path):
    return Path(path, RUN_CONFIG).is_file() and Path(path, "checkpoints").is_dir()


def _build_model(config):
    model = families.get(config.kind).model_class(config.task)(**config.model, dtype="float32")
    model.build()
    return model


def load_run(run_dir):
    """(model, tokenizer, info) from a run directory's newest checkpoint, in float32. A LoRA run's
    adapters are merged into its kernels: the model is an ordinary one (`zoo.training.lora.merged`)."""
    from zoo.training import lora
    from zoo.training.checkpoints import checkpoint_step, latest_checkpoint, restore_checkpoint

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ZooError(f"{run_dir}: has no checkpoint yet (train it first)")
    model = _build_model(config)
    adapters = config.settings.get("lora")
    if adapters:
        lora.enable(model, adapters)
    restore_checkpoint(checkpoint, model, with_optimizer=False)
    if adapters:
        model = lora.merged(model, _build_model(config))
    tokenizer = load_tokenizer(run_dir)
    info = _bundle_info(run_dir, config, checkpoint_step(checkpoint), tokenizer)
    return model, tokenizer, info


def _final_metrics(run_dir, step):
    import json

    metrics = {}
    path = Path(run_dir, "metrics.jsonl")
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("step", 0) <= step:
                metrics.update({k: v for k, v in record.items() if k == "loss" or k.startswith("val_")})
    return metrics


def _bundle_info(run_dir, config, step, tokenizer):
    max_length, max_target_length = families.get(config.kind).context(config.model)
    return BundleInfo(
        kind=config.kind, task=config.task, max_length=max_length, max_target_length=max_target_length,
        vocabulary_size=tokenizer.vocabulary_size, tokenizer=config.tokenizer,
        special_tokens=tokenizer.special_tokens(), labels=config.labels,
        provenance={"backend": config.backend, "versions": config.versions, "data": config.data, "steps": step,
                    "final_metrics": _final_metrics(run_dir, step), "train": config.train,
                    "command": config.command,
                    # positions past which a family's run left its position embeddings untrained
                    **({"trained_positions": config.settings["trained_positions"]}
                       if config.settings.get("trained_positions") else {}),
                    **({"lora": {**config.settings["lora"], "merged": True}} if config.settings.get("lora") else {})})


def export_bundle(source, out, force=False):
    """Writes the bundle of a run's newest checkpoint to `out` atomically (see `write_bundle`); or
    rewrites a bundle there, as the current format (a format-1 bundle's copy gains checksums)."""
    source, out = Path(source), Path(out)
    if not (is_run(source) or is_bundle(source)):
        raise ZooError(f"{source}: neither a run directory (no {RUN_CONFIG} and checkpoints/) nor a bundle "
                       f"(no {BUNDLE_INFO})")
    refuse_existing(out, force)  # before loading anything
    model, tokenizer, info = load_run(source) if is_run(source) else load_bundle(source)

    def copy_second_tokenizers(bundle):  # a family's second tokenizer (seq2seq's source)
        for extra in sorted(path for path in source.iterdir() if path.is_dir() and is_tokenizer_directory(path)):
            shutil.copytree(extra, bundle / extra.name)

    return write_bundle(out, model, tokenizer, info, force, copy_second_tokenizers)


def write_bundle(out, model, tokenizer, info, force=False, write_extra=None):
    """Writes a bundle of `model`, `tokenizer` and `info` (a BundleInfo) to `out` atomically
    (`zoo.atomic.atomic_directory`; an existing `out` is replaced only with `force`).
    `write_extra(directory)` adds a family's own files."""
    import json

    import keras

    with atomic_directory(out, force) as tmp:
        (tmp / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(model), indent=2))
        model.save_weights(tmp / "model.weights.h5")
        tokenizer.save(tmp)
        if write_extra is not None:
            write_extra(tmp)
        info = dataclasses.replace(info, files=file_digests(tmp, BUNDLE_INFO), format_version=info.written_format())
        (tmp / BUNDLE_INFO).write_text(bundle_info_json(info))
    return Path(out)


def load_bundle(path):
    """(model, tokenizer, info) from a bundle directory, deserialized in Keras safe mode."""
    import keras

    from zoo.configs import read_json

    path = Path(path)
    info = read_bundle_info(path)
    if info.files is None:
        log.warning("%s: a format-%d bundle has no checksums: loaded unverified (`zoo export BUNDLE --out NEW` writes a copy with them)",
                    path, info.format_version)
    else:
        verify(path, info.files, BUNDLE_INFO)
    families.get(info.kind).model_class(info.task)  # imported: registered for deserialization
    config = read_json(path / "config.json")
    if info.quantization:  # built below, with its quantized layers' integer variables
        config.pop("build_config", None)
    model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    if info.quantization:
        from zoo.layers.quantized import build_quantized

        build_quantized(model, info.quantization)
    else:
        model.build()
    model.load_weights(path / "model.weights.h5")
    return model, load_tokenizer(path), info


def load_model(path):
    """(model, tokenizer, info) from a bundle or a run directory."""
    return _by_kind(path, load_bundle, load_run)


def read_info(path):
    """The BundleInfo of a bundle or a run directory, read without loading its model."""
    return _by_kind(path, read_bundle_info, read_run_config)


def _by_kind(path, for_bundle, for_run):
    path = Path(path)
    if is_bundle(path):
        return for_bundle(path)
    if is_run(path):
        return for_run(path)
    if not path.exists():
        raise ZooError(f"{path}: no such bundle or run directory")
    raise ZooError(f"{path}: neither a bundle (no {BUNDLE_INFO}) nor a run directory (no {RUN_CONFIG} and checkpoints/)")


def load_runtime(path, task=None):
    """(runtime, info) for the run or bundle at `path`: its family's inference object for `task`
    (default: the model's own task), e.g. a generator or a classifier. A ZooError if the model does
    not serve that task."""
    model, tokenizer, info = load_model(path)
    if task is not None and task != info.task:
        raise ZooError(f"{path}: is a {info.kind} model with task {info.task!r}; this needs task {task!r}")
    runtime = families.get(info.kind).runtime(info.task, model, tokenizer, path, info)
    if runtime is None:
        raise ZooError(f"{path}: a {info.kind} model with task {info.task!r} is not served (no inference runtime)")
    return runtime, info
