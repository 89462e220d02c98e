"""Training on more than one device with `keras.distribution` (JAX only).

`--devices N` replicates the model on N devices (N per process in a multi-process run,
zoo/training/cluster.py) and splits each batch between them
(`keras.distribution.DataParallel`): the same maths as one device with the same global batch.
`--model-parallel M` arranges the N devices as an (N/M) x M mesh, ("batch", "model"), and shards
the large kernels over the "model" axis with a family's layout map (e.g. zoo/families/gpt/layout.py), Megatron
style: the QKV and MLP-in kernels by output column, the attention-out and MLP-out kernels by input
row, the embeddings by width.

Keras 3 implements its distribution API for JAX only (the TensorFlow backend's is a prototype
marked "DO NOT USE", and torch has none), so on TensorFlow and torch anything but one device is
refused with that reason.
"""

from zoo.errors import ZooError
from zoo.training import cluster


def check(config, backend):
    """Refuses settings that cannot work before anything slow happens."""
    if config.devices < 0 or config.model_parallel < 1:
        raise ZooError("--devices must be 0 (all) or more, --model-parallel 1 or more")
    if (config.devices != 1 or config.model_parallel != 1) and backend != "jax":
        raise ZooError(f"--devices {config.devices} / --model-parallel {config.model_parallel}: training on more than "
                       f"one device uses keras.distribution, which Keras implements for the JAX backend only "
                       f"(this is {backend}); use --backend jax, or one device")


def make_distribution(config, layout_map=None):
    """The keras.distribution for `config` (None for one device). `layout_map(device_mesh)` gives
    the family's LayoutMap, needed for --model-parallel. Set it (`with distribution.scope():`)
    before building the model, so its variables are created with their layouts."""
    import keras

    processes = cluster.current().num_processes
    if config.devices == 1 and config.model_parallel == 1 and processes == 1:
        return None
    check(config, keras.backend.backend())
    if processes > 1:
        if config.model_parallel != 1:
            raise ZooError("--model-parallel: a multi-process run is data-parallel only (a sharded weight would "
                           "span processes, and checkpoints read every weight in process 0)")
        devices = _group_devices(config.devices)
    else:
        visible = keras.distribution.list_devices()
        count = config.devices or len(visible)
        if count > len(visible):
            raise ZooError(f"--devices {count}: only {len(visible)} device(s) visible ({', '.join(map(str, visible))})")
        devices = visible[:count]
    count = len(devices)
    if count % config.model_parallel:
        raise ZooError(f"--model-parallel {config.model_parallel} does not divide the {count} devices")
    replicas = count // config.model_parallel
    if config.batch_size % replicas:
        raise ZooError(f"--batch-size {config.batch_size} is not a multiple of the {replicas} data-parallel "
                       f"replicas: each gets an equal share of the batch")
    if config.model_parallel == 1:
        # In a group each process feeds its own rows (cluster.ProcessShard) and the whole evaluation
        # set (a batch of N copies: the same mean loss), not a tf.data pipeline for Keras to shard.
        return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=processes == 1)
    if layout_map is None:
        raise ZooError("--model-parallel: this model family has no layout map; use data parallelism (--devices)")
    mesh = keras.distribution.DeviceMesh((replicas, config.model_parallel), ["batch", "model"], devices=devices)
    return keras.distribution.ModelParallel(layout_map=layout_map(mesh), batch_dim_name="batch")


def _group_devices(per_process):
    """The first `per_process` devices (0: all) of every process of a multi-process group, process
    by process: keras.distribution.list_devices() gives them all but not whose they are."""
    import jax  # a group is JAX only (zoo.training.cluster)

    chosen = []
    for process in range(jax.process_count()):
        own = [d for d in jax.devices() if d.process_index == process]
        if per_process > len(own):
            raise ZooError(f"--devices {per_process}: process {process} has only {len(own)} device(s)")
        chosen += [f"{d.platform}:{d.id}" for d in own[:per_process or len(own)]]
    return chosen


def describe(distribution):
    if distribution is None:
        return "1 device"
    mesh = distribution.device_mesh
    shape = " x ".join(f"{size} {name}" for size, name in zip(mesh.shape, mesh.axis_names))
    processes = cluster.current().num_processes
    group = f" in {processes} processes" if processes > 1 else ""
    return f"{type(distribution).__name__} over {mesh.devices.size} devices{group} ({shape})"


def device_count(distribution):
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)
