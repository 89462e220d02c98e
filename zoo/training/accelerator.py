"""What the device can do for a run: mixed precision, the attention kernel, the compiled step,
peak memory. Each function imports only the active backend's framework, so the JAX and torch paths
never import TensorFlow."""

import os
import resource
import sys
import warnings

from zoo.errors import ZooError

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def active_backend():
    if "keras" in sys.modules:  # keras fixes its backend at import
        return sys.modules["keras"].backend.backend()
    return os.environ.get("KERAS_BACKEND", "jax")


def bf16_unsupported():
    """Why the first GPU cannot compute in bfloat16 (pre-Ampere CUDA), or None when it can. CPUs
    and TPUs can (XLA and torch emulate it where the hardware lacks it)."""
    backend = active_backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        capability = getattr(device, "compute_capability", None)
        if device.platform == "gpu" and capability and float(capability) < 8.0:
            return f"{device.device_kind} (compute capability {capability}) has no bfloat16"
        return None
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            try:  # newer torch counts slow emulation as support unless told not to
                native = torch.cuda.is_bf16_supported(including_emulation=False)
            except TypeError:
                native = torch.cuda.is_bf16_supported()
            if not native:
                return f"{torch.cuda.get_device_name(0)} has no bfloat16"
        return None
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        if details.get("compute_capability", (8, 0)) < (8, 0):
            return f"{details.get('device_name', 'the GPU')} has no bfloat16"
    return None


def set_precision(precision):
    """Sets Keras's global dtype policy for `precision` (fp32, bf16, fp16); call before building
    the model. bf16 on a GPU without bfloat16 falls back to fp16 (mixed_float16, with loss scaling),
    reported once. Returns the precision in effect."""
    import keras

    if precision == "bf16" and (reason := bf16_unsupported()):
        print(f"precision: fp16 instead of bf16 ({reason}); float16 trains with dynamic loss scaling",
              file=sys.stderr)
        precision = "fp16"
    if precision == "fp16" and active_backend() == "jax":
        import jax

        if jax.devices()[0].platform == "cpu":  # XLA:CPU has no float16 matmul with float32 accumulation
            raise ZooError("--precision fp16 is for GPUs without bfloat16; JAX on the CPU cannot multiply float16 "
                           "matrices (use bf16 or fp32)")
    keras.config.set_dtype_policy(POLICIES[precision])
    return precision


def _attention_shape(model):
    heads, width = getattr(model, "num_heads", None), getattr(model, "hidden_dim", None)
    return (heads, width // heads) if heads and width else None


def attention_path(model, seq_len):
    """One line naming the attention kernel that `keras.ops.dot_product_attention` (with
    flash_attention left to Keras) uses for this model and device, and why when it is not a fused
    flash kernel. Probes with the model's head shape and compute dtype."""
    shape = _attention_shape(model)
    if shape is None:
        return "none (the model has no attention heads: no num_heads)"
    dtype = model.dtype_policy.compute_dtype
    try:
        return {"jax": _jax_attention, "torch": _torch_attention, "tensorflow": _tf_attention}[active_backend()](
            shape, seq_len, dtype)
    except Exception as e:  # a probe must never stop training; say what happened instead
        return f"unknown (the probe failed: {type(e).__name__}: {e})"


def _jax_attention(shape, seq_len, dtype):
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    if device.platform == "tpu":
        return "flash (Splash kernel on TPU)"
    if device.platform != "gpu":
        return _XLA_CPU_ATTENTION
    heads, head_dim = shape
    q = jnp.zeros((1, seq_len, heads, head_dim), dtype)
    try:  # Keras's own test, the one dot_product_attention runs (private, so guarded)
        from keras.src.backend.jax.nn import _can_use_flash_attention

        _can_use_flash_attention(q, q, q, None, raise_error=True)
    except ImportError:
        pass
    except Exception as e:
        return f"XLA (fallback: {_first_line(e)})"
    try:  # Keras falls back to XLA (logging the error) if cuDNN then refuses, e.g. for float32
        def loss(x):
            return jax.nn.dot_product_attention(x, x, x, is_causal=True, implementation="cudnn").astype("float32").sum()

        jax.block_until_ready(jax.jit(jax.grad(loss))(q))
    except Exception as e:
        return f"XLA (fallback: cuDNN attention refused {dtype} x {shape}: {_first_line(e)})"
    return "flash (cuDNN fused attention)"


def _torch_attention(shape, seq_len, dtype):
    import torch

    if not torch.cuda.is_available():
        return "PyTorch SDPA, its CPU kernel (fused flash attention needs CUDA)"
    heads, head_dim = shape
    q = torch.zeros((1, heads, seq_len, head_dim), dtype=getattr(torch, dtype), device="cuda")
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    try:
        params = SDPAParams(q, q, q, None, 0.0, True, False)
    except TypeError:  # older signature, without enable_gqa
        params = SDPAParams(q, q, q, None, 0.0, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = can_use_flash_attention(params, True)
    if usable:
        return "flash (PyTorch SDPA flash kernel)"
    reason = "; ".join(str(w.message).splitlines()[0] for w in caught) or "inputs not supported"
    return f"PyTorch SDPA, another fused or math kernel (no flash: {reason})"


def _tf_attention(shape, seq_len, dtype):
    from zoo.backend import jax_or_tensorflow_on_cpu

    if jax_or_tensorflow_on_cpu():
        return _XLA_CPU_ATTENTION
    return "TensorFlow's attention ops in the step's graph (fallback: Keras has no fused flash attention on TensorFlow)"


_XLA_CPU_ATTENTION = ("batched matmuls (zoo.layers.attention.causal_attention; fused flash attention needs a CUDA "
                      "GPU or TPU, and XLA on a CPU runs these faster than its dot_product_attention)")


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def compiled_step(model):
    """How the training step runs, for the start-up line."""
    backend = active_backend()
    if backend == "torch":
        return "torch.compile" if model.jit_compile else "torch eager (--jit-compile on for torch.compile)"
    if backend == "tensorflow" and not model.jit_compile:
        # Keras leaves XLA off for TensorFlow on a machine without an accelerator.
        return "tf.function graph without XLA (--jit-compile on for XLA)"
    return "XLA-compiled" if model.jit_compile else "eager (--jit-compile off)"


def peak_memory():
    """{"device_peak_bytes": ..., "host_peak_rss_bytes": ...}; the device entry only on an accelerator."""
    result = {"host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    backend = active_backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and "peak_bytes_in_use" in stats:
            result["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            result["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return result
