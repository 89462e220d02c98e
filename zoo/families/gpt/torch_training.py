"""The GPT's training step on torch: the forward pass in plain torch over the model's own variables.

Why: on the torch backend Keras runs the model through `Layer.__call__` for every layer at every
step (name scopes, dtype policies, argument binding: tens of microseconds each, ~50 calls a
forward pass) and through Keras ops that each convert their inputs; for the 4-layer, width-128
GPT of nanoGPT's CPU recipe that overhead made the forward pass 1.5x nanoGPT's and the step 1.3x.
Here the same maths is spelled in torch (`zoo.layers.torch_blocks`, the building blocks the decode
engine uses), on the variables' own tensors, so autograd reaches the Keras variables, and Keras's
AdamW update (clipping, weight decay, its schedule) runs in torch's fused AdamW kernel on the
optimizer's own state (`fused_adamw`): the run, its checkpoints and its resume are the same as
with `train_on_batch`.

Used only where it computes what the model computes: torch, float32, no dropout (Keras's seeded
dropout masks cannot be reproduced here), no LoRA adapters, Keras's eager step (not
`--jit-compile on`). Its logits equal the model's forward pass (tests/test_training.py checks the
logits, the losses, the weights and the optimizer's state after several updates). Validation
batches go through it too (`batch_loss`), instead of `model.evaluate`.

A distillation run (`zoo train gpt --teacher`) steps here too where both models' forward passes
do (`train_step(model, teacher)`): the teacher's under `torch.no_grad`, in bfloat16 for
`--teacher-precision bf16`, the loss Keras's LogitsDistillation's (`kl_divergence`); else through
Keras's Distiller (zoo.training.distill).

Where only the forward pass is out of reach (mixed_bfloat16, dropout, LoRA adapters), the step
keeps Keras's own forward pass and loss and still updates in the fused kernel: Keras's AdamW
makes eleven calls over the weights and its bookkeeping per variable, each a kernel launch on a
GPU (on the 2-core CPU, a bf16 step of nanoGPT's CPU configuration: 56-68 ms through
`train_on_batch`, 48-55 ms so; benchmarks/RESULTS.md). Anything else (float16's loss scaling, another optimizer) trains
through `train_on_batch`.
"""

import math

import torch
import torch.nn.functional as F

from zoo.layers import torch_blocks as blocks


def eligible(model, training=True, policies=("float32",)):
    """Whether the plain-torch forward pass computes exactly what the model does: in a training step
    (`model.train_on_batch`), or with `training=False` in evaluation (no dropout there). A
    distillation teacher may also be mixed_bfloat16 (`policies`; TorchForward's autocast)."""
    import keras

    if keras.backend.backend() != "torch" or model.jit_compile or model.dtype_policy.name not in policies:
        return False
    layers = model._flatten_layers()
    if any(getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None) for layer in layers):
        return False
    if not training:
        return True
    return (not model.dropout and model.optimizer is not None
            and not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer))


class TorchForward:
    """The GPT's training forward pass, (batch, length) token ids -> (batch, length, vocab) logits.

    A mixed_bfloat16 model (only a distillation teacher: `train_step`) multiplies in bfloat16 under
    torch's autocast, close to Keras's mixed_bfloat16 forward pass but not cast for cast like it:
    a teacher's distribution needs no more (KL 3e-5 from its float32 one for the `small` preset)."""

    def __init__(self, model):
        self.model = model
        self.bfloat16 = model.dtype_policy.name == "mixed_bfloat16"
        self.device_type = model.token_embedding.embeddings.value.device.type
        self.num_heads, self.hidden_dim = model.num_heads, model.hidden_dim
        self.head_dim = model.hidden_dim // model.num_heads
        self.rotary = None
        if model.position_embedding == "rotary":
            self.rotary = blocks.rotary_tables(model.blocks[0].attn.rotary_embedding, self.head_dim, model.max_length,
                                               torch.float32, model.token_embedding.embeddings.value.device)

    @staticmethod
    def _dense(layer):
        return layer.kernel.value, layer.bias.value

    @staticmethod
    def _norm(layer):
        return layer.gamma.value, layer.beta.value, layer.epsilon

    def __call__(self, token_ids):
        if not self.bfloat16:
            return self._forward(token_ids)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self._forward(token_ids)

    def _forward(self, token_ids):
        model = self.model
        batch, length = token_ids.shape
        embeddings = model.token_embedding.embeddings.value
        x = embeddings[token_ids]
        if model.learned_positions is not None:
            x = x + model.learned_positions.position_embeddings.value[:length]
        x = x.reshape(batch * length, self.hidden_dim)
        for block in model.blocks:
            x = self._block(x, block, batch, length)
        x = blocks.layer_norm(x, self._norm(model.final_norm))
        return (x @ embeddings.T).view(batch, length, -1)

    def _block(self, x, block, batch, length):
        """One pre-LayerNorm block on x (batch * length, hidden)."""
        qkv = blocks.linear(blocks.layer_norm(x, self._norm(block.attn_norm)), self._dense(block.attn.qkv))
        # (batch, length, 3, heads, head_dim) -> three (batch, heads, length, head_dim)
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotary is not None:
            cos, sin = (table[:length] for table in self.rotary)  # (length, head_dim), broadcast over heads
            q, k = blocks.rotate(q, cos, sin), blocks.rotate(k, cos, sin)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + blocks.linear(attended.transpose(1, 2).reshape(batch * length, self.hidden_dim),
                              self._dense(block.attn.out))
        h = F.gelu(blocks.linear(blocks.layer_norm(x, self._norm(block.mlp_norm)), self._dense(block.mlp_in)),
                   approximate="tanh")
        return x + blocks.linear(h, self._dense(block.mlp_out))


