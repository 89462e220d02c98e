"""Choosing the Keras backend. It must happen before keras is first imported in the process."""

import os
import sys

from zoo.errors import ZooError

BACKENDS = ("jax", "tensorflow", "torch")


def select_backend(name=None):
    """Sets KERAS_BACKEND to `name`, else keeps $KERAS_BACKEND, else picks jax; returns the name.

    Raises ZooError for an unknown name, or if keras was already imported with another backend
    (keras reads the variable once, at import).
    """
    name = name or os.environ.get("KERAS_BACKEND") or "jax"
    if name not in BACKENDS:
        raise ZooError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise ZooError(f"keras is already imported with backend {current!r}; cannot switch to {name!r}")
    os.environ["KERAS_BACKEND"] = name
    return name


def describe():
    """Backend, library versions and visible devices, as a dict (for `zoo info`)."""
    import keras

    import zoo

    backend = keras.backend.backend()
    info = {"zoo": zoo.__version__, "backend": backend, "keras": keras.__version__}
    try:
        import keras_hub

        info["keras_hub"] = keras_hub.__version__
    except ImportError:
        info["keras_hub"] = None
    if backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["devices"] = [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]
    elif backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.name for d in tf.config.list_logical_devices()]
    else:
        import torch

        info["torch"] = torch.__version__
        info["devices"] = ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    return info
