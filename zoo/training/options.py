"""The flags every `zoo train` family shares (click options, kept beside the TrainConfig they fill; the
CLI adds --backend when it mounts a family's command) (the TrainConfig knobs, --out/--resume/--json), and
how a family's command hands them to the library and reports the result."""

import datetime
import functools
import json
import os
import sys

import click



def positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}")
    return value


# Each becomes a TrainConfig field (zoo/training/config.py) of the same name.
_TRAIN_CONFIG_OPTIONS = [
    click.option("--max-steps", type=int, default=1000, show_default=True, callback=positive),
    click.option("--batch-size", type=int, default=32, show_default=True, callback=positive),
    click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True, help="Peak learning rate."),
    click.option("--warmup-steps", type=click.IntRange(0), help="Linear warmup; default 10% of --max-steps, at most 100."),
    click.option("--min-lr-ratio", "min_learning_rate_ratio", type=click.FloatRange(0, 1), default=0.1,
                 show_default=True, help="The cosine decay ends at --lr times this (nanoGPT's min_lr / learning_rate)."),
    click.option("--beta2", "beta_2", type=click.FloatRange(0, 1, max_open=True), default=0.99, show_default=True,
                 help="AdamW's second-moment decay."),
    click.option("--weight-decay", type=click.FloatRange(0), default=0.1, show_default=True),
    click.option("--grad-clip", type=click.FloatRange(0), default=1.0, show_default=True, help="Global norm; 0 is off."),
    click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True,
                 help="bf16: mixed_bfloat16 (fp16 on a GPU without bfloat16); fp16: mixed_float16 with loss scaling."),
    click.option("--grad-accum", type=int, default=1, show_default=True, callback=positive,
                 help="Batches per optimizer update (gradients averaged): an update sees grad-accum x batch-size "
                      "examples; --max-steps counts updates."),
    click.option("--jit-compile", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                 help="Compiled training step. auto: Keras's choice (XLA on jax, and on tensorflow with a GPU; torch "
                      "eager); on: XLA everywhere, torch.compile on torch; off: uncompiled."),
    click.option("--devices", type=click.IntRange(0), default=1, show_default=True,
                 help="Devices to train on, data-parallel (0: all visible; per process with --num-processes). More than 1 "
                      "needs --backend jax."),
    click.option("--model-parallel", type=int, default=1, show_default=True, callback=positive,
                 help="Shard the model over this many of the --devices (jax; gpt only)."),
    click.option("--peak-flops", type=float, default=None, callback=positive,
                 help="Peak FLOP/s of one device, for MFU; default: known for H100/H200/A100/L4/..., else no MFU."),
    click.option("--eval-every", type=int, default=250, show_default=True, callback=positive),
    click.option("--eval-blocks", type=int, default=64, show_default=True, callback=positive,
                 help="Validation examples (blocks, sequences or pairs) scored per evaluation."),
    click.option("--save-every", type=int, default=500, show_default=True, callback=positive),
    click.option("--log-every", type=int, default=10, show_default=True, callback=positive),
    click.option("--seed", type=int, default=0, show_default=True),
]
TRAIN_CONFIG_FIELDS = ("max_steps", "batch_size", "learning_rate", "warmup_steps", "min_learning_rate_ratio", "beta_2",
                       "weight_decay", "grad_clip",
                       "precision", "grad_accum", "jit_compile", "devices", "model_parallel", "peak_flops",
                       "eval_every", "eval_blocks", "save_every", "log_every", "seed")


