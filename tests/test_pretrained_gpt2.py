"""`zoo import` of Hugging Face GPT-2 checkpoints, against transformers itself (a test-only
dependency). Nothing is downloaded: a tiny GPT-2 with random weights and a byte-level BPE trained
here are saved with transformers' own `save_pretrained`, as a user's checkpoint directory is."""

import json
import os

import numpy as np
import pytest

from conftest import CORPUS, checkpoint_variant, run_zoo

# English, accented, CJK and emoji text: the tokenizer must give transformers' ids on all of them.
TEXTS = ["ROMEO. But soft, what light through yonder window breaks?", "Ça été très dérangeant, naïve Zoë.",
         "東京は日本の首都です。", "Good luck 🍀🚀 with that!", "  leading spaces\tand\ttabs\n"]


def _tokenizer_for_tests(transformers):
    """A GPT2TokenizerFast over a byte-level BPE of 500 tokens trained on the shipped corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS.read_text(encoding="utf-8").splitlines()[:3000], trainer)
    return transformers.GPT2TokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                          eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def transformers_greedy(reference, hf_tokenizer, prompt, new_tokens):
    """transformers' greedy continuation of the end token + `prompt` (zoo's GPT prompts start with
    it, as GPT-2's documents do), up to the end token, which zoo stops at and does not return."""
    import torch

    ids = torch.tensor([[hf_tokenizer.eos_token_id] + hf_tokenizer.encode(prompt)])
    with torch.no_grad():
        output = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                    do_sample=False, eos_token_id=None, pad_token_id=0)
    tokens = output[0, ids.shape[1]:].tolist()
    end = hf_tokenizer.eos_token_id
    return tokens[:tokens.index(end)] if end in tokens else tokens


@pytest.fixture(scope="session")
def hf_gpt2(tmp_path_factory):
    """(directory, transformers model, transformers tokenizer) of a tiny GPT2LMHeadModel saved as a
    sharded safetensors checkpoint with its tokenizer files."""
    import torch
    import transformers

    directory = tmp_path_factory.mktemp("hf-gpt2")
    tokenizer = _tokenizer_for_tests(transformers)
    tokenizer.save_pretrained(directory)
    if not (directory / "merges.txt").is_file():  # transformers 5 writes tokenizer.json alone; GPT-2's hub repo has both
        tokenizer.backend_tokenizer.model.save(str(directory))
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     initializer_range=0.1, bos_token_id=tokenizer.eos_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory, max_shard_size="40KB")  # several shards: the index is read
    assert (directory / "model.safetensors.index.json").is_file()
    (directory / "README.md").write_text("---\nlicense: mit\n---\n# tiny test GPT-2\n", encoding="utf-8")
    return directory, model, tokenizer


@pytest.fixture(scope="session")
def gpt2_bundle(hf_gpt2, tmp_path_factory):
    """The tiny GPT-2 imported through the real CLI on this session's backend."""
    bundle = tmp_path_factory.mktemp("imported") / "gpt2"
    result = run_zoo("import", hf_gpt2[0], "--out", bundle)
    assert result.returncode == 0, result.stderr
    assert "weights" in result.stderr and "100%" in result.stderr  # progress was shown
    return bundle


