"""Choosing the Keras backend (before keras is first imported in the process), the settings a
`zoo` command makes for the process on it (glibc's malloc, JAX's compilation cache), and keeping
TensorFlow's start-up log lines out of the terminal."""

import contextlib
import ctypes
import functools
import importlib.abc
import importlib.util
import os
import platform
import re
import sys
import tempfile
import threading

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


# keras-hub imports TensorFlow whenever it is installed, whatever the backend, for its tf.data
# preprocessing layers, which zoo does not use (zoo tokenizes with `tokenizers`). On jax and torch
# that import is pure cost at every start of the `zoo` command: 4 to 7 s on a 2-core machine, a
# few hundred MB, and TensorFlow's C++ start-up lines on stderr. Python's documented way to make a
# module absent is a None entry in sys.modules: importing it then raises ModuleNotFoundError and
# importlib.util.find_spec returns None, which keras-hub (like our GPU machines, which have no
# TensorFlow) treats as "not installed".
_TENSORFLOW_MODULES = ("tensorflow", "tensorflow_text")


def load_tensorflow_only_for_its_backend(backend):
    """In a process the `zoo` command owns: makes TensorFlow absent unless `backend` is tensorflow
    (see above); undoes that for tensorflow. A TensorFlow already imported stays as it is."""
    for name in _TENSORFLOW_MODULES:
        if backend == "tensorflow":
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        elif name not in sys.modules:
            sys.modules[name] = None


# glibc's malloc gives each thread its own arena of 64 MiB heaps and hands a heap's pages back to
# the OS (or drops the whole heap) as soon as what is free at its top passes M_TOP_PAD (default
# 128 KiB). XLA's CPU runtime under JAX allocates a step's temporaries on its worker threads and
# frees them all at the step's end, so each step's tens of MB were handed back and faulted in
# again page by page: training nanoGPT's shakespeare_char configuration took ~13,000 page faults a
# step, a third of its 60 ms (benchmarks/vs_nanogpt.py). A pad of a whole heap keeps the freed
# pages for the next step; the cost is that the process keeps its peak heap memory. Only on JAX:
# TensorFlow's allocator already keeps its memory (no faults a step), and torch's training ran
# 4-12% slower with the pad (three side-by-side runs). glibc has no per-library setting and no
# Python library tunes it, hence mallopt through ctypes.
_GLIBC_ARENA_HEAP_BYTES = 64 << 20
_M_TOP_PAD = -2  # glibc's malloc.h


def keep_freed_heap_memory(backend):
    """In a process the `zoo` command owns, on JAX: makes glibc's malloc keep freed memory for reuse
    instead of returning it to the OS page by page (see above). Does nothing on another backend,
    where the C library is not glibc, or where the environment already tunes malloc (MALLOC_*,
    GLIBC_TUNABLES=glibc.malloc.*). Returns whether it changed the setting."""
    if backend != "jax" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return bool(ctypes.CDLL(None).mallopt(_M_TOP_PAD, _GLIBC_ARENA_HEAP_BYTES))


# JAX compiles every program afresh in each process unless told where to keep them. Read back
# instead (2-core CPU): nanoGPT's CPU configuration, ~8 s of a `zoo train gpt` start -> ~1 s (600
# kB); `zoo serve` of `make demo`'s bundle, its warm-up of 13 decode functions 7.2-8.2 s -> 1.8 s
# (ready 12.4 -> 5.0 s); `zoo generate` of 32 tokens 5.1-5.9 -> 3.4-3.9 s. Weights are the compiled
# programs' arguments, so another version of a model of the same shapes reads them back too.
JAX_CACHE_MAX_BYTES = 1 << 30


def use_compilation_cache(backend):
    """In a process the `zoo` command owns, on JAX: keeps compiled programs in a persistent cache
    (JAX's own, keyed by the program and the versions and devices, least recently used entries
    dropped beyond 1 GB) so that the next run of the same shapes (a resumed run, a restarted server,
    the next `zoo generate`) skips compiling: in $ZOO_JAX_CACHE_DIR, else $XDG_CACHE_HOME/zoo/jax,
    else ~/.cache/zoo/jax. A cache configured for JAX already (JAX_COMPILATION_CACHE_DIR) is left
    as it is; ZOO_JAX_CACHE_DIR=off turns it off. Does nothing on another backend. Call before
    anything compiles. Returns the directory in use, or None."""
    if backend != "jax":
        return None
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = os.environ.get("ZOO_JAX_CACHE_DIR")
    if directory == "off":
        return None
    if not directory:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "zoo", "jax")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:  # a read-only home, say: compile as before
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_MAX_BYTES)
    return directory


