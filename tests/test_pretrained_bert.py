"""`zoo import` of Hugging Face BERT checkpoints, against transformers itself (a test-only
dependency). Nothing is downloaded: tiny BERTs with random weights and a WordPiece trained here
are saved with transformers' own `save_pretrained`, as a user's checkpoint directory is."""

import json

import numpy as np
import pytest

from conftest import CORPUS, run_zoo

TEXTS = ["ROMEO. But soft, what light through yonder window breaks?", "Ça été très DÉRANGEANT, naïve Zoë.",
         "東京は日本の首都です。", "Good luck 🍀🚀 with that!", "  leading spaces\tand\ttabs\n"]
PAIRS = ["A second text.", "Encore une phrase.", "二番目", "🍀", "x"]
LABELS = ["negative", "neutral", "positive"]


def _bert_tokenizer(transformers, lowercase):
    """A BertTokenizerFast over a WordPiece of 600 tokens trained on the shipped corpus."""
    from zoo.tokenizers import train_wordpiece

    text = CORPUS.read_text(encoding="utf-8").splitlines()[:3000]
    word_pieces = train_wordpiece(text + TEXTS, 600, lowercase=lowercase).tokenizer
    return transformers.BertTokenizerFast(tokenizer_object=word_pieces, do_lower_case=lowercase,
                                          unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                          cls_token="[CLS]", mask_token="[MASK]")


def _save(directory, transformers, model_class, lowercase=True, **settings):
    import torch

    tokenizer = _bert_tokenizer(transformers, lowercase)
    tokenizer.save_pretrained(directory)
    if not (directory / "vocab.txt").is_file():
        tokenizer.backend_tokenizer.model.save(str(directory))
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     initializer_range=0.2, **settings)
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.save_pretrained(directory)
    return model, tokenizer


@pytest.fixture(scope="session")
def hf_bert(tmp_path_factory):
    """{architecture: (directory, transformers model, tokenizer)}: an uncased sequence classifier
    with three named labels, and an uncased masked LM."""
    import transformers

    base = tmp_path_factory.mktemp("hf-bert")
    made = {}
    for name, model_class, settings in (
            ("classifier", transformers.BertForSequenceClassification,
             dict(num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})),
            ("masked-lm", transformers.BertForMaskedLM, {})):
        directory = base / name
        directory.mkdir()
        made[name] = (directory, *_save(directory, transformers, model_class, **settings))
    return made


@pytest.fixture(scope="session")
def bert_bundles(hf_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported-bert")
    for name, (directory, _, _) in hf_bert.items():
        run_zoo("import", directory, "--out", out / name, check=True)
    return out


def test_imported_bert_gives_transformers_probabilities_and_masked_lm_logits(hf_bert, bert_bundles):
    import keras
    import torch

    from zoo.bundle import load_bundle, load_runtime

    _, reference, hf_tokenizer = hf_bert["classifier"]
    classifier, info = load_runtime(bert_bundles / "classifier")
    assert (info.kind, info.task, info.labels) == ("bert", "classify", LABELS)
    batch = hf_tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")  # pairs, and padding
    assert not batch["attention_mask"].bool().all()
    with torch.no_grad():
        expected = torch.softmax(reference(**batch).logits, -1).numpy()
    got, _ = classifier.probabilities(TEXTS, PAIRS)
    assert np.abs(got - expected).max() < 1e-4

    _, reference, hf_tokenizer = hf_bert["masked-lm"]
    model, tokenizer, info = load_bundle(bert_bundles / "masked-lm")
    assert info.task == "mlm"
    inputs, _ = tokenizer.encode_batch(TEXTS)
    positions = np.asarray([[1, 2, 3]] * len(TEXTS), "int32")
    got = keras.ops.convert_to_numpy(model({**inputs, "mask_positions": positions}))
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor(inputs["token_ids"]).long(),
                           token_type_ids=torch.tensor(inputs["segment_ids"]).long(),
                           attention_mask=torch.tensor(inputs["padding_mask"]).long()).logits.numpy()
    expected = np.take_along_axis(logits, positions[:, :, None].astype("int64"), axis=1)
    assert np.abs(got - expected).max() < 1e-4


@pytest.mark.backend_independent
@pytest.mark.parametrize("lowercase", [True, False])
def test_imported_wordpiece_gives_transformers_ids(tmp_path, lowercase):
    import transformers

    from zoo.families.bert.huggingface import tokenizer as bert_tokenizer
    from zoo.pretrained import HFCheckpoint

    full = tmp_path / "full"
    full.mkdir()
    _, hf_tokenizer = _save(full, transformers, transformers.BertModel, lowercase=lowercase)
    vocab_only = tmp_path / "vocab-only"  # older checkpoints: vocab.txt and tokenizer_config.json alone
    vocab_only.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (vocab_only / name).symlink_to(full / name)
    for directory in (full, vocab_only):
        tokenizer = bert_tokenizer(HFCheckpoint(directory))
        for text, pair in zip(TEXTS, PAIRS):
            ids, segments, _ = tokenizer.encode(text, pair)
            expected = hf_tokenizer(text, pair)
            assert (ids, segments) == (expected["input_ids"], expected["token_type_ids"]), (directory.name, text)
            assert tokenizer.decode(ids) == hf_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.backend_independent
