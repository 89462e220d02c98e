"""Training settings, importable without keras (so bad flags fail before the slow imports)."""

import dataclasses

PRECISIONS = ("fp32", "bf16", "fp16")
JIT_COMPILE = ("auto", "on", "off")


@dataclasses.dataclass
class TrainConfig:
    """The knobs of a run; every one is a `zoo train` flag."""

    max_steps: int = 1000  # optimizer updates (each of grad_accum batches)
    batch_size: int = 32  # examples per forward/backward pass (a micro-batch when grad_accum > 1)
    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.1  # the cosine ends at learning_rate * this
    warmup_steps: int | None = None  # default: 10% of max_steps, at most 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta_2: float = 0.99
    precision: str = "fp32"  # "bf16" (mixed_bfloat16) or "fp16" (mixed_float16 with loss scaling)
    grad_accum: int = 1  # batches whose gradients are averaged into one update
    jit_compile: str = "auto"  # "auto": Keras decides (XLA on JAX, eager torch); "on": XLA / torch.compile; "off"
    devices: int = 1  # devices to train on (0: every visible one), per process of a group; more than one needs JAX
    model_parallel: int = 1  # devices each model is sharded over (the "model" axis of the mesh)
    peak_flops: float | None = None  # per-device peak FLOP/s for MFU; default from the device's name
    eval_every: int = 250
    eval_blocks: int = 64  # validation blocks scored at each evaluation
    save_every: int = 500
    log_every: int = 10
    seed: int = 0

    def resolved_warmup(self):
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.max_steps)
        return min(100, self.max_steps // 10)
