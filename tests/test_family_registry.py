"""Adding a model family is one folder plus one registry entry: a throw-away family, written here
into a temporary package and named in $ZOO_FAMILIES (the registry's hook for families kept outside
zoo/families/), is trained, exported, loaded and served by the real `zoo` commands and server
without any other module knowing it."""

import json
import os
import sys
import textwrap

import pytest

from conftest import run_zoo, zoo_json
from server.client import ZooClient
from server_process import ServerProcess

# A bigram language model: the whole family in one module, as a family folder would hold it.
TOY_FAMILY = '''
"""A throw-away family: a bigram language model (next-token logits from the current token alone)."""

import click
import numpy as np

from zoo.families import Family

PRESETS = {"tiny": {"max_length": 32}}


class ToyFamily(Family):
    name = "toybigram"
    description = "a bigram language model (test only)"
    presets = PRESETS
    tasks = ("generate",)

    def train_command(self):
        return train_toy

    def model_class(self, task):
        return Bigram

    def runtime(self, task, model, tokenizer, path, info):
        return BigramGenerator(model, tokenizer) if task == "generate" else None


import keras  # noqa: E402  (a real family imports keras inside its hooks; a test module may not bother)


@keras.saving.register_keras_serializable(package="toybigram")
class Bigram(keras.Model):
    def __init__(self, vocabulary_size, max_length, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size, self.max_length = vocabulary_size, max_length
        self.table = keras.layers.Embedding(vocabulary_size, vocabulary_size, name="table")

    def build(self, input_shape=None):
        self.table.build((None, None))
        self.built = True

    def call(self, token_ids, training=False):
        return keras.ops.cast(self.table(token_ids), "float32")

    def get_config(self):
        return {**super().get_config(), "vocabulary_size": self.vocabulary_size, "max_length": self.max_length}


class BigramGenerator:
    continues_prompt = True

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def prompt_ids(self, prompt, config):
        from zoo.errors import ZooError

        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise ZooError("the prompt is empty")
        return ids

    def stream(self, prompt, config):
        from zoo.engine import Continuation

        config.validate()
        ids = self.prompt_ids(prompt, config)
        continuation = Continuation(self.tokenizer, ids, config, config.max_new_tokens or 16)
        token = ids[-1]
        while True:
            logits = keras.ops.convert_to_numpy(self.model(np.asarray([[token]], "int32")))[0, -1]
            yield from continuation.feed(logits)
            if continuation.done:
                break
            token = continuation.last_token
        return (yield from continuation.close())

    def generate(self, prompt, config, on_text=None):
        from zoo.engine import run_stream

        return run_stream(self.stream(prompt, config), on_text)


from zoo.training.options import training_command  # noqa: E402


@click.command()
@click.option("--data", type=click.Path(), default=None, help="A .txt corpus.")
@training_command("toybigram")
def train_toy(data, **run_options):
    """Train a bigram language model.

    \\b
    Example:
      zoo train toybigram --data corpus.txt --out runs/toy
    """
    import dataclasses

    from zoo.data import DEFAULT_CORPUS, BlockBatches, encode_documents, read_documents, split_documents, validation_blocks
    from zoo.tokenizers import train_char
    from zoo.training import run

    out, train_config = run_options["out"], run_options["train_config"]
    run.check_new_run(out)
    train_docs, val_docs = split_documents(read_documents(data), 0.1)
    tokenizer = train_char(train_docs)
    config = {"kind": "toybigram", "task": "generate", "preset": "tiny",
              "model": {**PRESETS["tiny"], "vocabulary_size": tokenizer.vocabulary_size},
              "tokenizer": {"kind": tokenizer.kind, "vocabulary_size": tokenizer.vocabulary_size},
              "train": dataclasses.asdict(train_config), "data": run.data_entry(data, DEFAULT_CORPUS)}
    run.write_run(out, config, {"": tokenizer}, False, run_options["command"])
    seq_len = 16
    batches = BlockBatches(encode_documents(tokenizer, train_docs), seq_len, train_config.batch_size, train_config.seed)
    validation = validation_blocks(encode_documents(tokenizer, val_docs), seq_len, 8)

    def evaluate(model):
        return {"val_loss": float(model.evaluate(*validation, verbose=0, return_dict=True)["loss"])}

    def build_model():
        model = Bigram(**config["model"])
        model.build()
        return model

    return run.fit(out, config, train_config, build_model, batches, validation, evaluate, False)


FAMILY = ToyFamily()
'''


@pytest.fixture(scope="module")
def toy_family(tmp_path_factory):
    """The family's package on PYTHONPATH and in $ZOO_FAMILIES, for this process and its children."""
    root = tmp_path_factory.mktemp("plugins")
    (root / "toybigram").mkdir()
    (root / "toybigram" / "__init__.py").write_text(textwrap.dedent(TOY_FAMILY), encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "ZOO_FAMILIES")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), saved["PYTHONPATH"]]))
    os.environ["ZOO_FAMILIES"] = "toybigram"
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.backend_independent
def test_a_family_added_outside_zoo_trains_exports_loads_and_serves(toy_family, tmp_path, small_corpus, backend):
    """Each `zoo` runs in a process of its own, as a user's would: one that finds the family at
    start-up through $ZOO_FAMILIES, not this one, which has loaded the registry already."""
    from zoo import families
    from zoo.bundle import load_runtime
    from zoo.engine import SamplingConfig

    assert "toybigram" in run_zoo("train", "--help", check=True, own_process=True).stdout
    run, bundle = tmp_path / "run", tmp_path / "bundle"
    summary = zoo_json("train", "toybigram", "--data", small_corpus, "--out", run, "--max-steps", "60",
                       "--batch-size", "16", "--lr", "1e-1", "--eval-every", "30", own_process=True)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert summary["step"] == 60 and losses[-1] < losses[0] - 0.5  # it learned bigrams
    run_zoo("export", run, "--out", bundle, check=True, own_process=True)
    assert json.loads((bundle / "zoo.json").read_text())["kind"] == "toybigram"

    generated = zoo_json("generate", bundle, "--prompt", "ROMEO", "--max-new-tokens", "12", "--temperature", "0",
                         own_process=True)
    assert families.get("toybigram").name == "toybigram"  # this process found it through $ZOO_FAMILIES too
    generator, info = load_runtime(bundle)
    local = generator.generate("ROMEO", SamplingConfig(max_new_tokens=12, temperature=0))
    assert generated["token_ids"] == local.token_ids and len(local.token_ids) == 12
    assert len(set(local.token_ids)) > 1  # a trained bigram model does not repeat one character

    server = ServerProcess(bundle, backend=backend)
    try:
        with ZooClient(server.address, timeout=60) as client:
            response = client.generate("bundle", "ROMEO", max_new_tokens=12, temperature=0)
            assert list(response.token_ids) == local.token_ids and response.text == local.text
            streamed = "".join(m.chunk.text for m in client.stream("bundle", "ROMEO", max_new_tokens=12, temperature=0)
                               if m.HasField("chunk"))
            assert streamed == local.text
    finally:
        server.stop()


@pytest.mark.backend_independent
def test_an_unknown_family_is_a_one_line_error(tmp_path):
    from conftest import ROOT

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    info = json.loads((ROOT / "tests" / "fixtures" / "bundles_v1" / "gpt" / "zoo.json").read_text())
    (bundle / "zoo.json").write_text(json.dumps({**info, "kind": "nosuchfamily"}))
    result = run_zoo("generate", bundle, "--prompt", "x")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: model family 'nosuchfamily' is not known")
