"""Trains the same tiny GPT on one device, data-parallel over every device, and model-parallel
(2-way) over them, and prints each run's per-step training losses and final validation loss as
JSON. Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 KERAS_BACKEND=jax.

    python tests/helpers/distributed_training.py CORPUS OUT_DIR
"""

import json
import sys
from pathlib import Path

from zoo.training import distribution
from zoo.training.config import TrainConfig
from zoo.families.gpt.layout import gpt_layout_map
from zoo.families.gpt.training import train_gpt

MODEL = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64, max_length=32)


def main(corpus, out):
    import jax

    results = {"devices_visible": jax.device_count()}
    for name, devices, model_parallel in [("one", 1, 1), ("data", 0, 1), ("model", 0, 2)]:
        config = TrainConfig(max_steps=4, batch_size=16, learning_rate=3e-3, eval_every=4, eval_blocks=16, log_every=1,
                             devices=devices, model_parallel=model_parallel)
        summary = train_gpt(Path(out) / name, data=corpus, model_overrides=MODEL, tokenizer_kind="char",
                            train_config=config)
        metrics = [json.loads(line) for line in (Path(out) / name / "metrics.jsonl").read_text().splitlines()]
        results[name] = {"losses": [m["loss"] for m in metrics], "val_loss": summary["val_loss"],
                         "devices": summary["devices"]}
    # Where the model-parallel layout puts the variables: sharded, not silently replicated.
    from zoo.families.gpt.model import GPT

    spread = distribution.make_distribution(TrainConfig(batch_size=16, devices=0, model_parallel=2),
                                            gpt_layout_map)
    with spread.scope():
        model = GPT(vocabulary_size=64, **MODEL)
        model.build()
    results["sharding"] = {v.path: str(v.value.sharding.spec) for v in model.weights
                           if v.path.endswith(("qkv/kernel", "mlp_out/kernel", "token_embedding/embeddings"))}
    print(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