def batch_loss(model):
    """`loss(inputs, targets)`: the mean next-token cross-entropy of a validation batch through the
    plain-torch forward pass (a 0-d tensor), where it applies (`eligible(model, training=False)`);
    else None."""
    if not eligible(model, training=False):
        return None
    forward = TorchForward(model)

    @torch.no_grad()
    def loss(inputs, targets):
        logits = forward(torch.as_tensor(inputs).long())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(targets).long().reshape(-1))

    return loss


def fused_adamw(optimizer, variables):
    """`update(gradients, clip)`: Keras's AdamW update of `variables`, global-norm clipping at
    `clip` (or None) and decoupled weight decay included, through torch's fused AdamW kernel
    (`torch._fused_adamw_`, one pass over each tensor) on Keras's own optimizer state (momentums,
    velocities, iterations), so checkpoints and a resume are as with `optimizer.apply`. None where
    the optimizer is other than that (amsgrad, EMA, gradient accumulation, loss scaling,
    constraints, another optimizer): use `optimizer.apply` there.

    Why: Keras's update is eleven multi-tensor calls over the weights and its state, plus its
    bookkeeping per variable, ~4 ms a step for nanoGPT's CPU configuration (a tenth of the step).

    The same maths: Keras's var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps) is torch's
    var -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps') with eps' = eps / sqrt(1 - b2^t);
    the decay var *= 1 - lr * wd is the kernel's; clipping divides the gradients by
    max(norm / clip, 1), Keras's clip * min(1 / norm, 1 / clip), NaN for a non-finite norm as there.
    """
    import keras

    from zoo.training.loop import learning_rate_at

    if (not isinstance(optimizer, keras.optimizers.AdamW) or not hasattr(torch, "_fused_adamw_")
            or optimizer.amsgrad or optimizer.use_ema or optimizer.gradient_accumulation_steps
            or optimizer.clipnorm or optimizer.clipvalue or optimizer.loss_scale_factor is not None
            or any(v.dtype != "float32" or v.constraint is not None or v.overwrite_with_gradient for v in variables)):
        return None
    # (indices into the gradients, parameters, momentums, velocities) of the decayed and the others
    groups = {True: ([], [], [], []), False: ([], [], [], [])}
    for index, variable in enumerate(variables):
        slot = optimizer._get_variable_index(variable)
        group = groups[bool(optimizer.weight_decay) and optimizer._use_weight_decay(variable)]
        for members, item in zip(group, (index, variable.value, optimizer._momentums[slot].value,
                                         optimizer._velocities[slot].value)):
            members.append(item)
    weight_decay = float(optimizer.weight_decay or 0.0)
    groups = [(weight_decay if decay else 0.0, group) for decay, group in groups.items() if group[0]]
    iterations = optimizer.iterations.value
    step = torch.zeros((), dtype=torch.float32, device=iterations.device)  # the kernel reads t from a tensor
    beta_1, beta_2, epsilon = float(optimizer.beta_1), float(optimizer.beta_2), float(optimizer.epsilon)
    schedule = optimizer._learning_rate  # a schedule, or a variable its caller sets between updates

    def update(gradients, clip=None):
        scale = None
        if clip:
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gradients)))
            scale = torch.clamp(norm / clip, min=1.0)  # the kernel divides the gradients by it
        t = int(iterations) + 1  # Keras's step count; the kernel's bias correction and eps' need it on the host
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            rate = learning_rate_at(schedule, t - 1)
        else:
            rate = float(optimizer.learning_rate)
        step.fill_(t)
        for decay, (indices, parameters, momentums, velocities) in groups:  # decay: the group's weight decay
            torch._fused_adamw_(parameters, [gradients[i] for i in indices], momentums, velocities, [],
                                [step] * len(parameters), lr=rate, beta1=beta_1, beta2=beta_2,
                                weight_decay=decay,
                                eps=epsilon / math.sqrt(1 - beta_2 ** t), amsgrad=False, maximize=False,
                                grad_scale=scale)
        iterations.add_(1)

    return update


