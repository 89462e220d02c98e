"""`zoo bench`: one model and preset on every backend, side by side.

Each backend runs in its own process (`python -m zoo.bench --worker CONFIG RESULT`, KERAS_BACKEND
set), since Keras fixes its backend at import. A worker builds the preset with random weights from
a fixed seed and measures, in this order:

- agreement: the first backend that runs saves its weights (`reference.weights.h5`) and logits for
  fixed token ids (`reference.npz`) in the output directory; every later one loads those weights,
  so that it benchmarks the very same model, and reports max |Δlogits| against the reference;
- prefill latency of one prompt through the compiled engine (`zoo.engine`), after a warm-up call;
- greedy decode tokens/s at batch 1 and 8 with `engine.generate_batch` (new tokens over the wall
  time of the whole generation, prefill included), after a warm-up that compiles the step;
- the engine's compile_seconds (every prefill/decode function it compiled above);
- train-step tokens/s with zoo's optimizer setup and `train_on_batch` (as `zoo train`), over
  `steps` steps after the first step (whose time, mostly compilation, is reported) and one more;
- peak memory: the device's peak bytes on a GPU, else the worker's peak RSS (imports included).

The parent (`run_bench`) collects the rows and writes results.json, results.csv and chart.png.
"""

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from zoo.errors import ZooError

BACKENDS = ("jax", "tensorflow", "torch")
PRESETS = ("nano", "small", "gpt2")  # zoo.models.gpt.PRESETS' names; importing it here would import keras
DECODE_BATCHES = (1, 8)
REPEATS = 3  # prefill and decode: best of 3 timed runs, since other processes only ever slow a run down
REFERENCE_WEIGHTS, REFERENCE_TOKENS = "reference.weights.h5", "reference.npz"
COLUMNS = [  # (results key, table heading)
    ("train_tokens_per_s", "train tok/s"), ("train_compile_s", "train compile s"), ("prefill_ms", "prefill ms"),
    ("decode_tokens_per_s_b1", "decode tok/s b1"), ("decode_tokens_per_s_b8", "decode tok/s b8"),
    ("engine_compile_s", "engine compile s"), ("peak_memory_mb", "peak MB"), ("max_abs_logits_diff", "max |Δlogits|")]
CSV_FIELDS = ["backend", "status", "reason", *[key for key, _ in COLUMNS], "peak_memory_kind", "parameters", "device_name"]


# --- the worker (runs in the child process) --------------------------------------------------------------

def _device(backend, want_gpu):
    """The device the backend computes on, as a name; checks for a GPU if `want_gpu`."""
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        on_gpu = device.platform == "gpu"
        name = f"{device.platform} {device.device_kind}" if device.platform != "cpu" else "cpu"
    elif backend == "torch":
        import torch

        on_gpu = torch.cuda.is_available()
        name = f"cuda {torch.cuda.get_device_name(0)}" if on_gpu else "cpu"
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        on_gpu, name = bool(gpus), (gpus[0].name if gpus else "cpu")
    if want_gpu and not on_gpu:
        raise ZooError(f"--device gpu: {backend} sees no GPU (it would run on {name})")
    return name, on_gpu


def _peak_memory(backend, on_gpu):
    """(megabytes, what was measured)."""
    from zoo.training.accelerator import peak_memory

    peak = peak_memory()
    if on_gpu and backend == "tensorflow":  # accelerator.peak_memory has no TensorFlow device entry
        import tensorflow as tf

        peak["device_peak_bytes"] = tf.config.experimental.get_memory_info("GPU:0")["peak"]
    if on_gpu and "device_peak_bytes" in peak:
        return peak["device_peak_bytes"] / 2**20, "device"
    return peak["host_peak_rss_bytes"] / 2**20, "host RSS"


def _best_seconds(run):
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _agreement(model, out):
    """Saves the reference weights and logits if none exist yet; else loads the weights and
    returns max |Δlogits| against the reference (0.0 for the reference itself)."""
    import keras
    import numpy as np

    weights, tokens_file = Path(out, REFERENCE_WEIGHTS), Path(out, REFERENCE_TOKENS)
    if not weights.exists():
        tokens = np.random.default_rng(0).integers(0, model.vocabulary_size, (2, min(32, model.max_length)))
        tokens = tokens.astype("int32")
        logits = keras.ops.convert_to_numpy(model(tokens))
        model.save_weights(weights)
        np.savez(tokens_file, tokens=tokens, logits=logits, backend=keras.backend.backend())
        return 0.0
    model.load_weights(weights)
    with np.load(tokens_file) as reference:
        logits = keras.ops.convert_to_numpy(model(reference["tokens"]))
        return float(np.max(np.abs(logits - reference["logits"])))