def test_imported_gpt2_gives_transformers_logits_and_greedy_tokens(hf_gpt2, gpt2_bundle):
    import keras
    import torch

    from zoo.bundle import load_bundle
    from zoo.engine.sampling import SamplingConfig
    from zoo.families.gpt.generator import Generator

    _, reference, hf_tokenizer = hf_gpt2
    model, tokenizer, info = load_bundle(gpt2_bundle)
    assert (info.kind, info.task, info.max_length, info.vocabulary_size) == ("gpt", "generate", 64, len(hf_tokenizer))

    # A right-padded batch: transformers masks the padding; zoo's causal model never looks ahead,
    # so the real positions' logits must agree and the padding's are not compared.
    hf_tokenizer.pad_token = hf_tokenizer.eos_token
    batch = hf_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch).logits.numpy()
    got = keras.ops.convert_to_numpy(model(batch["input_ids"].numpy().astype("int32")))
    real = batch["attention_mask"].numpy().astype(bool)
    assert not real.all()  # the batch has padding
    assert np.abs(got[real] - expected[real]).max() < 1e-4

    # Greedy continuation through zoo's engine, token for token as transformers' generate. zoo's
    # prompts start with the end token, as GPT-2's documents do.
    generator = Generator(model, tokenizer)
    for prompt in ("ROMEO.", "東京"):
        result = generator.generate(prompt, SamplingConfig(temperature=0, max_new_tokens=20))
        assert result.token_ids == transformers_greedy(reference, hf_tokenizer, prompt, 20)
        assert len(result.token_ids) > 5


@pytest.mark.backend_independent
def test_imported_gpt2_tokenizer_gives_transformers_ids(hf_gpt2, tmp_path):
    from zoo.families.gpt.huggingface import tokenizer as gpt2_tokenizer
    from zoo.pretrained import HFCheckpoint
    from zoo.tokenizers import load_tokenizer

    directory, _, hf_tokenizer = hf_gpt2
    imported = gpt2_tokenizer(HFCheckpoint(directory), hf_tokenizer.eos_token_id)
    imported.save(tmp_path)
    # From tokenizer.json, after a save and load as a bundle holds it, and from vocab.json +
    # merges.txt alone (older checkpoints have no tokenizer.json).
    slow_only = tmp_path / "slow"
    slow_only.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt", "model.safetensors.index.json"):
        (slow_only / name).write_bytes((directory / name).read_bytes())
    for shard in directory.glob("*.safetensors"):
        (slow_only / shard.name).symlink_to(shard)
    from_merges = gpt2_tokenizer(HFCheckpoint(slow_only), hf_tokenizer.eos_token_id)
    for tokenizer in (imported, load_tokenizer(tmp_path), from_merges):
        assert tokenizer.end_token_id == hf_tokenizer.eos_token_id
        for text in TEXTS:
            ids = tokenizer.encode(text)
            assert ids == hf_tokenizer.encode(text), text
            assert tokenizer.decode(ids) == text == hf_tokenizer.decode(ids)


@pytest.mark.backend_independent
def test_imported_bundle_records_its_source(hf_gpt2, gpt2_bundle):
    from zoo.pretrained.huggingface import sha256

    directory = hf_gpt2[0]
    provenance = json.loads((gpt2_bundle / "zoo.json").read_text())["provenance"]["pretrained"]
    shards = sorted(directory.glob("*.safetensors"))
    assert len(shards) > 1
    assert provenance["weight_files"] == {shard.name: sha256(shard) for shard in shards}
    assert (provenance["source"], provenance["architecture"], provenance["license"]) == (
        str(directory), "GPT2LMHeadModel", "mit")


