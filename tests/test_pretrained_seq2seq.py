"""`zoo import` of Hugging Face BART and Marian checkpoints, and `zoo export --format hf` of seq2seq
models (BART, Marian, and zoo's own layout as Blenderbot), against transformers itself (a
test-only dependency). Nothing is downloaded: tiny models with random weights, a byte-level BPE
and SentencePiece models trained here on the shipped English-French pairs are saved with
transformers' own `save_pretrained`, as a user's checkpoint directory is."""

import io
import json

import numpy as np
import pytest

from conftest import checkpoint_variant, run_zoo, zoo_json

# English, accented, CJK and emoji text: the tokenizers must give transformers' ids on all of them.
TEXTS = ["Forgot your password?", "Ça été très dérangeant, naïve Zoë.", "東京は日本の首都です。",
         "Good luck 🍀🚀 with that!"]
SOURCES = ["Save your changes before closing.", "The file could not be opened.", "Delete this folder?"]
SIZE = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.2, dropout=0.0,
            forced_eos_token_id=None)


def _pairs():
    from zoo.data.pairs import DEFAULT_PAIRS, read_pairs

    return read_pairs(DEFAULT_PAIRS)


def _sentencepiece(texts, vocab_size):
    """A SentencePiece model (bytes) trained on `texts`, with byte fallback (so CJK and emoji
    become byte pieces rather than <unk>)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
                                             byte_fallback=True, character_coverage=1.0, minloglevel=2)
    return model.getvalue()


def _marian_tokenizer(transformers, directory):
    """A MarianTokenizer over source.spm (English) and target.spm (French) trained here, with one
    vocab.json of both models' pieces: </s> and <unk> first, <pad> last, as opus-mt's are laid out."""
    import sentencepiece

    pairs = _pairs()
    vocab = {"</s>": 0, "<unk>": 1}
    for name, texts in (("source.spm", [s for s, _ in pairs]), ("target.spm", [t for _, t in pairs])):
        proto = _sentencepiece(texts, 400)
        (directory / name).write_bytes(proto)
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        for i in range(processor.get_piece_size()):
            vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return transformers.MarianTokenizer(*(str(directory / name) for name in ("source.spm", "target.spm", "vocab.json")))


def _bart_tokenizer(transformers):
    """BART's tokenizer layout (<s> <pad> </s> <unk> first; <s> text </s>) over a byte-level BPE
    trained on the pairs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([text for pair in _pairs() for text in pair], trainer)
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), add_prefix_space=False)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="session")
def hf_seq2seq(tmp_path_factory):
    """{"bart"|"marian": (directory, transformers model, transformers tokenizer)}: a tiny
    BartForConditionalGeneration and MarianMTModel (a random, nonzero final_logits_bias) saved
    with their tokenizer files."""
    import torch
    import transformers

    made = {}
    bart_dir = tmp_path_factory.mktemp("hf-bart")
    bart_tokenizer = _bart_tokenizer(transformers)
    bart_tokenizer.save_pretrained(bart_dir)
    config = transformers.BartConfig(vocab_size=len(bart_tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     decoder_start_token_id=2, forced_bos_token_id=0, **SIZE)
    marian_dir = tmp_path_factory.mktemp("hf-marian")
    marian_tokenizer = _marian_tokenizer(transformers, marian_dir)
    marian_tokenizer.save_pretrained(marian_dir)
    pad = marian_tokenizer.pad_token_id
    marian_config = transformers.MarianConfig(vocab_size=len(marian_tokenizer), pad_token_id=pad, eos_token_id=0,
                                              decoder_start_token_id=pad, activation_function="swish",
                                              scale_embedding=True, **SIZE)
    for name, directory, model_class, model_config, tokenizer in (
            ("bart", bart_dir, transformers.BartForConditionalGeneration, config, bart_tokenizer),
            ("marian", marian_dir, transformers.MarianMTModel, marian_config, marian_tokenizer)):
        torch.manual_seed(0)
        model = model_class(model_config).eval()
        with torch.no_grad():
            model.final_logits_bias.normal_(0, 0.5)
        model.save_pretrained(directory)
        made[name] = directory, model, tokenizer
    return made


@pytest.fixture(scope="session")
def seq2seq_bundles(hf_seq2seq, tmp_path_factory):
    """The tiny BART and Marian imported through the real CLI on this session's backend."""
    base, bundles = tmp_path_factory.mktemp("imported-seq2seq"), {}
    for name, (directory, _, _) in hf_seq2seq.items():
        bundles[name] = base / name
        result = run_zoo("import", directory, "--out", bundles[name])
        assert result.returncode == 0, result.stderr
    return bundles


def transformers_greedy(reference, hf_tokenizer, source, new_tokens):
    """transformers' greedy translation of `source`, without its decoder start and end tokens."""
    import torch

    ids = hf_tokenizer(source, return_tensors="pt")
    with torch.no_grad():
        output = reference.generate(**ids, max_new_tokens=new_tokens, do_sample=False, num_beams=1)
    tokens = output[0, 1:].tolist()
    end = reference.config.eos_token_id
    return tokens[:tokens.index(end)] if end in tokens else tokens


def _zoo_logits(model, batch, decoder_ids):
    import keras

    inputs = {"source_ids": batch["input_ids"].numpy().astype("int32"),
              "source_padding_mask": batch["attention_mask"].numpy().astype(bool),
              "target_ids": decoder_ids.numpy().astype("int32")}
    return keras.ops.convert_to_numpy(model(inputs))


def _transformers_logits(reference, batch, decoder_ids):
    import torch

    with torch.no_grad():
        return reference(**batch, decoder_input_ids=decoder_ids).logits.numpy()


@pytest.mark.parametrize("name", ["bart", "marian"])
def test_imported_seq2seq_gives_transformers_logits_and_greedy_tokens(hf_seq2seq, seq2seq_bundles, name):
    from zoo.bundle import load_bundle
    from zoo.engine.sampling import SamplingConfig
    from zoo.families import get

    _, reference, hf_tokenizer = hf_seq2seq[name]
    model, tokenizer, info = load_bundle(seq2seq_bundles[name])
    assert (info.kind, info.task, info.max_length, info.max_target_length) == ("seq2seq", "generate", 64, 64)

    # Padded sources and a decoder input: the real positions' logits must agree (the decoder is
    # causal; padded target positions are not compared).
    batch = hf_tokenizer(SOURCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].numpy().all()
    decoder_ids = batch["input_ids"][:, :6].clone()
    decoder_ids[:, 0] = reference.config.decoder_start_token_id
    difference = np.abs(_zoo_logits(model, batch, decoder_ids) - _transformers_logits(reference, batch, decoder_ids))
    assert difference.max() < 1e-4

    # Greedy decoding through zoo's engine (BART's forced <s> included), token for token as transformers'.
    generator = get("seq2seq").runtime("generate", model, tokenizer, seq2seq_bundles[name], info)
    for source in SOURCES[:2]:
        result = generator.generate(source, SamplingConfig(temperature=0, max_new_tokens=16))
        expected = transformers_greedy(reference, hf_tokenizer, source, 16)
        assert result.token_ids == expected and len(expected) > 3
        assert result.text == hf_tokenizer.decode(expected, skip_special_tokens=True).strip()


@pytest.mark.backend_independent
def test_imported_seq2seq_tokenizers_give_transformers_ids(hf_seq2seq, seq2seq_bundles):
    from zoo.families import get
    from zoo.tokenizers import load_tokenizer

    for name, (_, _, hf_tokenizer) in hf_seq2seq.items():
        # As a bundle holds them: Marian's source side (its own SentencePiece model) in a subdirectory.
        source, target = get("seq2seq").source_tokenizer(seq2seq_bundles[name]), load_tokenizer(seq2seq_bundles[name])
        assert (source.kind, target.kind) == (("bpe", "bpe") if name == "bart" else ("sentencepiece",) * 2)
        for text in TEXTS:
            expected = hf_tokenizer(text)["input_ids"]  # the source: the text, then </s> (BART: <s> first)
            assert source.encode(text) + [source.end_token_id] == expected, (name, text)
            assert source.decode(expected[:-1]) == hf_tokenizer.decode(expected, skip_special_tokens=True).strip()
            assert target.encode(text) + [target.end_token_id] == hf_tokenizer(text_target=text)["input_ids"]
        for text in SOURCES + TEXTS[1:2] + (TEXTS[2:] if name == "bart" else []):
            assert source.decode(source.encode(text)) == text, (name, text)


@pytest.mark.backend_independent
def test_imported_bart_and_marian_serve_over_grpc(hf_seq2seq, seq2seq_bundles, backend, tmp_path):
    from server.client import ZooClient
    from server.gen.zoo.v1 import model_pb2 as mpb
    from server_process import ServerProcess

    for name, bundle in seq2seq_bundles.items():  # a model repository: REPO/<name>/<version>/
        (tmp_path / name).mkdir()
        (tmp_path / name / "1").symlink_to(bundle)
    process = ServerProcess(tmp_path, "--no-warmup", backend=backend)
    try:
        with ZooClient(process.address, timeout=60) as client:
            infos = {info.model_spec.name: info for info in client.list_models()}
            assert infos["marian"].tokenizer.kind == mpb.TOKENIZER_KIND_SENTENCEPIECE
            assert infos["marian"].provenance.pretrained.architecture == "MarianMTModel"
            responses = {name: client.generate(name, SOURCES[0], temperature=0, max_new_tokens=12) for name in infos}
    finally:
        process.stop()
    for name, response in responses.items():
        _, reference, hf_tokenizer = hf_seq2seq[name]
        expected = transformers_greedy(reference, hf_tokenizer, SOURCES[0], 12)
        assert list(response.token_ids) == expected
        assert response.text == hf_tokenizer.decode(expected, skip_special_tokens=True).strip()


@pytest.mark.backend_independent
def test_export_hf_loads_in_transformers_with_zoos_logits(seq2seq_bundles, tiny_copier, tmp_path):
    """Imported BART and Marian out to Hugging Face directories of their own architecture, and a
    seq2seq trained here from scratch out as Blenderbot (zoo's layout), into transformers' Auto
    classes with zoo's logits and token ids."""
    import torch
    import transformers

    from zoo.bundle import load_model
    from zoo.families import get

    exported = {}
    for name, source in (*seq2seq_bundles.items(), ("trained-here", tiny_copier[1])):
        out = tmp_path / name
        run_zoo("export", source, "--format", "hf", "--out", out, check=True)
        model, tokenizer, _ = load_model(source)
        source_tokenizer = get("seq2seq").source_tokenizer(source)
        reference = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        exported[name] = reference.config.architectures[0]
        for text in TEXTS[:2]:
            assert hf_tokenizer(text)["input_ids"] == source_tokenizer.encode(text) + [source_tokenizer.end_token_id]
        batch = hf_tokenizer(["red cat", "blue dog one two"] if name == "trained-here" else SOURCES, padding=True,
                             return_tensors="pt")
        decoder_ids = batch["input_ids"][:, :4].clone()
        decoder_ids[:, 0] = reference.config.decoder_start_token_id
        difference = np.abs(_zoo_logits(model, batch, decoder_ids) - _transformers_logits(reference, batch, decoder_ids))
        assert difference.max() < 1e-4, name
    assert exported == {"bart": "BartForConditionalGeneration", "marian": "MarianMTModel",
                        "trained-here": "BlenderbotForConditionalGeneration"}


@pytest.mark.backend_independent
def test_seq2seq_import_errors_are_one_line(hf_seq2seq, tmp_path):
    def copy(name, source, drop=(), config=None):
        return checkpoint_variant(source, tmp_path / name, drop, config)

    marian, bart = hf_seq2seq["marian"][0], hf_seq2seq["bart"][0]
    cases = [(copy("no-spm", marian, drop={"target.spm"}), "missing tokenizer file target.spm"),
             (copy("tanh", bart, config={"activation_function": "tanh"}), "activation_function 'tanh'"),
             (copy("heads", bart, config={"decoder_attention_heads": 2}), "different encoder and decoder attention"),
             (copy("mbart", bart, config={"architectures": ["MBartForConditionalGeneration"]}),
              "architecture MBartForConditionalGeneration is not supported (supported: ")]
    for source, message in cases:
        result = run_zoo("import", source, "--out", tmp_path / "out")
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "MarianMTModel" in result.stderr or "architecture" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.backend_independent
def test_fine_tuning_an_imported_marian_keeps_its_weights_and_tokenizers(seq2seq_bundles, tmp_path):
    import keras

    from zoo.bundle import load_model
    from zoo.families import get
    from zoo.training.checkpoints import checkpoint_step, latest_checkpoint

    bundle, run = seq2seq_bundles["marian"], tmp_path / "fine-tuned"
    # One step at a vanishing learning rate: the model must still be the imported one.
    run_zoo("train", "seq2seq", "--init", bundle, "--out", run, "--batch-size", "4", "--max-steps", "1",
            "--lr", "1e-12", "--bleu-pairs", "0", check=True)
    config = json.loads((run / "config.json").read_text())
    assert config["init"] == str(bundle) and config["preset"] is None
    assert config["model"]["position_embedding"] == "sinusoidal"  # the shape came from --init
    imported, imported_tokenizer, _ = load_model(bundle)
    tuned, tuned_tokenizer, _ = load_model(run)
    source = get("seq2seq").source_tokenizer(run)
    assert source.kind == "sentencepiece" and source.encode(SOURCES[0]) == get("seq2seq").source_tokenizer(
        bundle).encode(SOURCES[0])
    assert tuned_tokenizer.encode(TEXTS[1]) == imported_tokenizer.encode(TEXTS[1])
    ids = np.asarray([source.encode(SOURCES[0]) + [source.end_token_id]], "int32")
    inputs = {"source_ids": ids, "source_padding_mask": np.ones(ids.shape, bool), "target_ids": ids[:, :5]}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tuned(inputs)), keras.ops.convert_to_numpy(imported(inputs)),
                               atol=1e-5)

    run_zoo("train", "seq2seq", "--out", run, "--resume", "--max-steps", "2", "--bleu-pairs", "0", check=True)
    assert checkpoint_step(latest_checkpoint(run / "checkpoints")) == 2
    translated = run_zoo("translate", run, SOURCES[0], check=True)
    assert translated.stdout.strip()
    for flags, message in ((["--preset", "small"], "--preset cannot be combined with --init"),
                           (["--hidden-dim", "64"], "--hidden-dim cannot be combined with --init")):
        result = run_zoo("train", "seq2seq", "--init", bundle, "--out", tmp_path / "bad", *flags)
        assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.backend_independent
