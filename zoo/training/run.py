"""The run directory every model family trains in, and the steps they share.

A family's training module (`zoo/families/<name>/training.py`) reads its data, trains its tokenizer
and packs batches; everything else is here, once: refusing a non-empty `--out`, checking that a
resumed run keeps its settings and data, writing `config.json` with provenance, building and
compiling the model, and running the loop.

keras is imported only inside `fit`, so bad flags and bad data fail before the slow imports.
"""

import datetime
import math
import sys
from pathlib import Path

from zoo.backend import use_compilation_cache
from zoo.configs import RUN_CONFIG, RunConfig, read_run_config, write_run_config
from zoo.data import data_checksum
from zoo.errors import ZooError
from zoo.training import accelerator

# Settings a resumed run may change; every other setting comes from the run's config.json. The
# device settings change where the maths runs, not what it is (a checkpoint is plain arrays).
RESUMABLE_CHANGES = {"max_steps", "eval_every", "save_every", "log_every", "devices", "model_parallel", "peak_flops",
                     "jit_compile"}
SHIPPED = "shipped:"


_FLAGS = {"learning_rate": "--lr", "min_learning_rate_ratio": "--min-lr-ratio", "beta_2": "--beta2"}


def flag(setting):
    """The `zoo train` flag of a TrainConfig field."""
    return _FLAGS.get(setting) or "--" + setting.replace("_", "-")


# Optional integrations that keras and keras-hub import whenever they are installed and that training
# never uses: scikit-learn (keras.wrappers' scikit-learn estimators) and rouge-score, with NLTK
# (keras_hub.metrics' ROUGE metrics; zoo's seq2seq scores ROUGE with rouge-score directly, importing
# it when it scores). Importing them cost 1.2-1.8 s of every `zoo train` start on the 2-core CPU.
# Likewise matplotlib (keras.visualization's image galleries; `zoo bench` imports it itself when it
# draws), 0.5 s, and JAX on the other backends: keras imports it, where installed, only to patch a
# function for its Orbax checkpoint callback (0.5-0.9 s of a torch start).
_UNUSED_OPTIONAL_IMPORTS = ("sklearn", "rouge_score", "matplotlib")


def import_keras():
    """Imports keras and keras_hub, once per process, with the optional integrations above made
    absent while they import (a None entry in sys.modules, which their `try: import ... except
    ImportError` reads as "not installed"), then present again for anything that imports them later."""
    if "keras_hub" in sys.modules:
        return
    unused = _UNUSED_OPTIONAL_IMPORTS + (("jax",) if accelerator.active_backend() != "jax" else ())
    absent = [name for name in unused if name not in sys.modules]
    for name in absent:
        sys.modules[name] = None
    try:
        import keras  # noqa: F401
        import keras_hub  # noqa: F401
    finally:
        for name in absent:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def library_versions():
    import keras

    versions = {"keras": keras.__version__}
    for name in ("keras_hub", "jax", "tensorflow", "torch", "tokenizers"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "__version__"):
            versions[name] = module.__version__
    return versions


def checksum(path):
    """The data's checksum: of the corpus files, or for a prepared corpus (`zoo prepare`) the one
    its meta.json records for its token files."""
    from zoo.data.prepared import is_prepared, read_meta

    return read_meta(path)["sha256"] if is_prepared(path) else data_checksum(path)


def data_entry(data, default, **extra):
    """The `data` entry of a run config: where the data came from (`default`: the shipped file
    used when there is no --data), and its checksum."""
    return {"path": str(data) if data else SHIPPED + Path(default).name, "sha256": checksum(data or default),
            **extra}


def data_path(config):
    """The path to read a run's data from: None for the family's shipped data."""
    path = config["data"]["path"]
    return None if path.startswith(SHIPPED) else path


def training_data(recorded, default):
    """Where a model's training data is, from its recorded `data` entry: the shipped `default`, or
    the recorded path if it is on this machine."""
    path = recorded.get("path", "")
    source = default if path.startswith(SHIPPED) else Path(path)
    if not source.is_file():
        raise ZooError(f"the training data {path} is not here; give the evaluation data with --data")
    return source