def kl_divergence(teacher_logits, logits):
    """The mean over positions of KL(softmax(teacher_logits) || softmax(logits)), as Keras's
    LogitsDistillation computes it at temperature 1 (zoo.training.distill): keras.losses.KLDivergence
    on the two softmaxes, each clipped to [1e-7, 1]."""
    p = teacher_logits.float().softmax(-1).clamp(1e-7, 1.0)
    q = logits.softmax(-1).clamp(1e-7, 1.0)
    return (p * (p / q).log()).sum(-1).mean()


def _keras_loss(model):
    """`loss(inputs, targets)` through Keras's own forward pass and compiled loss, as Keras's torch
    `train_step` computes it (dropout and mixed precision included)."""
    import keras

    def loss(inputs, targets):
        inputs, targets = keras.ops.convert_to_tensor(inputs), keras.ops.convert_to_tensor(targets)
        return model._compute_loss(x=inputs, y=targets, y_pred=model(inputs, training=True), training=True)

    return loss


def train_step(model, teacher=None):
    """The step `zoo.training.loop.train` runs, `step(inputs, targets) -> loss` (a 0-d tensor), for
    a compiled GPT on torch (eager): the plain-torch forward pass where it applies (`eligible`),
    else Keras's forward pass with the fused update where that applies; else None.

    With a `teacher` (a GPT, float32 or mixed_bfloat16: zoo.training.distill), the loss is the KL
    divergence from the teacher's distribution, both forward passes in plain torch: where either
    does not apply, None (the caller then steps through Keras's Distiller). On the 2-core CPU, a
    nano model distilling the `small` preset at 32 x 128 tokens: ~8,300 tokens/s with a float32
    teacher, ~15,000 with a bfloat16 one, against ~6,000 through the Distiller."""
    import keras

    from zoo.families.gpt.model import GPT

    if keras.backend.backend() != "torch" or model.jit_compile or model.optimizer is None:
        return None
    variables = model.trainable_weights
    parameters = [variable.value for variable in variables]
    optimizer = model.optimizer
    update = fused_adamw(optimizer, variables)
    plain = eligible(model)
    if teacher is not None:
        if not (plain and isinstance(teacher, GPT)
                and eligible(teacher, training=False, policies=("float32", "mixed_bfloat16"))):
            return None
        forward, teacher_forward = TorchForward(model), TorchForward(teacher)

        def loss_of(inputs, targets):  # the targets are the corpus's: unused, the teacher says what comes next
            token_ids = torch.as_tensor(inputs).long()
            with torch.no_grad():
                teacher_logits = teacher_forward(token_ids)
            return kl_divergence(teacher_logits, forward(token_ids))
    elif plain:
        forward = TorchForward(model)

        def loss_of(inputs, targets):
            logits = forward(torch.as_tensor(inputs).long())
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(targets).long().reshape(-1))
    elif update is not None:
        loss_of = _keras_loss(model)
    else:
        return None

    def step(inputs, targets):
        for parameter in parameters:
            parameter.grad = None
        loss = loss_of(inputs, targets)
        loss.backward()
        with torch.no_grad():
            gradients = [parameter.grad for parameter in parameters]
            if update is not None:
                update(gradients, optimizer.global_clipnorm)
            else:  # Keras's update, its clipping included
                optimizer.apply(gradients, variables)
        return loss.detach()

    step.description = (("the teacher's KL divergence, " if teacher is not None else "")
                        + ("plain-torch forward pass (zoo.families.gpt.torch_training)" if plain
                           else "Keras's forward pass") + " and "
                        + ("Keras's AdamW in torch's fused kernel" if update is not None else "Keras's optimizer")
                        + ", eager")
    return step