def worker(config, result_path):
    """Measures one backend (KERAS_BACKEND already set) and writes its row to `result_path`."""
    backend = os.environ["KERAS_BACKEND"]
    row = {"backend": backend}
    try:
        try:
            import keras  # imports its backend's framework too: a missing one is an ImportError
            import numpy as np

            from zoo.engine.compiled import engine_for
            from zoo.models.gpt import gpt_from_preset
            from zoo.training.config import TrainConfig
            from zoo.training.loop import compile_for_training
            name, on_gpu = _device(backend, config["device"] == "gpu")
        except ImportError as e:
            row.update(status="skipped", reason=f"{backend} cannot be imported: {e}")
            return
        row.update(status="ok", device_name=name)
        keras.utils.set_random_seed(config["seed"])
        model = gpt_from_preset(config["preset"], config["vocab_size"])
        row["parameters"] = model.count_params()
        seq_len, prompt, new = config["seq_len"], config["prompt_tokens"], config["new_tokens"]
        if seq_len > model.max_length or prompt + new > model.max_length:
            raise ZooError(f"--seq-len {seq_len} and --prompt-tokens {prompt} + --new-tokens {new} must each fit "
                           f"the {config['preset']} preset's context of {model.max_length}")
        row["max_abs_logits_diff"] = _agreement(model, config["out"])

        rng = np.random.default_rng(config["seed"])
        engine = engine_for(model)
        ids = rng.integers(0, model.vocabulary_size, prompt).tolist()
        engine.prefill(ids)  # compiles this prompt's bucket
        row["prefill_ms"] = 1000 * _best_seconds(lambda: engine.prefill(ids))
        for batch in DECODE_BATCHES:
            prompts = rng.integers(0, model.vocabulary_size, (batch, prompt)).tolist()
            engine.generate_batch(prompts, new)  # compiles the decode steps (each reach) for `batch` slots
            seconds = _best_seconds(lambda: engine.generate_batch(prompts, new))
            row[f"decode_tokens_per_s_b{batch}"] = batch * new / seconds
        row["engine_compile_s"] = engine.compile_seconds

        batch_size, steps = config["batch_size"], config["steps"]
        compile_for_training(model, TrainConfig(max_steps=steps + 2, batch_size=batch_size))
        tokens = rng.integers(0, model.vocabulary_size, (batch_size, seq_len + 1)).astype("int32")
        x, y = tokens[:, :-1], tokens[:, 1:]
        start = time.perf_counter()
        float(model.train_on_batch(x, y))  # float(): wait for the device
        row["train_compile_s"] = time.perf_counter() - start
        model.train_on_batch(x, y)  # a second warm-up step: some backends still settle on it
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(loss)
        row["train_tokens_per_s"] = steps * batch_size * seq_len / (time.perf_counter() - start)
        row["peak_memory_mb"], row["peak_memory_kind"] = _peak_memory(backend, on_gpu)
    except ZooError as e:  # bad settings for this machine: the parent stops with this message
        row.update(status="error", reason=str(e))
    finally:  # three decimals say enough (max |Δlogits| excepted: it is tiny where all is well)
        row = {k: round(v, 3) if isinstance(v, float) and k != "max_abs_logits_diff" else v for k, v in row.items()}
        Path(result_path).write_text(json.dumps(row), encoding="utf-8")


# --- the parent ------------------------------------------------------------------------------------------

