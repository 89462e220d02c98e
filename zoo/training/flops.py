"""Model FLOPs per token, known device peaks, and model FLOPs utilisation (MFU).

MFU = achieved model FLOP/s / peak FLOP/s, where the model FLOPs are those the maths needs
(nanoGPT's `estimate_mfu`, after the PaLM paper's appendix B): 6 per parameter per token for the
forward and backward matmuls, plus 12 * layers * context * width for attention's two
(context x context) products. Recomputation and padding do not count, so MFU compares runs fairly
across backends and devices.

Importable without keras; `device_name()` imports only the active backend's framework.
"""

import re

# Dense (no sparsity) tensor-core peaks per device in FLOP/s, from NVIDIA's data sheets. "fp32" is
# the TF32 tensor-core peak where the device has one: JAX/XLA run float32 matmuls in TF32 by default
# on Ampere and later. Listed most specific first: the first pattern found in the name wins.
PEAK_FLOPS = [
    (r"H100.*PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12}),
    (r"H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12}),  # SXM
    (r"H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 494.5e12}),
    (r"A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12}),
    (r"L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 183e12}),
    (r"\bL4\b", {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12}),
    (r"\bA10\b", {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12}),
    (r"V100", {"fp16": 125e12, "fp32": 15.7e12}),
    (r"\bT4\b", {"fp16": 65e12, "fp32": 8.1e12}),
]


def flops_per_token(params_non_embedding, num_layers, seq_len, hidden_dim):
    """Training FLOPs per token: 6N + 12*L*T*H, as nanoGPT's `estimate_mfu` counts them.

    N counts every weight that is multiplied per token; as in nanoGPT that leaves out the
    position embedding (a lookup) but keeps the token embedding, which doubles as the output
    projection.
    """
    return 6 * params_non_embedding + 12 * num_layers * seq_len * hidden_dim


def model_flops_per_token(model, seq_len):
    """`flops_per_token` for a built Keras model: N from its trainable weights less any whose path
    names a position embedding; the attention term when the model has `num_layers` and
    `hidden_dim` (every zoo transformer does), else 6N alone. A model that counts its own (one
    without attention, say) gives `training_flops_per_token(seq_len)`."""
    if hasattr(model, "training_flops_per_token"):
        return model.training_flops_per_token(seq_len)
    params = sum(_count(w) for w in model.trainable_weights if "position_embedding" not in w.path)
    layers, width = getattr(model, "num_layers", 0), getattr(model, "hidden_dim", 0)
    return flops_per_token(params, layers, seq_len or 0, width)


def _count(weight):
    count = 1
    for dim in weight.shape:
        count *= int(dim)
    return count


def peak_flops(device, precision):
    """The table's per-device peak for `device` (a name such as "NVIDIA H100 80GB HBM3") at
    `precision` ("fp32", "bf16", "fp16"), or None when the device is not in the table."""
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, device or ""):
            return peaks.get(precision)
    return None


def device_name():
    """The name of the first accelerator the active Keras backend uses ("cpu" without one)."""
    from zoo.training.accelerator import active_backend

    backend = active_backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "cpu"
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")


def mfu(tokens_per_s, flops_per_token_, peak_per_device, devices=1):
    """Model FLOPs utilisation, a fraction; None without a known peak."""
    if not peak_per_device or not flops_per_token_:
        return None
    return tokens_per_s * flops_per_token_ / (peak_per_device * devices)


class Throughput:
    """What MFU needs for a run: FLOPs per token, per-device peak, device count, and where the
    peak came from (for the start-up line)."""

    def __init__(self, flops_per_token_, precision, devices=1, override=None, device=None):
        self.flops_per_token, self.devices = flops_per_token_, devices
        self.device = device if device is not None else device_name()
        if override:
            self.peak, self.source = override, f"--peak-flops {override:.4g}"
        else:
            self.peak = peak_flops(self.device, precision)
            self.source = f"{self.device}, {precision}" if self.peak else None

    def mfu(self, tokens_per_s):
        return mfu(tokens_per_s, self.flops_per_token, self.peak, self.devices)

    def describe(self):
        text = f"{self.flops_per_token / 1e6:,.2f} MFLOPs/token"
        if self.peak:
            return text + f"; peak {self.peak / 1e12:,.1f} TFLOP/s per device ({self.source}) x {self.devices}"
        return text + f"; no known peak for {self.device!r}, so no MFU (pass --peak-flops to report it)"
