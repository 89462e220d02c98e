"""Training settings, importable without keras (so bad flags fail before the slow imports)."""

import dataclasses


@dataclasses.dataclass
class TrainConfig:
    """The knobs of a run; every one is a `zoo train` flag."""

    max_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    min_learning_rate_ratio: float = 0.1  # the cosine ends at learning_rate * this
    warmup_steps: int | None = None  # default: 10% of max_steps, at most 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta_2: float = 0.99
    precision: str = "fp32"  # or "bf16"
    eval_every: int = 250
    eval_blocks: int = 64  # validation blocks scored at each evaluation
    save_every: int = 500
    log_every: int = 10
    seed: int = 0

    def resolved_warmup(self):
        if self.warmup_steps is not None:
            return min(self.warmup_steps, self.max_steps)
        return min(100, self.max_steps // 10)
