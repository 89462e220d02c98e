"""The registry of decode engines: which engine runs a model on the active Keras backend, and the
one shared engine each model keeps.

JAX and TensorFlow compile the model's own cache protocol (`prefill_with_cache`, `call_with_cache`:
see zoo.engine.interface) (jax_engine.py, tf_engine.py), so they serve any model that has it, GPT
and seq2seq alike, without knowing which. On PyTorch a model names its plain-torch engine through a
`torch_engine()` static method (its family's twin of the decoder, built from
zoo.layers.torch_blocks, which says why); a model without one runs on the eager reference.
"""

import threading

import keras

from zoo.engine.eager_engine import EagerEngine

_ENGINES_LOCK = threading.Lock()


def new_engine(model):
    """A new engine for `model` on the current Keras backend (nothing shared, nothing compiled yet)."""
    backend = keras.backend.backend()
    if backend == "jax":
        from zoo.engine.jax_engine import JaxEngine as cls
    elif backend == "tensorflow":
        from zoo.engine.tf_engine import TensorFlowEngine as cls
    elif backend == "torch" and hasattr(model, "torch_engine"):
        cls = model.torch_engine()
    else:
        cls = EagerEngine
    return cls(model)


def engine_for(model):
    """The model's shared engine on the current backend, made on first use: its compiled
    functions serve every later request."""
    with _ENGINES_LOCK:
        engine = model.__dict__.get("_zoo_decode_engine")
        if engine is None:
            engine = new_engine(model)
            # Kept on the model itself, past Keras's attribute tracking, so that it lives and dies
            # with the model (a dict keyed by model would keep every model alive through its engine).
            object.__setattr__(model, "_zoo_decode_engine", engine)
        return engine
