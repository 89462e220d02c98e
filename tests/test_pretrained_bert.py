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