def run_bench(out, model="gpt", preset="nano", backends=BACKENDS, steps=10, batch_size=8, seq_len=128,
              new_tokens=64, prompt_tokens=32, device="cpu", vocab_size=8192, seed=0, log=None):
    """Runs every backend's worker in turn; writes results.json, results.csv and chart.png into
    `out` and returns the results dict. `log(line)` gets progress lines."""
    if model != "gpt":
        raise ZooError(f"zoo bench: {model} models are not benchmarked yet; only gpt is")
    if importlib.util.find_spec("matplotlib") is None:  # fail before minutes of benchmarking, not after
        raise ZooError("zoo bench draws chart.png with matplotlib, which is not installed: pip install 'zoo[bench]'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (REFERENCE_WEIGHTS, REFERENCE_TOKENS):  # a stale reference would be compared against
        (out / name).unlink(missing_ok=True)
    config = dict(preset=preset, steps=steps, batch_size=batch_size, seq_len=seq_len, new_tokens=new_tokens,
                  prompt_tokens=prompt_tokens, device=device, vocab_size=vocab_size, seed=seed, out=str(out.resolve()))
    rows = []
    for backend in backends:
        if log:
            log(f"{model} {preset} on {backend} ({device}) ...")
        rows.append(_run_worker(backend, config, out))
        if rows[-1]["status"] == "error":
            raise ZooError(rows[-1]["reason"])
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise ZooError("no backend could run: " + "; ".join(f"{r['backend']}: {r['reason']}" for r in rows))
    results = {"model": model, "preset": preset, "reference_backend": ok[0]["backend"],
               "settings": {k: v for k, v in config.items() if k not in ("out", "preset")}, "backends": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.csv").write_text(to_csv(rows), encoding="utf-8")
    draw_chart(rows, out / "chart.png", f"{model} {preset} on {device}")
    return results


def _run_worker(backend, config, out):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    # The worker must import this zoo, whichever directory the command runs from.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([p for p in (env.get("PYTHONPATH"), root) if p])
    if config["device"] == "cpu":  # hide any GPU, so that "cpu" means it on a GPU machine too
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    result_path = out / f".worker-{backend}.json"
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "zoo.bench", "--worker", json.dumps(config), str(result_path)],
                          env=env, capture_output=True, text=True)
    if not result_path.exists():  # it died before its `finally`
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return {"backend": backend, "status": "failed", "reason": lines[-1]}
    row = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    if row["status"] == "ok" and done.returncode != 0:  # an unexpected exception part-way
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        row.update(status="failed", reason=lines[-1])
    row["wall_s"] = round(time.perf_counter() - start, 1)
    return row


# --- output ----------------------------------------------------------------------------------------------

def _cell(value, key):
    if value is None:
        return "-"
    if key == "max_abs_logits_diff":
        return f"{value:.1e}"
    return f"{value:,.1f}" if value < 1000 else f"{value:,.0f}"


def format_table(rows):
    """The results as a fixed-width text table, one line per backend; skipped and failed
    backends say why."""
    headings = ["backend", *[heading for _, heading in COLUMNS]]
    lines = []
    for row in rows:
        if row["status"] == "ok":
            lines.append([row["backend"], *[_cell(row.get(key), key) for key, _ in COLUMNS]])
        else:
            lines.append([row["backend"], f"{row['status']}: {row.get('reason', '')}"])
    full = [line for line in lines if len(line) == len(headings)]  # a skipped row's reason may run long
    widths = [max([len(h)] + [len(line[i]) for line in (lines if i == 0 else full)]) for i, h in enumerate(headings)]
    text = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headings, widths)))]
    for line in lines:
        text.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return "\n".join(text)


def to_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def draw_chart(rows, path, title):
    """Bar charts of train tokens/s and decode tokens/s at batch 1 and 8, per backend."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    names = [r["backend"] for r in ok]
    figure, (train, decode) = plt.subplots(1, 2, figsize=(10, 4))
    train.bar(names, [r["train_tokens_per_s"] for r in ok], color="tab:blue")
    train.set_title("train step tokens/s")
    width = 0.8 / len(DECODE_BATCHES)
    for i, batch in enumerate(DECODE_BATCHES):
        positions = [j + (i - (len(DECODE_BATCHES) - 1) / 2) * width for j in range(len(ok))]
        decode.bar(positions, [r[f"decode_tokens_per_s_b{batch}"] for r in ok], width, label=f"batch {batch}")
    decode.set_xticks(range(len(ok)), names)
    decode.set_title("greedy decode tokens/s")
    decode.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m zoo.bench --worker CONFIG_JSON RESULT_PATH (zoo bench runs this)")
    worker(json.loads(sys.argv[2]), sys.argv[3])
