"""`zoo train gpt`: read and split the corpus, train the tokenizer on the training split, pack
blocks, build the GPT from a preset, and run the training loop in a run directory.

Data is read and checked before keras is imported, so a bad path fails in a fraction of a second.
"""

import dataclasses
import datetime
import json
import sys
from pathlib import Path

from zoo.bundle import RUN_CONFIG, read_json
from zoo.data import (BlockBatches, data_checksum, encode_documents, read_documents, split_documents,
                      validation_blocks)
from zoo.errors import ZooError
from zoo.tokenizers import TextTokenizer, train_bpe, train_char
from zoo.atomic import atomic_write_text

# Settings a resumed run may change; every other setting comes from the run's config.json.
RESUMABLE_CHANGES = {"max_steps", "eval_every", "save_every", "log_every"}


def _flag(setting):
    """The `zoo train` flag of a TrainConfig field."""
    return "--lr" if setting == "learning_rate" else "--" + setting.replace("_", "-")


def _versions():
    import keras

    versions = {"keras": keras.__version__}
    for name in ("keras_hub", "jax", "tensorflow", "torch", "tokenizers"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return versions


def _new_run_config(data, preset, model_overrides, tokenizer_kind, vocabulary_size, seq_len, val_fraction,
                    text_field, train_config):
    """Reads and splits the data, trains the tokenizer; returns (config, tokenizer, train_docs, val_docs)."""
    documents = read_documents(data, text_field)  # first: bad data fails before keras is imported
    train_docs, val_docs = split_documents(documents, val_fraction)
    from zoo.models.gpt import PRESETS

    if preset not in PRESETS:
        raise ZooError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    model_config = {**PRESETS[preset], **{k: v for k, v in model_overrides.items() if v is not None}}
    seq_len = seq_len or model_config["max_length"]
    if seq_len > model_config["max_length"]:
        raise ZooError(f"--seq-len {seq_len} exceeds the model's context (--max-length {model_config['max_length']})")
    if tokenizer_kind == "char":
        tokenizer = train_char(train_docs)
    else:
        tokenizer = train_bpe(train_docs, vocabulary_size)
        if tokenizer.vocabulary_size < vocabulary_size:
            print(f"note: the training split supports only {tokenizer.vocabulary_size} BPE tokens "
                  f"(asked for {vocabulary_size})", file=sys.stderr)
    model_config["vocabulary_size"] = tokenizer.vocabulary_size
    config = {
        "kind": "gpt",
        "task": "generate",
        "preset": preset,
        "model": model_config,
        "seq_len": seq_len,
        "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size},
        "train": dataclasses.asdict(train_config),
        "data": {"path": str(data) if data else "shipped:shakespeare.txt", "sha256": data_checksum(data),
                 "text_field": text_field, "val_fraction": val_fraction},
    }
    return config, tokenizer, train_docs, val_docs


def _resumed_run_config(out, data, explicit_train_changes):
    config = read_json(out / RUN_CONFIG)
    if config.get("kind") != "gpt":
        raise ZooError(f"{out}: is a {config.get('kind')!r} run, not a gpt run")
    refused = {k: v for k, v in explicit_train_changes.items() if k not in RESUMABLE_CHANGES and config["train"].get(k) != v}
    if refused:
        name, value = next(iter(refused.items()))
        raise ZooError(f"{_flag(name)} {value} differs from the run's {config['train'][name]}: a resumed run "
                       f"keeps its settings (only {', '.join(sorted(map(_flag, RESUMABLE_CHANGES)))} may change)")
    config["train"].update({k: v for k, v in explicit_train_changes.items() if k in RESUMABLE_CHANGES})
    data_path = config["data"]["path"]
    wanted = None if data_path.startswith("shipped:") else data_path
    if data is not None and str(data) != str(wanted):
        raise ZooError(f"--data {data} differs from the run's data {data_path}")
    if data_checksum(wanted) != config["data"]["sha256"]:
        raise ZooError(f"the data at {data_path} changed since the run started (checksum differs); cannot resume")
    documents = read_documents(wanted, config["data"]["text_field"])
    train_docs, val_docs = split_documents(documents, config["data"]["val_fraction"])
    return config, TextTokenizer.load(out), train_docs, val_docs


def train_gpt(out, data=None, preset="nano", model_overrides=None, tokenizer_kind="bpe", vocabulary_size=2048,
              seq_len=None, val_fraction=0.1, text_field="text", train_config=None, resume=False,
              explicit_train_changes=None, command=None):
    """Trains (or with `resume`, continues) a GPT run in `out`. Returns the loop's summary dict."""
    from zoo.training.config import TrainConfig

    out = Path(out)
    train_config = train_config or TrainConfig()
    if resume:
        if not (out / RUN_CONFIG).is_file():
            raise ZooError(f"--resume: {out} is not a run directory (no {RUN_CONFIG})")
        config, tokenizer, train_docs, val_docs = _resumed_run_config(out, data, explicit_train_changes or {})
        train_config = TrainConfig(**config["train"])
    else:
        if out.exists() and any(out.iterdir()):
            raise ZooError(f"{out}: already exists and is not empty (pass --resume to continue it, or another --out)")
        config, tokenizer, train_docs, val_docs = _new_run_config(
            data, preset, model_overrides or {}, tokenizer_kind, vocabulary_size, seq_len, val_fraction,
            text_field, train_config)
    seq_len = config["seq_len"]
    train_tokens = encode_documents(tokenizer, train_docs)
    val_tokens = encode_documents(tokenizer, val_docs)
    batches = BlockBatches(train_tokens, seq_len, train_config.batch_size, train_config.seed)
    validation = validation_blocks(val_tokens, seq_len, train_config.eval_blocks)

    # Only now the heavy imports: everything above failed fast on bad input.
    import keras

    from zoo.models.gpt import GPT
    from zoo.training.checkpoints import latest_checkpoint
    from zoo.training.loop import compile_for_training, set_precision, train

    config["data"].update(train_tokens=int(train_tokens.size), val_tokens=int(val_tokens.size))
    if not resume or latest_checkpoint(out / "checkpoints") is None:
        config.update(backend=keras.backend.backend(), versions=_versions(), command=command or sys.argv,
                      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / RUN_CONFIG, json.dumps(config, indent=2))
    tokenizer.save(out)

    keras.utils.set_random_seed(train_config.seed)
    set_precision(train_config.precision)
    model = GPT(**config["model"])
    model.build()
    schedule = compile_for_training(model, train_config)
    params = model.count_params()
    print(f"gpt: {params / 1e6:.2f}M parameters, {config['tokenizer']['kind']} tokenizer of "
          f"{tokenizer.vocabulary_size} tokens, {train_tokens.size:,} training / {val_tokens.size:,} validation tokens, "
          f"backend {keras.backend.backend()}, {train_config.precision}", file=sys.stderr)
    summary = train(model, schedule, batches, validation, train_config, out, resume=resume)
    summary["parameters"] = params
    return summary
