"""Bundles written by earlier versions of zoo keep loading and computing the same, on every
backend; a bundle whose format is newer than the code is refused with both versions named."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import run_zoo
from zoo.bundle import load_model, load_runtime
from zoo.configs import BUNDLE_FORMAT_VERSION
from zoo.engine import SamplingConfig
from zoo.errors import ZooError

FIXTURES = Path(__file__).parent / "fixtures" / "bundles_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))


def test_a_gpt_bundle_from_before_the_registry_computes_the_same():
    model, tokenizer, info = load_model(FIXTURES / "gpt")
    expected = EXPECTED["gpt"]
    assert info.kind == "gpt" and info.task == "generate" and info.format_version == 1
    ids = [tokenizer.end_token_id] + tokenizer.encode(expected["prompt"])
    assert ids == expected["prompt_ids"]
    logits = keras.ops.convert_to_numpy(model(np.asarray([ids], "int32")))[0, -1]
    np.testing.assert_allclose(logits, expected["next_logits"], atol=2e-4)
    generator, _ = load_runtime(FIXTURES / "gpt")
    result = generator.generate(expected["prompt"], SamplingConfig(max_new_tokens=expected["max_new_tokens"], temperature=0))
    assert result.token_ids == expected["token_ids"]


def test_a_classifier_bundle_from_before_the_registry_computes_the_same():
    classifier, info = load_runtime(FIXTURES / "bert", "classify")
    expected = EXPECTED["bert"]
    assert info.labels == expected["labels"]
    probabilities, _ = classifier.probabilities(expected["texts"])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)


def test_a_seq2seq_bundle_from_before_the_registry_computes_the_same():
    from zoo import families

    model, tokenizer, info = load_model(FIXTURES / "seq2seq")
    expected = EXPECTED["seq2seq"]
    source = families.get("seq2seq").source_tokenizer(FIXTURES / "seq2seq")
    ids = source.encode(expected["source"]) + [source.end_token_id]
    assert ids == expected["source_ids"]
    logits = model({"source_ids": np.asarray([ids], "int32"), "source_padding_mask": np.ones((1, len(ids)), bool),
                    "target_ids": np.asarray([[tokenizer.end_token_id]], "int32")})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits)[0, 0], expected["first_logits"], atol=2e-4)
    generator, _ = load_runtime(FIXTURES / "seq2seq")
    result = generator.generate(expected["source"], SamplingConfig(max_new_tokens=expected["max_new_tokens"],
                                                                   temperature=0))
    assert result.token_ids == expected["token_ids"]


@pytest.mark.backend_independent
def test_a_bundle_of_a_newer_format_is_refused_naming_both_versions(tmp_path):
    bundle = tmp_path / "future"
    shutil.copytree(FIXTURES / "gpt", bundle)
    info = json.loads((bundle / "zoo.json").read_text(encoding="utf-8"))
    info["format_version"] = BUNDLE_FORMAT_VERSION + 1
    (bundle / "zoo.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ZooError, match=f"format version {BUNDLE_FORMAT_VERSION + 1} is newer than this zoo reads "
                                       f"\\({BUNDLE_FORMAT_VERSION}\\)"):
        load_model(bundle)
    result = run_zoo("generate", bundle, "--prompt", "ROMEO.")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: {bundle / 'zoo.json'}: bundle format version {BUNDLE_FORMAT_VERSION + 1} is newer than this zoo "
        f"reads ({BUNDLE_FORMAT_VERSION}); upgrade zoo to load it")