def init_source(init, kind, overrides):
    """(model constructor arguments, tokenizer) of the run or bundle `init` that a new run of family
    `kind` starts from (`--init`), its shape kept: a shape flag in `overrides` other than dropout
    is refused by name."""
    from zoo.bundle import is_bundle
    from zoo.configs import BUNDLE_INFO, read_bundle_info, read_json
    from zoo.tokenizers import load_tokenizer

    path = Path(init)
    if not is_bundle(path) and not (path / RUN_CONFIG).is_file():
        raise ZooError(f"--init {init}: neither a bundle (no {BUNDLE_INFO}) nor a run directory (no {RUN_CONFIG})")
    info = read_bundle_info(path) if is_bundle(path) else read_run_config(path)
    if info.kind != kind:
        raise ZooError(f"--init {init}: is a {info.kind!r} model; fine-tuning starts from a {kind} run or bundle")
    if getattr(info, "quantization", None):
        raise ZooError(f"--init {init}: is an {info.quantization}-quantized bundle; fine-tune the float bundle it "
                       "was made from (and quantize the result)")
    given = [k for k, v in overrides.items() if v is not None and k != "dropout"]
    if given:
        raise ZooError(f"--{given[0].replace('_', '-')} cannot be combined with --init: the model's shape comes "
                       "from the pretrained model")
    if is_bundle(path):  # the Keras-serialized model's constructor arguments, less Layer's own
        config = {k: v for k, v in read_json(path / "config.json")["config"].items()
                  if k not in ("name", "trainable", "dtype")}
    else:
        config = dict(info.model)
    if overrides.get("dropout") is not None:
        config["dropout"] = overrides["dropout"]
    return config, load_tokenizer(path)


def carry_init_weights(model, config, resume):
    """Gives a new `--init` run's built `model` the weights of the run or bundle it starts from (its
    shape is that model's); a resumed run's come from its own checkpoint instead."""
    if config.get("init") and not resume:
        from zoo.bundle import load_model

        model.set_weights(load_model(config["init"])[0].get_weights())
        print(f"weights carried over from {config['init']}", file=sys.stderr)
    return model


def check_new_run(out):
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooError(f"{out}: already exists and is not empty (pass --resume to continue it, or another --out)")


def resumed_config(out, kind, data, explicit_train_changes, default_data, lora=None):
    """The config.json of the run in `out`, with the allowed changes applied; refuses the others,
    a different `--data`, LoRA settings (`lora`: {"rank", "alpha"} from the flags) other than the
    run's, and data changed on disk since the run started."""
    out = Path(out)
    if not (out / RUN_CONFIG).is_file():
        raise ZooError(f"--resume: {out} is not a run directory (no {RUN_CONFIG})")
    config = read_run_config(out).to_dict()
    if config.get("kind") != kind:
        raise ZooError(f"{out}: is a {config.get('kind')!r} run, not a {kind} run")
    refused = {k: v for k, v in explicit_train_changes.items()
               if k not in RESUMABLE_CHANGES and config["train"].get(k) != v}
    if refused:
        name, value = next(iter(refused.items()))
        raise ZooError(f"{flag(name)} {value} differs from the run's {config['train'][name]}: a resumed run "
                       f"keeps its settings (only {', '.join(sorted(map(flag, RESUMABLE_CHANGES)))} may change)")
    config["train"].update({k: v for k, v in explicit_train_changes.items() if k in RESUMABLE_CHANGES})
    recorded = config.get("lora") or {}
    if lora is not None and {k: recorded.get(k) for k in lora} != lora:
        run_lora = f"rank {recorded['rank']}, alpha {recorded['alpha']:g}" if recorded else "none"
        raise ZooError(f"--lora-rank {lora['rank']} --lora-alpha {lora['alpha']:g} differs from the run's LoRA "
                       f"({run_lora}): a resumed run keeps its settings")
    wanted = data_path(config)
    if data is not None and str(data) != str(wanted):
        raise ZooError(f"--data {data} differs from the run's data {config['data']['path']}")
    if checksum(wanted or default_data) != config["data"]["sha256"]:
        raise ZooError(f"the data at {config['data']['path']} changed since the run started (checksum differs); cannot resume")
    return config


def write_run(out, config, tokenizers, resume, command):
    """Creates the run directory and writes config.json (with provenance) and the tokenizers (in
    process 0 of a multi-process run; the others write nothing).

    `tokenizers` maps a subdirectory ("" for the run directory itself) to a tokenizer with `save`.
    """
    import_keras()
    import keras

    from zoo.training import cluster
    from zoo.training.checkpoints import latest_checkpoint

    cluster.wait_for_all("run checked")  # every process has checked `out` before process 0 writes to it
    if not cluster.is_chief():
        return
    out = Path(out)
    if not resume or latest_checkpoint(out / "checkpoints") is None:
        config.update(backend=keras.backend.backend(), versions=library_versions(), command=command or sys.argv,
                      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, RunConfig.from_dict(config, out / RUN_CONFIG))
    for subdirectory, tokenizer in tokenizers.items():
        (out / subdirectory).mkdir(exist_ok=True)
        tokenizer.save(out / subdirectory)


def _seq_len(batches):
    """Tokens per example, for the attention term of the FLOPs count and the attention probe."""
    if getattr(batches, "seq_len", None):
        return batches.seq_len
    inputs = batches.batch(0)[0]
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return int(first.shape[1]) if len(getattr(first, "shape", ())) > 1 else None


