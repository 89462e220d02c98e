"""Run as `python probe_bundles.py BUNDLE...` under some KERAS_BACKEND: prints, per bundle, the
model's outputs for fixed inputs and its decoded answer, as JSON, for the cross-backend tests.

gpt: logits for fixed tokens and a greedy continuation; bert classifiers: class probabilities
and labels of fixed texts; seq2seq: logits for fixed token ids and a greedy translation.
"""

import json
import sys

import keras
import numpy as np

from zoo import families
from zoo.bundle import load_model, load_runtime
from zoo.engine import SamplingConfig

TEXTS = ["Mot de passe oublié", "Show all results", "Passwort zurücksetzen"]

results = {}
for path in sys.argv[1:]:
    model, tokenizer, info = load_model(path)
    rng = np.random.default_rng(0)
    runtime, _ = load_runtime(path)
    if info.kind == "bert":
        probabilities, _ = runtime.probabilities(TEXTS)
        outputs, answer = probabilities, [info.labels[i] for i in probabilities.argmax(axis=1)]
    elif info.kind == "seq2seq":
        source = families.get("seq2seq").source_tokenizer(path)
        inputs = {"source_ids": rng.integers(0, source.vocabulary_size, (2, 12)).astype("int32"),
                  "source_padding_mask": np.ones((2, 12), dtype=bool),
                  "target_ids": rng.integers(0, tokenizer.vocabulary_size, (2, 10)).astype("int32")}
        outputs = keras.ops.convert_to_numpy(model(inputs))
        answer = runtime.generate("Forgot your password?", SamplingConfig(temperature=0, max_new_tokens=15)).token_ids
    else:
        tokens = rng.integers(0, tokenizer.vocabulary_size, (2, 20)).astype("int32")
        outputs = keras.ops.convert_to_numpy(model(tokens))
        answer = runtime.generate(
            "KING.", SamplingConfig(max_new_tokens=15, temperature=0)).token_ids
    results[path] = {"backend": keras.backend.backend(), "outputs": np.asarray(outputs).tolist(), "answer": answer}
print(json.dumps(results))
