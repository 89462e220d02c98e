"""Put on PYTHONPATH to make this Python behave as if TensorFlow were not installed (as on the GPU
machines, which have CUDA builds of JAX and torch only)."""

import sys


class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_text", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)", name=name)
        return None


sys.meta_path.insert(0, _NoTensorFlow())
