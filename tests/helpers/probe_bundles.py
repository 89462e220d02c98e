"""Run as `python probe_bundles.py BUNDLE...` under some KERAS_BACKEND: prints, per bundle, the
logits for fixed tokens and a greedy continuation, as JSON, for the cross-backend tests."""

import json
import sys

import keras
import numpy as np

from zoo.bundle import load_model
from zoo.engine import Generator, SamplingConfig

results = {}
for path in sys.argv[1:]:
    model, tokenizer, _ = load_model(path)
    tokens = np.random.default_rng(0).integers(0, tokenizer.vocabulary_size, (2, 20)).astype("int32")
    greedy = Generator(model, tokenizer).generate("KING.", SamplingConfig(max_new_tokens=15, temperature=0))
    results[path] = {"backend": keras.backend.backend(),
                     "logits": keras.ops.convert_to_numpy(model(tokens)).tolist(),
                     "greedy": greedy.token_ids}
print(json.dumps(results))
