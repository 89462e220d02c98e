"""`zoo import`: a pretrained checkpoint in, an ordinary zoo bundle out; and `zoo export --format
hf`, a run or bundle out as a Hugging Face model directory.

The source is read here, family-neutral (zoo.pretrained.huggingface, zoo.pretrained.keras_hub);
the family registry names the family whose converter takes the checkpoint's architecture
(`Family.hf_architectures`, `Family.keras_hub_backbones`), and that family builds its model,
weights and tokenizer (zoo/families/<name>/huggingface.py, keras_hub.py). The
bundle is written as `zoo export` writes one, with where it came from in zoo.json's provenance.
"""

from pathlib import Path

from zoo import families
from zoo.atomic import atomic_directory, refuse_existing
from zoo.errors import ZooError
from zoo.pretrained.huggingface import HUB_PREFIX, HFCheckpoint, resolve
from zoo.pretrained.keras_hub import KerasHubPreset, is_keras_hub_source

__all__ = ["HFCheckpoint", "export_hf", "import_checkpoint"]


def import_checkpoint(source, out, force=False, revision=None, progress=None):
    """Imports `source` (a Hugging Face model directory or hf://<repo id>; a KerasHub preset
    directory or kaggle:// handle) as a bundle at `out`;
    progress(done, total, tensor name) as weights are read. Returns (out, BundleInfo)."""
    import keras

    from zoo.bundle import write_bundle
    from zoo.configs import BundleInfo
    from zoo.training.run import library_versions

    refuse_existing(out, force)  # before any download or conversion
    if revision is not None and not source.startswith(HUB_PREFIX):
        raise ZooError(f"--revision applies to hf:// sources only, not {source}")
    if is_keras_hub_source(source):
        checkpoint = KerasHubPreset(source)
        family = families.for_architecture(checkpoint.architecture, source, "keras_hub_backbones")
        imported = family.import_keras_hub(checkpoint, progress)
    else:
        directory, revision = resolve(source, revision)
        checkpoint = HFCheckpoint(directory, source, revision)
        family = families.for_architecture(checkpoint.architecture, source, "hf_architectures")
        imported = family.import_hf(checkpoint, progress)
    tokenizer = imported.tokenizer
    max_length, max_target_length = family.context(imported.model.get_config())
    info = BundleInfo(
        kind=family.name, task=imported.task, max_length=max_length, max_target_length=max_target_length,
        vocabulary_size=tokenizer.vocabulary_size,
        tokenizer={"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size},
        special_tokens=tokenizer.special_tokens(), labels=imported.labels,
        provenance={"backend": keras.backend.backend(), "versions": library_versions(),
                    "pretrained": checkpoint.provenance()})

    def write_extra_tokenizers(directory):
        for name, extra in imported.extra_tokenizers.items():
            (directory / name).mkdir()
            extra.save(directory / name)

    return write_bundle(out, imported.model, tokenizer, info, force, write_extra_tokenizers), info


def export_hf(path, out, force=False):
    """Writes the run or bundle at `path` to `out` as a Hugging Face model directory, atomically,
    by its family's converter. Returns (out, BundleInfo)."""
    from zoo.bundle import load_model, read_info

    refuse_existing(out, force)  # before loading the model
    quantization = getattr(read_info(path), "quantization", None)
    if quantization:
        raise ZooError(f"{path}: is an {quantization}-quantized bundle, which has no Hugging Face equivalent; export "
                       "the float bundle it was made from")
    model, tokenizer, info = load_model(path)
    with atomic_directory(out, force) as directory:
        families.get(info.kind).export_hf(model, tokenizer, info, directory, Path(path))
    return Path(out), info