def test_lora_on_an_imported_marian_trains_only_its_attention_adapters(seq2seq_bundles, tmp_path):
    import keras

    from zoo.bundle import load_model

    bundle, run = seq2seq_bundles["marian"], tmp_path / "lora"
    summary = zoo_json("train", "seq2seq", "--init", bundle, "--lora-rank", "4", "--out", run, "--batch-size", "8",
                       "--max-steps", "3", "--lr", "1e-2", "--bleu-pairs", "0")
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 5
    targets = json.loads((run / "config.json").read_text())["lora"]["targets"]
    assert any("cross_attention" in t for t in targets) and any("encoder" in t for t in targets)
    imported, _, _ = load_model(bundle)
    tuned, _, _ = load_model(run)  # the adapters merged into the kernels

    def kernel(model, path):  # a layer's kernel by its attributes, e.g. ("decoder_layers", 0, "_query_dense")
        layer = model
        for step in path:
            layer = layer[step] if isinstance(step, int) else getattr(layer, step)
        return keras.ops.convert_to_numpy(layer.kernel if hasattr(layer, "kernel") else layer.embeddings)

    for frozen in (("decoder_layers", 0, "_feedforward_intermediate_dense"),
                   ("encoder_layers", 1, "_feedforward_output_dense"), ("target_embedding",)):
        assert np.array_equal(kernel(tuned, frozen), kernel(imported, frozen)), frozen
    query = ("decoder_layers", 0, "_cross_attention_layer", "_query_dense")
    assert not np.array_equal(kernel(tuned, query), kernel(imported, query))
