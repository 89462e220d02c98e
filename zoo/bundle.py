"""Run directories and the self-contained model bundle.

A run directory (`zoo train ... --out RUN`) holds `config.json`, `tokenizer.json`, `metrics.jsonl`
and `checkpoints/`. `export_bundle` turns its newest checkpoint into a bundle directory laid out
like a keras-hub preset:

    config.json         the Keras-serialized model (class and constructor arguments)
    model.weights.h5    the weights (Keras .weights.h5: plain arrays, any backend)
    tokenizer.json      the Hugging Face tokenizer file (with zoo's "kind" entry)
    zoo.json            format version, kind, task, context length, special tokens, provenance

Loading deserializes with Keras `safe_mode=True` (no code from the bundle runs) and works on any
backend, whatever backend trained the model.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from zoo.errors import ZooError
from zoo.tokenizers import END_TOKEN, load_tokenizer

FORMAT_VERSION = 1
RUN_CONFIG = "config.json"
BUNDLE_INFO = "zoo.json"
SOURCE_TOKENIZER = "source_tokenizer"  # seq2seq with separate vocabularies: the source side's tokenizer


def read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON ({e.msg})") from None


def is_bundle(path):
    return Path(path, BUNDLE_INFO).is_file()


def is_run(path):
    return Path(path, RUN_CONFIG).is_file() and Path(path, "checkpoints").is_dir()


def _model_class(kind, task):
    if kind == "gpt":
        from zoo.models.gpt import GPT

        return GPT
    if kind == "bert":
        from zoo.models.bert import BertClassifier, BertMaskedLM

        return BertClassifier if task == "classify" else BertMaskedLM
    if kind == "seq2seq":
        from zoo.models.seq2seq import Seq2Seq

        return Seq2Seq
    raise ZooError(f"model kind {kind!r} is not supported by this version of zoo")


def _build_model(kind, task, model_args):
    model = _model_class(kind, task)(**model_args, dtype="float32")
    model.build()
    return model


def _special_tokens(tokenizer):
    if tokenizer.kind == "wordpiece":
        from zoo.tokenizers.wordpiece import CLS, MASK, PAD, SEP, UNK

        return {"end": SEP, "cls": CLS, "sep": SEP, "pad": PAD, "mask": MASK, "unknown": UNK}
    return {"end": END_TOKEN}


def load_run(run_dir):
    """(model, tokenizer, info) from a run directory's newest checkpoint, in float32."""
    from zoo.training.checkpoints import checkpoint_step, latest_checkpoint, restore_checkpoint

    run_dir = Path(run_dir)
    config = read_json(run_dir / RUN_CONFIG)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ZooError(f"{run_dir}: has no checkpoint yet (train it first)")
    model = _build_model(config["kind"], config["task"], config["model"])
    restore_checkpoint(checkpoint, model, with_optimizer=False)
    tokenizer = load_tokenizer(run_dir)
    info = _bundle_info(run_dir, config, checkpoint_step(checkpoint), tokenizer)
    return model, tokenizer, info


def _final_metrics(run_dir, step):
    metrics = {}
    path = Path(run_dir, "metrics.jsonl")
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record.get("step", 0) <= step:
                metrics.update({k: v for k, v in record.items() if k == "loss" or k.startswith("val_")})
    return metrics


def _bundle_info(run_dir, config, step, tokenizer):
    return {
        "format_version": FORMAT_VERSION,
        "kind": config["kind"],
        "task": config["task"],
        # Tokens the model reads: its context (gpt, bert) or its longest source (seq2seq).
        "max_length": config["model"].get("max_length") or config["model"]["max_source_length"],
        "max_target_length": config["model"].get("max_target_length"),
        "vocabulary_size": tokenizer.vocabulary_size,
        "tokenizer": config["tokenizer"],
        "special_tokens": _special_tokens(tokenizer),
        "labels": config.get("labels"),
        "provenance": {
            "backend": config["backend"],
            "versions": config["versions"],
            "data": config["data"],
            "steps": step,
            "final_metrics": _final_metrics(run_dir, step),
            "train": config["train"],
            "command": config["command"],
        },
    }


def export_bundle(run_dir, out, force=False):
    """Writes the bundle for `run_dir` to `out` atomically (a temporary directory renamed into place)."""
    import keras

    run_dir, out = Path(run_dir), Path(out)
    if not is_run(run_dir):
        raise ZooError(f"{run_dir}: not a run directory (no {RUN_CONFIG} and checkpoints/)")
    if out.exists() and not force:
        raise ZooError(f"{out}: already exists (pass --force to replace it)")
    model, tokenizer, info = load_run(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        (tmp / "config.json").write_text(json.dumps(keras.saving.serialize_keras_object(model), indent=2))
        model.save_weights(tmp / "model.weights.h5")
        tokenizer.save(tmp)
        if (run_dir / SOURCE_TOKENIZER).is_dir():  # a seq2seq model's separate source vocabulary
            (tmp / SOURCE_TOKENIZER).mkdir()
            shutil.copy2(run_dir / SOURCE_TOKENIZER / "tokenizer.json", tmp / SOURCE_TOKENIZER / "tokenizer.json")
        (tmp / BUNDLE_INFO).write_text(json.dumps(info, indent=2))
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_bundle(path):
    """(model, tokenizer, info) from a bundle directory, deserialized in Keras safe mode."""
    import keras

    import zoo.models.bert  # noqa: F401  (these imports register the model classes for deserialization)
    import zoo.models.gpt  # noqa: F401
    import zoo.models.seq2seq  # noqa: F401

    path = Path(path)
    info = read_json(path / BUNDLE_INFO)
    if info.get("format_version") != FORMAT_VERSION:
        raise ZooError(f"{path}: bundle format {info.get('format_version')} is not supported (this zoo reads {FORMAT_VERSION})")
    model = keras.saving.deserialize_keras_object(read_json(path / "config.json"), safe_mode=True)
    model.build()
    model.load_weights(path / "model.weights.h5")
    return model, load_tokenizer(path), info


def load_source_tokenizer(path):
    """The source-side tokenizer of a seq2seq run or bundle (the target's, when they share one)."""
    separate = Path(path, SOURCE_TOKENIZER)
    return load_tokenizer(separate if separate.is_dir() else path)


def load_model(path):
    """(model, tokenizer, info) from a bundle or a run directory."""
    path = Path(path)
    if is_bundle(path):
        return load_bundle(path)
    if is_run(path):
        return load_run(path)
    if not path.exists():
        raise ZooError(f"{path}: no such bundle or run directory")
    raise ZooError(f"{path}: neither a bundle (no {BUNDLE_INFO}) nor a run directory (no {RUN_CONFIG} and checkpoints/)")