@functools.cache
def on_cpu():
    """Whether this process's Keras maths runs on a CPU: no accelerator visible to JAX or
    TensorFlow; on torch (which has no Keras distribution API), where Keras makes its tensors."""
    import keras

    if keras.config.backend() == "torch":
        return str(keras.ops.convert_to_tensor(0.0).device).startswith("cpu")
    return all(device.lower().startswith("cpu") for device in keras.distribution.list_devices())


@functools.cache
def jax_or_tensorflow_on_cpu():
    """Whether this process's Keras maths runs on a CPU through JAX or TensorFlow (no GPU or TPU
    visible): XLA's generic lowering of every op, or TensorFlow's graph ops, with no fused attention
    kernel either way."""
    import keras

    return keras.config.backend() in ("jax", "tensorflow") and on_cpu()


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


# --- TensorFlow's start-up noise ---------------------------------------------------------------------------
#
# TensorFlow's C++ side logs while it loads (on the tensorflow backend, or wherever a program that
# imports zoo lets keras-hub import it): "Could not find cuda drivers on your machine"
# (cudart_stub.cc) on a machine without a GPU, "Unable to register cuDNN factory" on one with JAX
# or torch beside it.
# These go through absl's C++ logging before anything has called absl::InitializeLog(), which
# writes every message to stderr (after "WARNING: All log messages before absl::InitializeLog() is
# called are written to STDERR") whatever TF_CPP_MIN_LOG_LEVEL says: that variable only reaches
# TensorFlow's own logging, set up later (it does still hide the oneDNN and CPU-feature lines,
# hence TF_CPP_MIN_LOG_LEVEL=2 below). No environment variable reaches absl's C++ threshold, so
# the import of TensorFlow runs with file descriptor 2 pointed at a temporary file, and what it
# wrote is then written to the real stderr, less the lines below. Everything else (a TensorFlow
# error, a Python warning printed meanwhile) still arrives, only after the import.

_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    # absl's format: severity letter, MMDD, time, thread id, file:line]. Any INFO line, and the
    # warnings and errors that every TensorFlow start-up beside another CUDA framework prints.
    r"|I\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] .*"
    r"|[WE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning: Could not find TensorRT).*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.")
_NOISY_MODULES = ("tensorflow", "tensorflow_text", "keras_hub")  # what the first import of loads TensorFlow
_capturing = {"depth": 0}  # fd 2 is the process's: one capture at a time, nested ones join it
_capturing_lock = threading.Lock()


def is_tensorflow_noise(line):
    """Whether `line` (without its newline) is one of TensorFlow's known start-up log lines."""
    return _NOISE.fullmatch(line.rstrip("\r\n")) is not None


@contextlib.contextmanager
def filtered_stderr(keep=lambda line: not is_tensorflow_noise(line)):
    """Runs the block with file descriptor 2 (C and C++ code's stderr, and Python's) captured; then
    writes the captured lines for which `keep(line)` is true to the real stderr. Nested uses are
    part of the outermost one."""
    with _capturing_lock:
        outermost = _capturing["depth"] == 0
        _capturing["depth"] += 1
    try:
        if not outermost:
            yield
            return
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable fd 2 (an embedding host): nothing to filter
            yield
            return
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", errors="replace")
                kept = "".join(line for line in text.splitlines(keepends=True) if keep(line))
                if kept:
                    os.write(2, kept.encode("utf-8"))
    finally:
        with _capturing_lock:
            _capturing["depth"] -= 1


class _QuietLoader(importlib.abc.Loader):
    """Runs a module's loader inside `filtered_stderr`, then hands the module back its own loader."""

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_resource_reader, is_package, get_code, ...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        try:
            with filtered_stderr():
                self.loader.exec_module(module)
        finally:
            module.__loader__ = module.__spec__.loader = self.loader


class _QuietTensorFlowImports(importlib.abc.MetaPathFinder):
    """Imports the modules of `_NOISY_MODULES` the first time through `filtered_stderr`."""

    def find_spec(self, name, path=None, target=None):
        if name not in _NOISY_MODULES or getattr(self, "_finding", False):
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


_HOOK = _QuietTensorFlowImports()


def quiet_tensorflow_startup():
    """Keeps TensorFlow's start-up log lines (see above) out of stderr for the rest of the process:
    sets TF_CPP_MIN_LOG_LEVEL=2 unless it is set (errors still show; 3 would hide them too) and
    filters the C++ lines printed while TensorFlow is first imported. Call it before anything
    imports keras or keras-hub. TF_CPP_MIN_LOG_LEVEL=0 turns it off, to see everything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" or "tensorflow" in sys.modules:
        return
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
