"""`zoo bench`: one model family and preset on every backend, side by side.

Each backend runs in its own process (`python -m zoo.bench --worker CONFIG RESULT`, KERAS_BACKEND
set), since Keras fixes its backend at import. What is measured of a model is the family's to say
(its `Family.bench_model`, through the registry in zoo.families); how it is timed, compared and
reported is the same for all. A worker builds the preset with random weights from a fixed seed and
measures, in this order:

- agreement: the first backend that runs saves its weights (`reference.weights.h5`), the family's
  reference inputs and what the model computes from them (`reference.npz`) in the output
  directory; every later one loads those weights, so that it benchmarks the very same model, and
  reports the max |Δ| of its outputs against the reference's;
- inference, the family's: a latency (a gpt's prefill of one prompt, a bert classifier's batch, a
  seq2seq model's encoding and first decoder step), each after a warm-up call; for a model with a
  decode engine (`zoo.engine`), greedy decode tokens/s at batch 1 and 8 with
  `engine.generate_batch` (new tokens over the wall time of the whole generation, prefill
  included) after a warm-up that compiles the steps, and the engine's compile_seconds;
- train-step tokens/s (tokens the model reads) with zoo's optimizer setup, the family's loss and
  `train_on_batch` (as `zoo train`), over `steps` steps after the first step (whose time, mostly
  compilation, is reported) and one more;
- peak memory: the device's peak bytes on a GPU, else the worker's peak RSS (imports included).

A measurement a family does not have is left out of its row, and shown as "-". The parent
(`run_bench`) collects the rows and writes results.json, results.csv and chart.png.
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
DECODE_BATCHES = (1, 8)
REPEATS = 3  # latency and decode: best of 3 timed runs, since other processes only ever slow a run down
DEFAULT_SEQ_LEN = 128  # or the preset's context, if shorter
REFERENCE_WEIGHTS, REFERENCE_OUTPUTS = "reference.weights.h5", "reference.npz"
COLUMNS = [  # (results key, table heading)
    ("train_tokens_per_s", "train tok/s"), ("train_compile_s", "train compile s"), ("latency_ms", "latency ms"),
    ("decode_tokens_per_s_b1", "decode tok/s b1"), ("decode_tokens_per_s_b8", "decode tok/s b8"),
    ("engine_compile_s", "engine compile s"), ("peak_memory_mb", "peak MB"), ("max_abs_diff", "max |Δ|")]
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


class Timing:
    """The timing every family's `measure_inference` shares (see Family.bench_model)."""

    @staticmethod
    def best_seconds(run):
        """The shortest of REPEATS timed calls of `run()`."""
        best = float("inf")
        for _ in range(REPEATS):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        return best

    def engine(self, model, prompt, prompts_for_batch, new_tokens, batches=DECODE_BATCHES):
        """The measurements of a model with a decode engine: latency_ms of prefilling `prompt` (a
        list of ids), decode_tokens_per_s_b<n> of greedy `engine.generate_batch` of
        `prompts_for_batch(n)` for `new_tokens` (each after a warm-up call that compiles), and
        the engine's compile_seconds."""
        from zoo.engine.backends import engine_for

        engine = engine_for(model)
        engine.prefill(prompt)  # compiles this prompt's bucket
        row = {"latency_ms": 1000 * self.best_seconds(lambda: engine.prefill(prompt))}
        for batch in batches:
            prompts = prompts_for_batch(batch)
            engine.generate_batch(prompts, new_tokens)  # compiles the decode steps (each reach) for `batch` slots
            seconds = self.best_seconds(lambda: engine.generate_batch(prompts, new_tokens))
            row[f"decode_tokens_per_s_b{batch}"] = batch * new_tokens / seconds
        row["engine_compile_s"] = engine.compile_seconds
        return row


def _agreement(bench, model, out):
    """Saves the reference weights, inputs and outputs if none exist yet; else loads the weights
    and returns the max |Δ| of the outputs against the reference's (0.0 for the reference itself)."""
    import keras
    import numpy as np

    weights, reference_file = Path(out, REFERENCE_WEIGHTS), Path(out, REFERENCE_OUTPUTS)
    if not weights.exists():
        inputs = bench.reference_inputs(np.random.default_rng(0))
        outputs = np.asarray(bench.outputs(inputs))
        model.save_weights(weights)
        np.savez(reference_file, outputs=outputs, backend=keras.backend.backend(),
                 **{f"input_{name}": array for name, array in inputs.items()})
        return 0.0
    model.load_weights(weights)
    with np.load(reference_file, allow_pickle=False) as reference:
        inputs = {name[len("input_"):]: reference[name] for name in reference.files if name.startswith("input_")}
        expected = reference["outputs"]
    outputs = np.asarray(bench.outputs(inputs))
    if outputs.shape != expected.shape:
        raise ZooError(f"the outputs on {keras.backend.backend()} have shape {outputs.shape}, the reference's "
                       f"{expected.shape}")
    return float(np.max(np.abs(outputs.astype("float64") - expected)))