def test_an_imported_bert_classifier_serves_over_grpc(hf_bert, bert_bundles, backend):
    import torch

    from server.client import ZooClient
    from server_process import ServerProcess

    _, reference, hf_tokenizer = hf_bert["classifier"]
    process = ServerProcess(bert_bundles / "classifier", "--no-warmup", backend=backend)
    try:
        with ZooClient(process.address, timeout=60) as client:
            [info] = client.list_models()
            assert list(info.labels) == LABELS and info.provenance.pretrained.architecture == \
                "BertForSequenceClassification"
            response = client.classify(info.model_spec.name, TEXTS[:2])
    finally:
        process.stop()
    with torch.no_grad():
        expected = torch.softmax(reference(**hf_tokenizer(TEXTS[:2], padding=True, return_tensors="pt")).logits, -1)
    got = np.asarray([[c.probability for c in result.classes] for result in response.results])
    assert [[c.label for c in result.classes] for result in response.results] == [LABELS, LABELS]
    assert np.abs(got - expected.numpy()).max() < 1e-4


@pytest.mark.backend_independent
def test_unsupported_bert_settings_are_one_line_errors(hf_bert, tmp_path):
    directory = hf_bert["classifier"][0]
    config = json.loads((directory / "config.json").read_text())
    for change, message in (({"hidden_act": "relu"}, "hidden_act 'relu'"),
                            ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
                            ({"num_labels": 1, "id2label": {"0": "score"}, "problem_type": "regression"},
                             "regression BertForSequenceClassification is not supported")):
        variant = tmp_path / f"variant-{len(list(tmp_path.iterdir()))}"
        variant.mkdir()
        for file in directory.iterdir():
            if file.name != "config.json":
                (variant / file.name).symlink_to(file)
        (variant / "config.json").write_text(json.dumps({**config, **change}))
        result = run_zoo("import", variant, "--out", tmp_path / "out")
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.backend_independent
def test_export_hf_loads_in_transformers_with_zoos_outputs(bert_bundles, tiny_classifier, tmp_path):
    """Imported BERTs, and a classifier trained here from scratch, out to Hugging Face directories
    and into transformers' Auto classes."""
    import keras
    import torch
    import transformers

    from zoo.bundle import load_model, load_runtime

    for name, source in (("classifier", bert_bundles / "classifier"), ("trained-here", tiny_classifier[1])):
        out = tmp_path / name
        run_zoo("export", source, "--format", "hf", "--out", out, check=True)
        classifier, info = load_runtime(source)
        reference = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
        hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
        assert [reference.config.id2label[i] for i in range(len(info.labels))] == info.labels
        batch = hf_tokenizer(TEXTS, PAIRS, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(reference(**batch).logits, -1).numpy()
        got, _ = classifier.probabilities(TEXTS, PAIRS)
        assert np.abs(got - expected).max() < 1e-4, name

    out = tmp_path / "masked-lm"
    run_zoo("export", bert_bundles / "masked-lm", "--format", "hf", "--out", out, check=True)
    model, tokenizer, _ = load_model(bert_bundles / "masked-lm")
    reference = transformers.AutoModelForMaskedLM.from_pretrained(out).eval()
    inputs, _ = tokenizer.encode_batch(TEXTS)
    positions = np.asarray([[1, 2]] * len(TEXTS), "int32")
    got = keras.ops.convert_to_numpy(model({**inputs, "mask_positions": positions}))
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor(inputs["token_ids"]).long(),
                           token_type_ids=torch.tensor(inputs["segment_ids"]).long(),
                           attention_mask=torch.tensor(inputs["padding_mask"]).long()).logits.numpy()
    assert np.abs(got - np.take_along_axis(logits, positions[:, :, None].astype("int64"), axis=1)).max() < 1e-4


def _spread(model):
    """Weights of the scale a trained BERT has (the 0.02 init leaves attention nearly uniform and
    GELU nearly linear): a mis-mapped weight, or a different GELU, shows in the outputs."""
    for variable in model.weights:
        variable.assign(np.random.default_rng(len(variable.path)).normal(0, 0.2, variable.shape).astype("float32")
                        + (1.0 if variable.path.endswith("gamma") else 0.0))


