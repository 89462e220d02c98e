"""`zoo bench`: the real command end to end on every backend (each in its own process), for every
model family, and its pure output helpers in-process."""

import csv
import json

import pytest

from conftest import run_zoo
from zoo.bench import BACKENDS, COLUMNS, format_table, to_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.cross_backend
def test_bench_runs_end_to_end_on_the_nano_preset_and_writes_its_files(tmp_path):
    out = tmp_path / "bench"
    # One OpenMP thread: on a busy 2-core machine torch's spinning OpenMP threads make its CPU
    # kernels ~100x slower, and this test is about the files, not the numbers.
    result = run_zoo("bench", "--preset", "nano", "--steps", "2", "--new-tokens", "8", "--prompt-tokens", "16",
                     "--batch-size", "4", "--seq-len", "32", "--vocab-size", "512", "--out", out,
                     env={"OMP_NUM_THREADS": "1"}, check=True)
    table = result.stdout.splitlines()
    assert table[0].split()[:3] == ["backend", "train", "tok/s"]
    assert [line.split()[0] for line in table[1:4]] == list(BACKENDS)

    results = json.loads((out / "results.json").read_text())
    assert (results["model"], results["preset"], results["reference_backend"]) == ("gpt", "nano", "jax")
    rows = results["backends"]
    assert [row["backend"] for row in rows] == list(BACKENDS)
    for row in rows:
        assert row["status"] == "ok", row
        for key, _ in COLUMNS:
            if key == "max_abs_diff":
                assert row[key] < 1e-4, row
            elif not (key == "engine_compile_s" and row["backend"] == "torch"):  # torch's engine compiles nothing
                assert row[key] > 0, (key, row)

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["backend"] for r in csv_rows] == list(BACKENDS)
    assert all(float(r["train_tokens_per_s"]) > 0 and float(r["decode_tokens_per_s_b8"]) > 0 for r in csv_rows)
    assert (out / "chart.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.cross_backend
def test_device_gpu_without_a_gpu_is_a_one_line_error(tmp_path):
    # Hides any GPU, so that this holds on a GPU machine too.
    result = run_zoo("bench", "--backends", "jax", "--device", "gpu", "--out", tmp_path / "bench",
                     env={"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: --device gpu: jax sees no GPU (it would run on cpu)"


# Tiny settings: what matters is that each family's measurements run and agree across backends.
TINY_BENCH = ["--preset", "nano", "--steps", "1", "--batch-size", "2", "--seq-len", "16", "--prompt-tokens", "8",
              "--new-tokens", "4", "--vocab-size", "128"]


@pytest.mark.cross_backend
# Two backends each (the gpt test above runs all three): every backend is in one pair, and each
# family is compared across two; torch, which compiles least, in both keeps it short.
@pytest.mark.parametrize("model, backends, decodes", [("bert", ["jax", "torch"], False),
                                                      ("seq2seq", ["torch", "tensorflow"], True)])
def test_bench_runs_every_family_and_its_outputs_agree_across_backends(tmp_path, model, backends, decodes):
    out = tmp_path / "bench"
    result = run_zoo("bench", "--model", model, *TINY_BENCH, "--backends", ",".join(backends), "--out", out,
                     env={"OMP_NUM_THREADS": "1"}, check=True)
    results = json.loads((out / "results.json").read_text())
    assert (results["model"], results["preset"], results["reference_backend"]) == (model, "nano", backends[0])
    assert results["settings"]["seq_len"] == 16 and "8" in results["latency"]
    rows = results["backends"]
    assert [row["backend"] for row in rows] == backends
    decode_keys = {"decode_tokens_per_s_b1", "decode_tokens_per_s_b8", "engine_compile_s"}
    for row in rows:
        assert row["status"] == "ok", row
        assert row["max_abs_diff"] < 1e-4, row  # the same weights compute the same on every backend
        for key in ("train_tokens_per_s", "train_compile_s", "latency_ms", "peak_memory_mb"):
            assert row[key] > 0, (key, row)
        if decodes:
            assert row["decode_tokens_per_s_b1"] > 0 and row["decode_tokens_per_s_b8"] > 0, row
            assert row["engine_compile_s"] > 0 or row["backend"] == "torch", row  # torch's engine compiles nothing
        else:
            assert not decode_keys & set(row), row
    table = result.stdout.splitlines()
    cells = dict(zip([heading for _, heading in COLUMNS], table[1].split(None, 1)[1].split()))
    assert (cells["decode tok/s b8"] == "-") == (not decodes), table
    assert (out / "chart.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.backend_independent
def test_presets_are_the_familys_and_bad_settings_fail_before_any_backend_starts(tmp_path):
    result = run_zoo("bench", "--model", "bert", "--preset", "gpt2", "--out", tmp_path / "bench")
    assert result.returncode == 2
    assert "Error: Invalid value for '--preset': 'gpt2' is not a bert preset: choose one of nano, small, base" in \
        result.stderr
    result = run_zoo("bench", "--model", "seq2seq", "--prompt-tokens", "100", "--out", tmp_path / "bench")
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: the seq2seq nano preset's source and target lengths are 64 and 64: "
                                     "--prompt-tokens 100 exceeds the source's")
    help_text = run_zoo("bench", "--help", check=True).stdout
    assert "[gpt|bert|seq2seq|lstm]" in help_text and "seq2seq: nano, small, base" in " ".join(help_text.split())


@pytest.mark.backend_independent
def test_a_family_without_a_bench_model_is_refused_in_one_line(tmp_path):
    (tmp_path / "bigram_family.py").write_text(
        "from zoo.families import Family\n\n\n"
        "class BigramFamily(Family):\n"
        "    name = 'bigram'\n"
        "    presets = {'tiny': {'max_length': 8}}\n"
        "    tasks = ('generate',)\n\n\n"
        "FAMILY = BigramFamily()\n")
    result = run_zoo("bench", "--model", "bigram", "--preset", "tiny", "--out", tmp_path / "bench",
                     env={"ZOO_FAMILIES": "bigram_family", "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.strip() == ("Error: zoo bench: bigram models are not benchmarked (the family declares no "
                                     "bench_model)")


@pytest.mark.backend_independent
def test_table_and_csv_have_one_row_per_backend_say_why_one_was_skipped_and_dash_what_a_family_lacks():
    ok = {"backend": "jax", "status": "ok", "train_tokens_per_s": 12345.6, "train_compile_s": 2.5, "latency_ms": 1.5,
          "decode_tokens_per_s_b1": 900.0, "decode_tokens_per_s_b8": 2500.0, "engine_compile_s": 3.0,
          "peak_memory_mb": 1024.0, "max_abs_diff": 0.0, "peak_memory_kind": "host RSS", "wall_s": 9.0}
    classifier = {"backend": "torch", "status": "ok", "train_tokens_per_s": 800.0, "train_compile_s": 0.5,
                  "latency_ms": 4.5, "peak_memory_mb": 900.0, "max_abs_diff": 2e-6}
    skipped = {"backend": "tensorflow", "status": "skipped", "reason": "tensorflow cannot be imported: no module"}
    lines = format_table([ok, classifier, skipped]).splitlines()
    assert lines[0].startswith("backend") and "max |Δ|" in lines[0]
    assert lines[1].split() == ["jax", "12,346", "2.5", "1.5", "900.0", "2,500", "3.0", "1,024", "0.0e+00"]
    assert lines[2].split() == ["torch", "800.0", "0.5", "4.5", "-", "-", "-", "900.0", "2.0e-06"]
    assert lines[3].split(None, 1) == ["tensorflow", "skipped: tensorflow cannot be imported: no module"]
    rows = list(csv.DictReader(to_csv([ok, classifier, skipped]).splitlines()))
    assert [(r["backend"], r["status"]) for r in rows] == [("jax", "ok"), ("torch", "ok"), ("tensorflow", "skipped")]
    assert rows[0]["train_tokens_per_s"] == "12345.6" and rows[2]["train_tokens_per_s"] == ""
    assert rows[1]["latency_ms"] == "4.5" and rows[1]["decode_tokens_per_s_b8"] == ""
    assert "wall_s" not in rows[0]
