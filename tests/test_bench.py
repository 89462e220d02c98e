"""`zoo bench`: the real command end to end on every backend (each in its own process), and its
pure output helpers in-process."""

import csv
import json

import pytest

from conftest import run_zoo
from zoo.bench import BACKENDS, COLUMNS, PRESETS, format_table, to_csv

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
            if key == "max_abs_logits_diff":
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


@pytest.mark.backend_independent
def test_unbenchmarked_model_families_are_refused_in_one_line(tmp_path):
    result = run_zoo("bench", "--model", "seq2seq", "--out", tmp_path / "bench")
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: zoo bench: seq2seq models are not benchmarked yet; only gpt is"


def test_bench_presets_are_the_models_presets():
    from zoo.models.gpt import PRESETS as MODEL_PRESETS

    assert PRESETS == tuple(MODEL_PRESETS)


@pytest.mark.backend_independent
def test_table_and_csv_have_one_row_per_backend_and_say_why_one_was_skipped():
    ok = {"backend": "jax", "status": "ok", "train_tokens_per_s": 12345.6, "train_compile_s": 2.5, "prefill_ms": 1.5,
          "decode_tokens_per_s_b1": 900.0, "decode_tokens_per_s_b8": 2500.0, "engine_compile_s": 3.0,
          "peak_memory_mb": 1024.0, "max_abs_logits_diff": 0.0, "peak_memory_kind": "host RSS", "wall_s": 9.0}
    skipped = {"backend": "tensorflow", "status": "skipped", "reason": "tensorflow cannot be imported: no module"}
    lines = format_table([ok, skipped]).splitlines()
    assert lines[0].startswith("backend") and "max |Δlogits|" in lines[0]
    assert lines[1].split() == ["jax", "12,346", "2.5", "1.5", "900.0", "2,500", "3.0", "1,024", "0.0e+00"]
    assert lines[2].split(None, 1) == ["tensorflow", "skipped: tensorflow cannot be imported: no module"]
    rows = list(csv.DictReader(to_csv([ok, skipped]).splitlines()))
    assert [(r["backend"], r["status"]) for r in rows] == [("jax", "ok"), ("tensorflow", "skipped")]
    assert rows[0]["train_tokens_per_s"] == "12345.6" and rows[1]["train_tokens_per_s"] == ""
    assert "wall_s" not in rows[0]