@pytest.fixture(scope="session")
def keras_hub_bert(tmp_path_factory):
    """{"classifier", "backbone"}: preset directories written by `save_to_preset`, a tiny
    BertTextClassifier (softmax, with its preprocessor) and its backbone alone with its tokenizer,
    over a cased WordPiece trained here, read lower-cased (accents kept, keras-hub's default)."""
    import keras
    import keras_hub

    from zoo.tokenizers import train_wordpiece

    text = CORPUS.read_text(encoding="utf-8").splitlines()[:3000]
    pieces = train_wordpiece(text + TEXTS + PAIRS, 600, lowercase=False).tokenizer
    vocabulary = sorted(pieces.get_vocab(), key=pieces.get_vocab().get)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=2, num_heads=4,
                                             hidden_dim=32, intermediate_dim=64, max_sequence_length=64)
    classifier = keras_hub.models.BertTextClassifier(
        backbone, 3, activation="softmax",
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=64))
    _spread(classifier)
    base = tmp_path_factory.mktemp("keras-hub-bert")
    classifier.save_to_preset(str(base / "classifier"))
    backbone.save_to_preset(str(base / "backbone"))
    tokenizer.save_to_preset(str(base / "backbone"))
    return {"classifier": base / "classifier", "backbone": base / "backbone"}


def test_imported_keras_hub_bert_gives_keras_hubs_outputs_and_ids(keras_hub_bert, tmp_path):
    """The classifier preset as a classify bundle, the backbone alone as an mlm bundle: the same
    inputs as KerasHub's preprocessor, and its outputs (to 1e-4 with KerasHub's GELU made exact, as
    zoo's BERT computes it; to the tanh approximation's error with its own)."""
    import keras
    import keras_hub

    from zoo.bundle import load_bundle, load_runtime

    for name in ("classifier", "backbone"):
        run_zoo("import", keras_hub_bert[name], "--out", tmp_path / name, check=True)
    classifier, info = load_runtime(tmp_path / "classifier")
    assert (info.task, info.labels, info.provenance["pretrained"]["architecture"]) == \
        ("classify", ["LABEL_0", "LABEL_1", "LABEL_2"], "BertBackbone")
    model, tokenizer, info = load_bundle(tmp_path / "backbone")
    assert info.task == "mlm"

    reference = keras_hub.models.TextClassifier.from_preset(str(keras_hub_bert["classifier"]))
    expected_inputs = {k: keras.ops.convert_to_numpy(v) for k, v in reference.preprocessor(x=(TEXTS, PAIRS)).items()}
    inputs, _ = tokenizer.encode_batch(TEXTS, PAIRS, max_length=64)
    for key in ("token_ids", "segment_ids", "padding_mask"):
        assert np.array_equal(inputs[key], expected_inputs[key].astype(inputs[key].dtype)), key
    inputs, _ = tokenizer.encode_batch(TEXTS, PAIRS)  # padded to the longest row
    assert not inputs["padding_mask"].all()

    def outputs(encoder):
        got = {k: keras.ops.convert_to_numpy(v) for k, v in encoder(inputs).items()}
        return got["sequence_output"][inputs["padding_mask"]], got["pooled_output"]

    got_probabilities, _ = classifier.probabilities(TEXTS, PAIRS)
    got = outputs(model.encoder) + (got_probabilities,)
    expected = outputs(reference.backbone) + (keras.ops.convert_to_numpy(reference(inputs)),)
    for name, g, e in zip(("sequence", "pooled", "probabilities"), got, expected):
        assert np.abs(g - e).max() < 1e-4, name
    assert np.abs(expected[0]).max() > 1.0  # weights at a scale where exact and tanh GELU differ by ~1e-3


@pytest.mark.backend_independent
@pytest.mark.parametrize("lowercase,strip_accents", [(True, True), (False, False)])
def test_imported_keras_hub_wordpiece_gives_keras_hubs_ids(keras_hub_bert, tmp_path, lowercase, strip_accents):
    import shutil

    import keras_hub

    from zoo.families.bert.keras_hub import tokenizer
    from zoo.pretrained import KerasHubPreset

    vocabulary = (keras_hub_bert["backbone"] / "assets" / "tokenizer" / "vocabulary.txt").read_text().splitlines()
    reference = keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=lowercase,
                                               strip_accents=strip_accents)
    shutil.copy(keras_hub_bert["backbone"] / "config.json", tmp_path)
    reference.save_to_preset(str(tmp_path))
    word_pieces = tokenizer(KerasHubPreset(tmp_path), len(vocabulary))
    for text in TEXTS + PAIRS:
        assert word_pieces.encode(text)[0][1:-1] == [int(i) for i in reference(text)], text


@pytest.mark.backend_independent
def test_unsupported_keras_hub_bert_settings_are_one_line_errors(keras_hub_bert, tmp_path):
    directory = keras_hub_bert["classifier"]
    for file_name, change, message in (
            ("task.json", {"activation": "sigmoid"}, "BertTextClassifier with activation 'sigmoid'"),
            ("tokenizer.json", {"split": False}, "BertTokenizer with split False"),
            ("config.json", {"dtype": {"class_name": "DTypePolicyMap", "config": {}}}, "DTypePolicyMap dtype")):
        variant = tmp_path / file_name
        variant.mkdir()
        for file in directory.iterdir():
            if file.name != file_name:
                (variant / file.name).symlink_to(file)
        settings = json.loads((directory / file_name).read_text())
        settings["config"].update(change)
        (variant / file_name).write_text(json.dumps(settings))
        result = run_zoo("import", variant, "--out", tmp_path / "out")
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