def _bench_model(config):
    """The family's bench object for `config` (a ZooError when the family is not benchmarked)."""
    from zoo import families

    bench = families.get(config["model"]).bench_model(
        config["preset"], vocabulary_size=config["vocab_size"], seq_len=config["seq_len"],
        batch_size=config["batch_size"], prompt_tokens=config["prompt_tokens"], new_tokens=config["new_tokens"],
        decode_batches=DECODE_BATCHES)
    if bench is None:
        raise ZooError(f"zoo bench: {config['model']} models are not benchmarked (the family declares no bench_model)")
    return bench


def worker(config, result_path):
    """Measures one backend (KERAS_BACKEND already set) and writes its row to `result_path`."""
    backend = os.environ["KERAS_BACKEND"]
    row = {"backend": backend}
    try:
        try:
            import keras  # imports its backend's framework too: a missing one is an ImportError
            import numpy as np

            from zoo.training.config import TrainConfig
            from zoo.training.loop import compile_for_training
            name, on_gpu = _device(backend, config["device"] == "gpu")
        except ImportError as e:
            row.update(status="skipped", reason=f"{backend} cannot be imported: {e}")
            return
        row.update(status="ok", device_name=name)
        bench = _bench_model(config)
        keras.utils.set_random_seed(config["seed"])
        model = bench.build()
        row["parameters"] = model.count_params()
        row["max_abs_diff"] = _agreement(bench, model, config["out"])

        rng = np.random.default_rng(config["seed"])
        row.update(bench.measure_inference(rng, Timing()))

        steps = config["steps"]
        compile_for_training(model, TrainConfig(max_steps=steps + 2, batch_size=config["batch_size"]), loss=bench.loss())
        x, y, tokens = bench.train_batch(rng)
        start = time.perf_counter()
        float(model.train_on_batch(x, y))  # float(): wait for the device
        row["train_compile_s"] = time.perf_counter() - start
        model.train_on_batch(x, y)  # a second warm-up step: some backends still settle on it
        start = time.perf_counter()
        for _ in range(steps):
            loss = model.train_on_batch(x, y)
        float(loss)
        row["train_tokens_per_s"] = steps * tokens / (time.perf_counter() - start)
        row["peak_memory_mb"], row["peak_memory_kind"] = _peak_memory(backend, on_gpu)
    except ZooError as e:  # bad settings for this machine: the parent stops with this message
        row.update(status="error", reason=str(e))
    finally:  # three decimals say enough (max |Δ| excepted: it is tiny where all is well)
        row = {k: round(v, 3) if isinstance(v, float) and k != "max_abs_diff" else v for k, v in row.items()}
        Path(result_path).write_text(json.dumps(row), encoding="utf-8")


# --- the parent ------------------------------------------------------------------------------------------

def default_seq_len(model, preset):
    """--seq-len's default: DEFAULT_SEQ_LEN, or the preset's context if shorter (of a model that
    reads a source and writes a target, the shorter of the two: `Family.context`)."""
    from zoo import families

    family = families.get(model)
    read, write = family.context(family.presets[preset])
    return min(DEFAULT_SEQ_LEN, read, write or read)


