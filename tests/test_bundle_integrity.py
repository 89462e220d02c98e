"""Verified bundles: zoo.json records the sha256 of every file when a bundle is written, and loading
refuses a missing, altered, truncated or unlisted file with its name. Files and checksums do not
depend on the backend: these run once."""

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import run_zoo
from zoo.bundle import load_bundle, write_bundle
from zoo.errors import ZooError

pytestmark = pytest.mark.backend_independent

V1_BUNDLE = Path(__file__).parent / "fixtures" / "bundles_v1" / "gpt"


@pytest.fixture
def bundle(tiny_run, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_run[1], copy)
    return copy


def test_zoo_json_lists_every_file_with_its_sha256(bundle, tmp_path):
    def second_tokenizer(directory):  # as seq2seq's source tokenizer: a file in a subdirectory
        (directory / "source_tokenizer").mkdir()
        shutil.copy(bundle / "tokenizer.json", directory / "source_tokenizer")

    rewritten = write_bundle(tmp_path / "rewritten", *load_bundle(bundle), write_extra=second_tokenizer)
    for directory in (bundle, rewritten):
        info = json.loads((directory / "zoo.json").read_text())
        files = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                       if p.is_file() and p.name != "zoo.json")
        assert info["format_version"] == 2 and sorted(info["files"]) == files
        assert ("source_tokenizer/tokenizer.json" in files) == (directory == rewritten)
        for name, digest in info["files"].items():
            assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-len(data) // 3] ^= 0x80
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, words", [
    (lambda b: _flip(b / "model.weights.h5"), "model.weights.h5: sha256 does not match zoo.json"),
    (lambda b: (b / "tokenizer.json").write_bytes((b / "tokenizer.json").read_bytes()[:100]),
     "tokenizer.json: sha256 does not match zoo.json"),
    (lambda b: (b / "config.json").unlink(), "config.json: missing from the bundle"),
    (lambda b: (b / "extra.py").write_text("print('hi')"), "extra.py: not one of the bundle's files"),
])
def test_a_damaged_bundle_is_refused_naming_the_file(bundle, damage, words):
    damage(bundle)
    with pytest.raises(ZooError, match=words):
        load_bundle(bundle)
    result = run_zoo("generate", bundle, "--prompt", "ROMEO.", "--max-new-tokens", "2")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f"Error: {bundle}")
    assert words in result.stderr


def test_hidden_files_are_ignored_and_a_format_2_bundle_must_list_its_files(bundle):
    (bundle / ".DS_Store").write_bytes(b"\0")
    assert load_bundle(bundle)[2].files
    info = json.loads((bundle / "zoo.json").read_text())
    del info["files"]
    (bundle / "zoo.json").write_text(json.dumps(info))
    with pytest.raises(ZooError, match="a format-2 bundle must list its files' sha256"):
        load_bundle(bundle)


def test_a_format_1_bundle_loads_unverified_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="zoo"):
        info = load_bundle(V1_BUNDLE)[2]
    assert info.files is None
    assert "a format-1 bundle has no checksums: loaded unverified" in caplog.text


def test_exporting_a_format_1_bundle_writes_a_verified_copy_that_computes_the_same(tmp_path):
    import keras
    import numpy as np

    result = run_zoo("export", V1_BUNDLE, "--out", tmp_path / "sealed")
    assert result.returncode == 0, result.stderr
    old_model, _, old_info = load_bundle(V1_BUNDLE)
    model, _, info = load_bundle(tmp_path / "sealed")
    assert info.format_version == 2 and sorted(info.files) == ["config.json", "model.weights.h5", "tokenizer.json"]
    assert info.provenance == old_info.provenance and info.kind == old_info.kind
    ids = np.arange(1, 9, dtype="int32")[None]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(ids)), keras.ops.convert_to_numpy(old_model(ids)))