def _adapt(out, config, model):
    """Puts LoRA adapters on `model` as the run's `lora` entry says (`zoo.training.lora`), recording
    the targets in config.json when the run starts. Returns the FLOPs per token that freezing saves:
    a frozen weight still runs forward and passes gradients back, but gets none of its own (2 of
    the 6 FLOPs per token a trained one costs)."""
    from zoo.training import lora

    before = {id(w) for w in model.trainable_weights if "position_embedding" not in w.path}
    targets = lora.enable(model, config["lora"])
    if "targets" not in config["lora"]:
        config["lora"]["targets"] = targets
        write_run_config(out, RunConfig.from_dict(config, Path(out) / RUN_CONFIG))
    return 2 * sum(math.prod(w.shape) for w in model.weights if id(w) in before and not w.trainable)


def fit(out, config, train_config, build_model, batches, validation, evaluate, resume, describe="",
        layout_map=None, flops_per_token=None, train_step=None, **compile_args):
    """Builds the model (`build_model()`, under the run's precision, seed and device layout),
    compiles it, and trains it in `out`. Returns the loop's summary with the parameter count.

    `layout_map(device_mesh)` shards the model for --model-parallel (e.g. `zoo.families.gpt.layout.gpt_layout_map`);
    `flops_per_token` overrides the estimate from the model (`flops.model_flops_per_token`). A
    `config["lora"]` entry ({"rank", "alpha"}, and "head": the paths of new layers that train whole)
    fine-tunes with LoRA adapters instead of every weight (`zoo.training.lora`). `train_step(model)`
    gives the family's own training step for the compiled model (`zoo.training.loop.train`'s
    `train_step`), or None for `train_on_batch`. A `config["teacher"]` entry (a run or bundle)
    trains the model toward that teacher's distribution instead (`zoo.training.distill`; its forward
    pass in `config["teacher_precision"]`), through `train_step(model, teacher=...)` where that
    gives a step.
    """
    import contextlib

    import keras

    from zoo.training import cluster, distribution, flops
    from zoo.training.loop import compile_for_training, train

    use_compilation_cache(keras.backend.backend())  # `zoo` did already; fit called from Python too
    group = cluster.current()
    if group.num_processes > 1:
        cluster.check_same(config)
        batches = cluster.ProcessShard(batches, group)
    spread = distribution.make_distribution(train_config, layout_map)
    previous_policy = keras.config.dtype_policy()
    keras.utils.set_random_seed(train_config.seed)
    precision = accelerator.set_precision(train_config.precision)
    try:
        with spread.scope() if spread else contextlib.nullcontext():
            model = build_model()
            seq_len = _seq_len(batches)
            flops_per_token = flops_per_token or flops.model_flops_per_token(model, seq_len)
            if config.get("lora"):
                flops_per_token -= _adapt(out, config, model)
            schedule = compile_for_training(model, train_config, **compile_args)
            keras.config.set_dtype_policy(previous_policy)  # the model keeps its own; later models get the default
            params = model.count_params()
            trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
            devices = distribution.device_count(spread)
            throughput = flops.Throughput(flops_per_token, precision, devices, train_config.peak_flops)
            accum = (f", {train_config.grad_accum} x {train_config.batch_size} examples per update"
                     if train_config.grad_accum > 1 else "")
            print(f"{config['kind']}: {params / 1e6:.2f}M parameters, {describe}backend {keras.backend.backend()}, "
                  f"{precision}{accum}", file=sys.stderr)
            print(f"trainable parameters: {trainable:,} of {params:,} ({trainable / params:.2%})", file=sys.stderr)
            attention = accelerator.attention_path(model, seq_len) if seq_len else "not probed"
            if config.get("teacher"):  # checked when the run started (zoo.training.distill.check_teacher)
                from zoo.training.distill import distillation_step, run_teacher

                step = distillation_step(model, *run_teacher(config), family_step=train_step)
            else:
                step = train_step(model) if train_step and spread is None and group.num_processes == 1 else None
            step_kind = getattr(step, "description", None) or accelerator.compiled_step(model)
            print(f"device: {throughput.device}, {distribution.describe(spread)}; step: "
                  f"{step_kind}; attention: {attention}", file=sys.stderr)
            print(f"throughput: {throughput.describe()}", file=sys.stderr)
            summary = train(model, schedule, batches, validation, evaluate, train_config, out, resume=resume,
                            throughput=throughput, train_step=step)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    summary.update(parameters=params, trainable_parameters=trainable, precision=precision, attention=attention,
                   devices=devices, flops_per_token=throughput.flops_per_token)
    return summary