@pytest.mark.backend_independent
def test_import_errors_are_one_line(hf_gpt2, tmp_path):
    directory = hf_gpt2[0]

    def copy(name, drop=(), config=None):
        return checkpoint_variant(directory, tmp_path / name, drop, config)

    llama = copy("llama", config={"architectures": ["LlamaForCausalLM"]})
    pickled = copy("pickled", drop={p.name for p in directory.glob("*.safetensors")} | {"model.safetensors.index.json"})
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    no_tokenizer = copy("no-tokenizer", drop={"tokenizer.json", "merges.txt"})
    relu = copy("relu", config={"activation_function": "relu"})
    cases = [
        ([llama], "architecture LlamaForCausalLM is not supported (supported: GPT2LMHeadModel, GPT2Model"),
        ([pickled], "has only pytorch_model.bin, which zoo never loads"),
        ([no_tokenizer], "missing tokenizer file merges.txt"),
        ([relu], "activation_function 'relu'"),
        ([tmp_path / "nowhere"], "no such directory"),
        ([directory, "--revision", "main"], "--revision"),
    ]
    for args, message in cases:
        result = run_zoo("import", *args, "--out", tmp_path / "out")
        assert result.returncode != 0
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and _error_lines(result) == 1, result.stderr
    assert "safetensors" in run_zoo("import", pickled, "--out", tmp_path / "out").stderr  # says how to convert
    assert not (tmp_path / "out").exists()

    # A hub id while offline, with nothing cached: named, and no download attempted.
    offline = run_zoo("import", "hf://zoo-tests/not-cached", "--out", tmp_path / "out", own_process=True,
                      env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    assert offline.returncode == 1
    assert "hf://zoo-tests/not-cached: not in the local Hugging Face cache" in offline.stderr
    assert "HF_HUB_OFFLINE=1" in offline.stderr and _error_lines(offline) == 1, offline.stderr


def _error_lines(result):
    """How many lines of stderr say something other than progress or click's usage hint."""
    return sum(1 for line in result.stderr.splitlines()
               if line.strip() and not line.startswith(("weights ", "Usage: ", "Try '")))


@pytest.mark.backend_independent
def test_an_imported_gpt2_serves_over_grpc_and_reports_its_source(hf_gpt2, gpt2_bundle, backend):
    from server.client import ZooClient
    from server.gen.zoo.v1 import model_pb2 as mpb
    from server_process import ServerProcess

    directory, reference, hf_tokenizer = hf_gpt2
    process = ServerProcess(gpt2_bundle, "--no-warmup", backend=backend)
    try:
        with ZooClient(process.address, timeout=60) as client:
            [info] = client.list_models()
            assert info.kind == mpb.MODEL_KIND_GPT and info.context_length == 64
            assert info.tokenizer.end_token_id == hf_tokenizer.eos_token_id
            pretrained = info.provenance.pretrained
            assert (pretrained.source, pretrained.architecture, pretrained.license) == (
                str(directory), "GPT2LMHeadModel", "mit")
            assert len(pretrained.weight_sha256) > 1 and all(len(h) == 64 for h in pretrained.weight_sha256.values())

            response = client.generate(info.model_spec.name, "ROMEO.", temperature=0, max_new_tokens=12)
    finally:
        process.stop()
    expected = transformers_greedy(reference, hf_tokenizer, "ROMEO.", 12)
    assert list(response.token_ids) == expected and response.text == hf_tokenizer.decode(expected)


@pytest.mark.backend_independent
def test_fine_tuning_an_imported_gpt2_starts_from_its_weights_and_keeps_its_tokenizer(gpt2_bundle, small_corpus,
                                                                                     tmp_path):
    import keras

    from zoo.bundle import load_model

    run = tmp_path / "fine-tuned"
    # One step at a vanishing learning rate: the model must still be the imported one.
    run_zoo("train", "gpt", "--init", gpt2_bundle, "--data", small_corpus, "--out", run, "--seq-len", "32",
            "--batch-size", "4", "--max-steps", "1", "--lr", "1e-12", check=True)
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(gpt2_bundle) and config["preset"] is None
    assert (config["model"]["hidden_dim"], config["model"]["max_length"]) == (32, 64)  # the shape came from --init
    imported, imported_tokenizer, _ = load_model(gpt2_bundle)
    tuned, tuned_tokenizer, _ = load_model(run)
    assert (run / "tokenizer.json").is_file()
    assert all(tuned_tokenizer.encode(text) == imported_tokenizer.encode(text) for text in TEXTS)
    ids = np.asarray([imported_tokenizer.encode(TEXTS[0])], "int32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tuned(ids)), keras.ops.convert_to_numpy(imported(ids)),
                               atol=1e-5)

    # It resumes as any run does, from its own checkpoint.
    from zoo.training.checkpoints import checkpoint_step, latest_checkpoint

    run_zoo("train", "gpt", "--out", run, "--resume", "--max-steps", "2", check=True)
    assert checkpoint_step(latest_checkpoint(run / "checkpoints")) == 2

    for flags, message in ((["--preset", "small"], "--preset cannot be combined with --init"),
                           (["--hidden-dim", "64"], "--hidden-dim cannot be combined with --init"),
                           (["--seq-len", "65"], "--seq-len 65 exceeds the context of --init")):
        result = run_zoo("train", "gpt", "--init", gpt2_bundle, "--data", small_corpus, "--out", tmp_path / "bad",
                         *flags)
        assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.backend_independent
def test_export_hf_loads_in_transformers_with_zoos_logits_and_ids(gpt2_bundle, tiny_run, tmp_path):
    """An imported GPT-2, and a GPT trained here from scratch, out to a Hugging Face directory and
    into transformers' Auto classes."""
    import keras
    import torch
    import transformers

    from zoo.bundle import load_model

    for name, source in (("imported", gpt2_bundle), ("trained-here", tiny_run[1])):
        out = tmp_path / name
        run_zoo("export", source, "--format", "hf", "--out", out, check=True)
        model, tokenizer, _ = load_model(source)
        reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        for text in TEXTS:
            assert hf_tokenizer.encode(text) == tokenizer.encode(text), (name, text)
        ids = [tokenizer.end_token_id] + tokenizer.encode(TEXTS[0])[:model.max_length - 1]
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits.numpy()
        got = keras.ops.convert_to_numpy(model(np.asarray([ids], "int32")))
        assert np.abs(got - expected).max() < 1e-4, name
    assert run_zoo("export", gpt2_bundle, "--format", "hf", "--out", tmp_path / "imported").returncode == 1  # no --force


@pytest.fixture(scope="session")
def keras_hub_gpt2(tmp_path_factory, hf_gpt2):
    """(preset directory, backbone) of a tiny KerasHub GPT2Backbone saved with `save_to_preset`, its
    tokenizer assets laid out as keras-hub's GPT2Tokenizer saves them (written here from the test
    tokenizer's vocabulary and merges: keras-hub's tokenizer needs tensorflow-text to run)."""
    import keras
    import keras_hub

    directory = tmp_path_factory.mktemp("keras-hub-gpt2") / "preset"
    hf_tokenizer = hf_gpt2[2]
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=len(hf_tokenizer), num_layers=2, num_heads=4,
                                             hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    for variable in backbone.weights:  # GPT-2's 0.02 init makes near-uniform logits; spread them
        variable.assign(np.random.default_rng(len(variable.path)).normal(0, 0.2, variable.shape).astype("float32")
                        + (1.0 if variable.path.endswith("gamma") else 0.0))
    backbone.save_to_preset(str(directory))
    assets = directory / "assets" / "tokenizer"
    assets.mkdir(parents=True)
    (assets / "vocabulary.json").write_text(json.dumps(hf_tokenizer.get_vocab()), encoding="utf-8")
    merges = json.loads(hf_tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    (assets / "merges.txt").write_text("".join(" ".join(m) + "\n" if isinstance(m, list) else m + "\n" for m in merges),
                                       encoding="utf-8")
    return directory, backbone


def test_imported_keras_hub_gpt2_gives_keras_hubs_logits(keras_hub_gpt2, hf_gpt2, tmp_path):
    import keras
    import keras_hub

    from zoo.bundle import load_bundle

    directory, backbone = keras_hub_gpt2
    bundle = tmp_path / "bundle"
    run_zoo("import", directory, "--out", bundle, check=True)
    model, tokenizer, info = load_bundle(bundle)
    assert info.provenance["pretrained"]["architecture"] == "GPT2Backbone"
    hf_tokenizer = hf_gpt2[2]
    assert all(tokenizer.encode(text) == hf_tokenizer.encode(text) for text in TEXTS)

    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = np.asarray([[tokenizer.end_token_id] + tokenizer.encode(TEXTS[0])], "int32")
    expected = keras.ops.convert_to_numpy(lm({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}))
    got = keras.ops.convert_to_numpy(model(ids))
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(expected).max() > 1.0  # logits far from uniform: a mis-mapped weight would show
