"""Atomic files and training checkpoints.

A checkpoint is one .npz holding every model variable and every optimizer variable (moments,
step counter) by position, plus the variables' paths to check that it fits the model. Plain
numpy arrays, so a checkpoint written on one backend resumes on any other.
"""

import json
import re
from pathlib import Path

import keras
import numpy as np

from zoo.atomic import atomic_write
from zoo.errors import ZooError

_NAME = re.compile(r"^step-(\d{8})\.npz$")
KEEP = 3


def _arrays(model):
    optimizer = model.optimizer
    arrays = {f"model/{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.variables)}
    arrays.update({f"optimizer/{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(optimizer.variables)})
    paths = {"model": [v.path for v in model.variables], "optimizer": [v.path for v in optimizer.variables]}
    arrays["paths"] = np.frombuffer(json.dumps(paths).encode(), dtype=np.uint8)
    return arrays


def save_checkpoint(directory, model, step):
    """Writes `directory/step-XXXXXXXX.npz` atomically and keeps the newest KEEP checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(model)
    path = directory / f"step-{step:08d}.npz"
    atomic_write(path, lambda f: np.savez(f, **arrays))
    for old in sorted(p for p in directory.iterdir() if _NAME.match(p.name))[:-KEEP]:
        old.unlink()
    return path


def latest_checkpoint(directory):
    """The newest checkpoint in `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    found = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    return found[-1] if found else None


def checkpoint_step(path):
    return int(_NAME.match(Path(path).name).group(1))


def restore_checkpoint(path, model, with_optimizer=True):
    """Loads a checkpoint's variables into `model` (and its built optimizer)."""
    with np.load(path, allow_pickle=False) as data:
        paths = json.loads(bytes(data["paths"]).decode())
        groups = [("model", model.variables)]
        if with_optimizer:
            groups.append(("optimizer", model.optimizer.variables))
        for group, variables in groups:
            if len(paths[group]) != len(variables):
                raise ZooError(f"{path}: holds {len(paths[group])} {group} variables, the {group} has {len(variables)}; "
                               "was it written with other model settings?")
            for i, variable in enumerate(variables):
                value = data[f"{group}/{i}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ZooError(f"{path}: {paths[group][i]} has shape {value.shape}, the model expects {variable.shape}")
                variable.assign(value)
