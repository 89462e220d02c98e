"""Knowledge distillation (`zoo train gpt --teacher MODEL`): the run's model learns a teacher's
next-token distribution at every position of the corpus, instead of the corpus's one next token.

Why: a speculative-decoding draft (zoo.engine.speculative) is accepted as often as its distribution
matches its target's. Trained on the corpus, a small draft learns the corpus; trained on the
target's samples (benchmarks/draft_corpus.py, sequence-level distillation) it sees one draw of the
target per position; trained on the target's whole distribution (logit distillation, as in
DistillSpec, Zhou et al. 2023) it sees what every draw only hints at. For a nano draft of a small
target, 2,500 steps on the target's samples either way, the draft's greedy choice agreed with the
target's at 85.8% of held-out positions against 79.8% (KL 0.086 against 0.196), and speculative
decoding on torch went from 1.30x to 1.42x greedy, 1.14x to 1.28x sampled (benchmarks/RESULTS.md).

The loss is Keras's own: `keras.distillation.Distiller` with `LogitsDistillation` (the KL divergence
from the teacher's distribution to the model's, at temperature 1: the distribution the acceptance
rule compares), the teacher frozen. This module fits it into a zoo run: the Distiller steps the
run's own model with the run's own optimizer, so checkpoints, exact resume, evaluation (the
validation loss is still the corpus's next-token loss) and export see the model as in any run.
The logged training loss is the KL divergence (0 when the model matches the teacher).

A family may step faster its own way (`family_step(model, teacher=...)`, the same loss; the GPT on
torch: zoo.families.gpt.torch_training, 1.4x the Distiller's pace with a float32 teacher).
`--teacher-precision bf16` runs the teacher's forward pass (most of a step's work: the teacher is
the larger model) in mixed_bfloat16, its weights kept in float32: its distribution moves by a KL
divergence of ~3e-5 (the `small` preset), far below a draft's distance from it (~0.08), and the
step runs 1.9x faster on torch on a CPU with AMX (2.5x the Distiller's fp32 pace; a GPU with
bfloat16 is the other place for it, not measured); slower where bfloat16 is emulated (JAX's and
TensorFlow's XLA on a CPU).
"""

import sys
from pathlib import Path

from zoo.errors import ZooError
from zoo.training import cluster


PRECISIONS = ("fp32", "bf16")  # of the teacher's forward pass


def run_teacher(config):
    """(teacher, its precision) of a run's config: (None, None) without a teacher; a run recorded
    before --teacher-precision existed distills in fp32."""
    if not config.get("teacher"):
        return None, None
    return config["teacher"], config.get("teacher_precision", "fp32")


def check_resumed_teacher(config, teacher, precision):
    """Refuses a --teacher or --teacher-precision other than the resumed run's own."""
    for flag, given, recorded in zip(("--teacher", "--teacher-precision"), (teacher, precision), run_teacher(config)):
        if given is not None and str(given) != recorded:
            raise ZooError(f"{flag} {given} differs from the run's ({recorded or 'no teacher'}): a resumed run keeps "
                           "its settings")


def check_teacher(teacher, tokenizer, seq_len, train_config):
    """Refuses, naming --teacher, a teacher that cannot teach this run: not a run or bundle, not a
    language model, a tokenizer other than the run's (its distribution is over the teacher's ids),
    a context shorter than the run's blocks; and a run on several devices or processes (the teacher
    would need the same layout; not built)."""
    from zoo.bundle import read_info
    from zoo.tokenizers import load_tokenizer, same_tokenizer

    if train_config.devices != 1 or train_config.model_parallel != 1 or cluster.current().num_processes > 1:
        raise ZooError("--teacher trains on one device in one process (--devices 1, --model-parallel 1, "
                       "no --num-processes)")
    try:
        info = read_info(teacher)
    except ZooError as error:  # neither a run nor a bundle
        raise ZooError(f"--teacher {error}") from None
    if info.task != "generate":
        raise ZooError(f"--teacher {teacher}: is a {info.kind} model with task {info.task!r}; a teacher is a "
                       "language model (task 'generate')")
    if not same_tokenizer(load_tokenizer(Path(teacher)), tokenizer):
        raise ZooError(f"--teacher {teacher}: its tokenizer differs from the run's; a teacher's distribution is "
                       "over its own token ids, so it must share the run's tokenizer (train the run with "
                       "--init from a model with the teacher's tokenizer, or on a corpus prepared with it)")
    context = getattr(info, "max_length", None) or info.model.get("max_length")
    if context is not None and context < seq_len:
        raise ZooError(f"--teacher {teacher}: its context ({context} tokens) is shorter than the run's blocks "
                       f"(--seq-len {seq_len})")


def distillation_step(model, teacher, precision="fp32", family_step=None):
    """The training step of a run distilling the run or bundle `teacher` (its forward pass in
    `precision`, fp32 or bf16) into the compiled `model`: (inputs, targets) -> the batch's loss,
    updating `model` with its own optimizer. `family_step(model, teacher=teacher_model)` is the
    family's own step for it where it has one (None where not); else Keras's Distiller steps."""
    from zoo.bundle import load_model

    teacher_model = load_model(teacher)[0]
    if precision == "bf16":  # float32 layers only: a quantized teacher's layers keep their own
        for layer in teacher_model._flatten_layers(include_self=True):
            if layer.dtype_policy.name == "float32":
                layer.dtype_policy = "mixed_bfloat16"
    step = family_step(model, teacher=teacher_model) if family_step else None
    if step is None:
        step = _distiller_step(model, teacher_model)
    print(f"distilling {teacher} ({teacher_model.count_params() / 1e6:.2f}M parameters, {precision}) into the model",
          file=sys.stderr)
    return step


def _distiller_step(model, teacher_model):
    """Keras's Distiller stepping `model` toward `teacher_model`."""
    import keras

    # A KLDivergence object, not LogitsDistillation's default "kl_divergence": Keras 3.15 turns that
    # string into the bare function, which its isinstance check misses, and then takes the KL
    # divergence of the logits themselves (clipped to [1e-7, 1]) instead of their softmax.
    distiller = keras.distillation.Distiller(
        teacher=teacher_model, student=model, student_loss_weight=0.0,
        distillation_losses=keras.distillation.LogitsDistillation(temperature=1.0, loss=keras.losses.KLDivergence()))
    # The model's optimizer, built on the model's trainable variables, updates the same variables
    # through the Distiller: the JAX trainer pairs them with the optimizer's state by position.
    if [v.path for v in distiller.trainable_variables] != [v.path for v in model.trainable_variables]:
        raise ZooError("distillation: the Distiller's trainable variables are not the model's, in its order")
    distiller.compile(optimizer=model.optimizer, loss=model.loss, jit_compile=model.jit_compile)

    def step(*data):
        return distiller.train_on_batch(*data, return_dict=True)["distillation_loss"]

    step.description = "keras.distillation.Distiller's train_on_batch"
    return step