def corpus_options(command):
    """The flags of a family trained on a text corpus into a next-token language model (gpt, lstm):
    --data, --text-field, --val-fraction, --tokenizer, --vocab-size and --seq-len, passed on as
    data, text_field, val_fraction, tokenizer_kind, vocab_size and seq_len (zoo.training.language_model).
    With a prepared corpus (`zoo prepare`) as --data, the tokenizer and split flags are usage errors:
    it fixed them."""

    @click.option("--data", type=click.Path(), default=None,
                  help="A .txt file, a directory of .txt/.jsonl files, a .jsonl file, or a corpus prepared by "
                       "`zoo prepare`; default: the shipped Shakespeare corpus.")
    @click.option("--text-field", default="text", show_default=True, help="The text field of .jsonl records.")
    @click.option("--val-fraction", type=float, default=0.1, show_default=True,
                  help="Share of the corpus (its end) held out.")
    @click.option("--tokenizer", "tokenizer_kind", type=click.Choice(["bpe", "char"]), default="bpe", show_default=True,
                  help="Byte-level BPE or characters (with byte fallback).")
    @click.option("--vocab-size", type=int, default=2048, show_default=True, help="BPE vocabulary size.")
    @click.option("--seq-len", type=int, callback=positive, help="Training block length; default the context length.")
    @functools.wraps(command)
    def with_corpus(**options):
        from zoo.data.prepared import is_prepared

        if is_prepared(options["data"]):
            ctx = click.get_current_context()
            fixed = [name for name in ("tokenizer_kind", "vocab_size", "val_fraction", "text_field")
                     if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
            if fixed:
                flag = "--tokenizer" if fixed[0] == "tokenizer_kind" else "--" + fixed[0].replace("_", "-")
                raise click.UsageError(f"{flag}: {options['data']} is a prepared corpus, whose tokenizer and split "
                                       "were fixed by `zoo prepare`; prepare it again to change them")
        return command(**options)

    return with_corpus


def lora_options(command):
    """--lora-rank and --lora-alpha, for a family command with --init, applied above `training_command`:
    the family's function receives `lora`, None or {"rank": R, "alpha": A} for its run config's
    `lora` entry (zoo.training.lora). A resumed run keeps its own; given again, they must match it."""

    @click.option("--lora-rank", type=int, callback=positive,
                  help="With --init: fine-tune rank-R LoRA adapters on the attention projections instead of every "
                       "weight (only they and a new head train); export merges them into the weights.")
    @click.option("--lora-alpha", type=float, callback=positive,
                  help="LoRA scale: the adapters' product is multiplied by alpha/rank; default the rank (scale 1).")
    @functools.wraps(command)
    def with_lora(lora_rank, lora_alpha, **options):
        if lora_rank is None and lora_alpha is not None:
            raise click.UsageError("--lora-alpha needs --lora-rank")
        if lora_rank is not None and options["init"] is None and not options["resume"]:
            raise click.UsageError("--lora-rank needs --init: LoRA fine-tunes a pretrained run or bundle")
        lora = None if lora_rank is None else {"rank": lora_rank, "alpha": float(lora_alpha or lora_rank)}
        return command(lora=lora, **options)

    return with_lora


def training_command(kind, multi_process=False):
    """Decorates a family's command with the shared flags. The function receives `train_config`
    (a TrainConfig), `explicit` (the settings given on this command line), `out`, `resume`,
    `command`, and its own options; it returns the summary dict, which is printed here.

    `multi_process`: the family trains in a group of processes (--coordinator, --num-processes,
    --process-id; zoo.training.cluster), which joins its group here, before the family's code runs.
    """

    def decorate(function):
        @click.option("--out", type=click.Path(), default=None, help=f"Run directory; default runs/{kind}-<time>.")
        @click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
        @click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
        @click.option("--data-parallel", is_flag=True, help="Train on every visible device (= --devices 0; jax).")
        @click.option("--coordinator", metavar="HOST:PORT", envvar="KERAS_DISTRIBUTION_JOB_ADDRESSES",
                      show_envvar=True, help="Multi-process training (jax): process 0's address, where the group "
                                             "meets; the same in every process.")
        @click.option("--num-processes", type=int, default=1, show_default=True, callback=positive,
                      envvar="KERAS_DISTRIBUTION_NUM_PROCESSES", show_envvar=True,
                      help="Processes in the group, each training on its --devices and its share of every batch; "
                           "process 0 writes the run.")
        @click.option("--process-id", type=click.IntRange(0), default=0, show_default=True,
                      envvar="KERAS_DISTRIBUTION_PROCESS_ID", show_envvar=True,
                      help="This process's number in the group, 0 .. --num-processes - 1.")
        @functools.wraps(function)
        @click.pass_context
        def command(ctx, out, resume, as_json, data_parallel, coordinator, num_processes, process_id, **options):
            from zoo.training import cluster
            from zoo.training.config import TrainConfig

            group = cluster.Cluster(coordinator, num_processes, process_id)
            group.check(os.environ.get("KERAS_BACKEND", "jax"), None if multi_process else kind)

            if out is None:
                if resume:
                    raise click.UsageError("--resume needs --out RUN")
                out = f"runs/{kind}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
            settings = {name: options.pop(name) for name in TRAIN_CONFIG_FIELDS}
            explicit = {name: value for name, value in settings.items()
                        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}
            if data_parallel and "devices" not in explicit:
                settings["devices"] = explicit["devices"] = 0
            cluster.join(group)
            summary = function(train_config=TrainConfig(**settings), explicit=explicit, out=out, resume=resume,
                               command=["zoo", *sys.argv[1:]], **options)
            summary["run"] = str(out)
            if as_json and cluster.is_chief():  # process 0 reports for the group
                click.echo(json.dumps(summary))
            elif cluster.is_chief():
                metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                                    if (k == "loss" or k.startswith("val_")) and isinstance(v, float))
                click.echo(f"run {out}: step {summary['step']}, {metrics}, {summary['wall_s']}s")
            if summary["stopped"]:
                ctx.exit(130)

        for option in reversed(_TRAIN_CONFIG_OPTIONS):
            command = option(command)
        return command

    return decorate
