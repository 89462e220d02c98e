"""Put on PYTHONPATH to make this Python behave as if TensorFlow were not installed (as on the GPU
machines, which have CUDA builds of JAX and torch only): the path finder no longer finds it, so
`importlib.util.find_spec("tensorflow")` is None and `import tensorflow` raises ModuleNotFoundError,
exactly as when it is absent."""

import importlib.machinery
import sys

BLOCKED = ("tensorflow", "tensorflow_text", "tf_keras")


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