def run_bench(out, model="gpt", preset="nano", backends=BACKENDS, steps=10, batch_size=8, seq_len=None,
              new_tokens=64, prompt_tokens=32, device="cpu", vocab_size=8192, seed=0, log=None):
    """Runs every backend's worker in turn; writes results.json, results.csv and chart.png into
    `out` and returns the results dict. `log(line)` gets progress lines."""
    from zoo import families

    family = families.get(model)
    if preset not in family.presets:
        raise ZooError(f"--preset {preset}: not a {model} preset (choose one of {', '.join(family.presets)})")
    seq_len = seq_len or default_seq_len(model, preset)
    config = dict(model=model, preset=preset, steps=steps, batch_size=batch_size, seq_len=seq_len,
                  new_tokens=new_tokens, prompt_tokens=prompt_tokens, device=device, vocab_size=vocab_size, seed=seed)
    bench = _bench_model(config)  # checks the settings against the preset before any backend starts
    if importlib.util.find_spec("matplotlib") is None:  # fail before minutes of benchmarking, not after
        raise ZooError("zoo bench draws chart.png with matplotlib, which is not installed: pip install 'zoo[bench]'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (REFERENCE_WEIGHTS, REFERENCE_OUTPUTS):  # a stale reference would be compared against
        (out / name).unlink(missing_ok=True)
    config["out"] = str(out.resolve())
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
    results = {"model": model, "preset": preset, "reference_backend": ok[0]["backend"], "latency": bench.latency,
               "settings": {k: v for k, v in config.items() if k not in ("out", "model", "preset")}, "backends": rows}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.csv").write_text(to_csv(rows), encoding="utf-8")
    draw_chart(rows, out / "chart.png", f"{model} {preset} on {device}")
    return results


def _run_worker(backend, config, out):
    env = {**os.environ, "KERAS_BACKEND": backend}
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
    if key == "max_abs_diff":
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
    """Bar charts per backend: train tokens/s, and greedy decode tokens/s at batch 1 and 8 where
    the model decodes (else its latency)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    names = [r["backend"] for r in ok]
    figure, (train, inference) = plt.subplots(1, 2, figsize=(10, 4))
    train.bar(names, [r.get("train_tokens_per_s", 0) for r in ok], color="tab:blue")
    train.set_title("train step tokens/s")
    decodes = [batch for batch in DECODE_BATCHES if any(f"decode_tokens_per_s_b{batch}" in r for r in ok)]
    if decodes:
        width = 0.8 / len(decodes)
        for i, batch in enumerate(decodes):
            positions = [j + (i - (len(decodes) - 1) / 2) * width for j in range(len(ok))]
            inference.bar(positions, [r.get(f"decode_tokens_per_s_b{batch}", 0) for r in ok], width,
                          label=f"batch {batch}")
        inference.set_xticks(range(len(ok)), names)
        inference.set_title("greedy decode tokens/s")
        inference.legend()
    else:
        inference.bar(names, [r.get("latency_ms", 0) for r in ok], color="tab:orange")
        inference.set_title("inference latency ms")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "--worker":
        sys.exit("usage: python -m zoo.bench --worker CONFIG_JSON RESULT_PATH (zoo bench runs this)")
    from zoo.backend import quiet_tensorflow_startup

    quiet_tensorflow_startup()
    worker(json.loads(sys.argv[2]), sys.argv[3])


class LanguageModelBench:
    """What `zoo bench` measures of a next-token language model (gpt, lstm): training on
    next-token blocks, the prefill latency of one prompt and greedy decoding at batch 1 and 8 on
    the compiled engine, and the logits of fixed token ids for the agreement across backends.
    `build(preset, vocabulary_size)` makes the family's model, built, with random weights."""

    def __init__(self, kind, presets, build, preset, vocabulary_size, seq_len, batch_size, prompt_tokens, new_tokens,
                 decode_batches):
        self.kind, self._build = kind, build
        context = presets[preset]["max_length"]
        if seq_len > context or prompt_tokens + new_tokens > context:
            raise ZooError(f"--seq-len {seq_len} and --prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} "
                           f"must each fit the {kind} {preset} preset's context of {context}")
        self.preset, self.vocabulary_size, self.seq_len, self.batch_size = preset, vocabulary_size, seq_len, batch_size
        self.prompt_tokens, self.new_tokens, self.decode_batches = prompt_tokens, new_tokens, decode_batches
        self.latency = f"prefill of one {prompt_tokens}-token prompt"
        self.model = None

    def build(self):
        self.model = self._build(self.preset, self.vocabulary_size)
        return self.model

    def loss(self):
        return None  # zoo train's: next-token cross-entropy

    def train_batch(self, rng):
        tokens = rng.integers(0, self.vocabulary_size, (self.batch_size, self.seq_len + 1)).astype("int32")
        return tokens[:, :-1], tokens[:, 1:], self.batch_size * self.seq_len

    def reference_inputs(self, rng):
        shape = (2, min(32, self.model.max_length))
        return {"token_ids": rng.integers(0, self.vocabulary_size, shape).astype("int32")}

    def outputs(self, inputs):
        import keras

        return keras.ops.convert_to_numpy(self.model(inputs["token_ids"]))

    def measure_inference(self, rng, timing):
        def prompts(batch):
            return rng.integers(0, self.vocabulary_size, (batch, self.prompt_tokens)).tolist()

        return timing.engine(self.model, prompts(1)[0], prompts, self.new_tokens, self.decode_batches)
