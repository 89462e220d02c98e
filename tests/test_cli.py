"""The `zoo` command: help with examples, backend reporting, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_MODEL, run_zoo, zoo_json

GPT_BUNDLE = Path(__file__).parent / "fixtures" / "bundles_v1" / "gpt"  # tiny, with a context of 32


def _every_command():
    """Every command of `zoo`, nested groups and their lazily loaded commands included, as its
    words: walked from the click group itself, so that a new command is covered without a list."""
    import click

    from cli.main import cli

    found = []

    def walk(command, words, parent):
        found.append(words)
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=words[-1] if words else "zoo", parent=parent)
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), [*words, name], ctx)

    walk(cli, [], None)
    return found


COMMANDS = _every_command()


@pytest.mark.backend_independent
def test_the_command_walk_finds_the_nested_commands():
    walked = set(map(tuple, COMMANDS))
    assert {("train", "seq2seq"), ("prepare",), ("translate",), ("bench",), ("client", "embed")} <= walked


@pytest.mark.backend_independent
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "zoo")
def test_every_command_has_help_with_an_example(command):
    from click.testing import CliRunner

    from cli.main import cli

    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example" in result.output, f"zoo {' '.join(command)} --help shows no example"


@pytest.mark.cross_backend
def test_info_reports_the_chosen_backend_and_tensorflow_loads_only_on_its_own():
    """`zoo info` names the backend $KERAS_BACKEND chose, or --backend over it. keras-hub imports
    TensorFlow when it can; on jax and torch `zoo` keeps it out (seconds at every start), and
    keras-hub still loads. The command runs in-process in the child, so that what it imported can
    be read afterwards."""
    code = ("import json, sys\n"
            "from cli.main import cli\n"
            "cli(['info', '--json', *sys.argv[1:]], standalone_mode=False)\n"
            "print(json.dumps({'tensorflow_loaded': sys.modules.get('tensorflow') is not None}))\n")
    for backend, flags in [("jax", []), ("tensorflow", []), ("torch", ["--backend", "torch"])]:
        env = {**os.environ, "KERAS_BACKEND": "jax" if flags else backend}  # torch: by the flag, over jax
        result = subprocess.run([sys.executable, "-c", code, *flags], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        *info, loaded = result.stdout.strip().splitlines()
        details = json.loads("\n".join(info))
        assert details["backend"] == backend and details[backend].count(".") >= 1, details
        assert details["devices"] and details["keras"].startswith("3.") and details["keras_hub"], details
        assert json.loads(loaded) == {"tensorflow_loaded": backend == "tensorflow"}, backend


def _assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    error_lines = [line for line in lines if line.startswith("Error")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], result.stderr


@pytest.mark.backend_independent
def test_data_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Just a few words of text.\n" * 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    out = tmp_path / "run"
    _assert_one_line_error(run_zoo("train", "gpt", "--data", tmp_path / "missing.txt", "--out", out), "missing.txt", "no such file")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", empty, "--out", out), "empty.txt", "is empty")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", tiny, "--out", out, "--tokenizer", "char"),
                           "fewer than", "--seq-len")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", bad, "--out", out), "line 2", "not a string")


@pytest.mark.backend_independent
def test_flag_errors(tmp_path, small_corpus):
    out = tmp_path / "run"
    _assert_one_line_error(run_zoo("train", "gpt", "--backend", "mxnet", "--out", out), "mxnet")
    _assert_one_line_error(run_zoo("train", "gpt", "--max-steps", "0", "--out", out), "must be positive")
    _assert_one_line_error(run_zoo("train", "gpt", "--data", small_corpus, "--seq-len", "64", "--max-length", "32",
                                   "--out", out), "--seq-len 64 exceeds")
    _assert_one_line_error(run_zoo("train", "gpt", "--resume"), "--resume needs --out")
    _assert_one_line_error(run_zoo("train", "gpt", "--resume", "--out", tmp_path / "nothing"), "not a run directory")


@pytest.mark.backend_independent
def test_generate_and_export_errors(tmp_path, tiny_run):
    run, bundle = tiny_run
    _assert_one_line_error(run_zoo("generate", tmp_path / "nope", "--prompt", "x"), "no such bundle or run")
    _assert_one_line_error(run_zoo("generate", tmp_path, "--prompt", "x"), "neither a bundle")
    _assert_one_line_error(run_zoo("generate", bundle, "--prompt", "word " * 100, "--max-new-tokens", "4"),
                           "exceeds the model's context of 32")
    _assert_one_line_error(run_zoo("generate", bundle, "--temperature", "-1"), "--temperature must be >= 0")
    _assert_one_line_error(run_zoo("generate", bundle, "--top-p", "2"), "--top-p must be in (0, 1]")
    _assert_one_line_error(run_zoo("export", run, "--out", bundle), "already exists")
    _assert_one_line_error(run_zoo("export", tmp_path, "--out", tmp_path / "b"), "neither a run directory")
    _assert_one_line_error(run_zoo("train", "gpt", "--out", run, *TINY_MODEL), "already exists and is not empty")


def test_generate_from_run_and_bundle_agree(tiny_run):
    run, bundle = tiny_run
    args = ["--prompt", "KING.", "--max-new-tokens", "12", "--temperature", "0"]
    from_bundle, from_run = zoo_json("generate", bundle, *args), zoo_json("generate", run, *args)
    assert from_bundle == from_run
    assert from_bundle["finish_reason"] in ("length", "end_token")
    assert len(from_bundle["token_ids"]) <= 12


@pytest.mark.backend_independent
def test_generate_truncates_long_prompt_only_when_asked(tiny_run):
    _, bundle = tiny_run
    result = zoo_json("generate", bundle, "--prompt", "word " * 100, "--max-new-tokens", "4", "--temperature", "0",
                      "--truncate-prompt")
    assert result["prompt_tokens"] == 32 - 4


@pytest.mark.backend_independent
def test_generate_streams_the_prompt_and_continuation(tiny_run):
    _, bundle = tiny_run
    result = run_zoo("generate", bundle, "--prompt", "ROMEO.", "--max-new-tokens", "10", "--seed", "3", check=True)
    assert result.stdout.startswith("ROMEO.")
    sampled = zoo_json("generate", bundle, "--prompt", "ROMEO.", "--max-new-tokens", "10", "--seed", "3")
    assert result.stdout == "ROMEO." + sampled["text"] + "\n"


def test_bundle_is_self_contained(tiny_run):
    _, bundle = tiny_run
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "model.weights.h5", "tokenizer.json", "zoo.json"]
    info = json.loads((bundle / "zoo.json").read_text())
    assert info["kind"] == "gpt" and info["task"] == "generate" and info["max_length"] == 32
    assert info["provenance"]["steps"] == 30 and "val_loss" in info["provenance"]["final_metrics"]
    assert info["special_tokens"]["end"] == "<|endoftext|>"


# What TensorFlow's C++ side prints while keras-hub imports it, on every backend (zoo.backend).
TENSORFLOW_NOISE = ("All log messages before absl::InitializeLog", "cudart_stub.cc", "cpu_feature_guard.cc",
                    "oneDNN custom operations", "rebuild TensorFlow with the appropriate compiler flags")


def test_tensorflow_start_up_lines_stay_out_of_stderr_and_real_errors_do_not(backend, tmp_path):
    # The error comes after the model, and with it keras-hub and TensorFlow, has loaded. The bundle
    # is rewritten in the current format: a format-1 bundle's load warns that it has no checksums.
    bundle = tmp_path / "gpt"
    run_zoo("export", GPT_BUNDLE, "--out", bundle, check=True)
    result = run_zoo("generate", bundle, "--prompt", "word " * 100, "--max-new-tokens", "4", backend=backend,
                     own_process=True)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert not [line for line in lines if any(noise in line for noise in TENSORFLOW_NOISE)], result.stderr
    assert lines[-1].startswith("Error: the prompt has 302 tokens"), result.stderr
    if backend != "tensorflow":  # which, computing, probes for a GPU and may say why it found none
        assert len(lines) == 1, result.stderr


@pytest.mark.backend_independent
def test_only_tensorflows_known_start_up_lines_are_dropped(tmp_path):
    fake = tmp_path / "tensorflow"  # on PYTHONPATH, before the real one
    fake.mkdir()
    (fake / "__init__.py").write_text(
        "import os, sys\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'I0000 00:00:1796214107.924664    6785 cudart_stub.cc:31] Could not find cuda drivers on your '\n"
        "            b'machine, GPU will not be used.\\n')\n"
        "os.write(2, b'E0000 00:00:1796214107.924701    6785 op_kernel.cc:1830] a real failure\\n')\n"
        "print('a Python warning', file=sys.stderr)\n")
    code = ("from zoo.backend import quiet_tensorflow_startup\n"
            "quiet_tensorflow_startup()\n"
            "import tensorflow\n"
            "print(type(tensorflow.__loader__).__name__)\n")
    real = "E0000 00:00:1796214107.924701    6785 op_kernel.cc:1830] a real failure\na Python warning\n"
    for level, expected in [("2", real), ("0", None)]:  # TF_CPP_MIN_LOG_LEVEL=0: everything, as TensorFlow prints it
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": level}
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "SourceFileLoader\n"  # the module keeps its own loader
        if expected:
            assert result.stderr == expected
        else:
            assert len(result.stderr.splitlines()) == 4 and "cudart_stub.cc" in result.stderr


@pytest.mark.backend_independent
def test_zoo_on_jax_keeps_freed_heap_memory_instead_of_faulting_it_in_again():
    """A thread that allocates, touches and frees 40 MB a round (as XLA's CPU runtime does with a
    step's temporaries) gets its pages back from the OS page by page every round under glibc's
    defaults; once a `zoo` command has chosen JAX in the process (zoo.backend.keep_freed_heap_memory)
    it reuses them. Other backends, and a MALLOC_* variable in the environment, leave malloc as it
    was; the command's own --backend is the last word over the default. The command stops at its
    missing argument, after its options are applied and before keras is imported."""
    code = (
        "import ctypes, json, resource, sys, threading\n"
        "import click\n"
        "from cli.main import cli\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "def faults_a_round(rounds=6, size=100 << 10):\n"
        "    counts = []\n"
        "    def work():\n"
        "        for _ in range(rounds):\n"
        "            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "            chunks = [libc.malloc(size) for _ in range(400)]\n"
        "            for chunk in chunks: ctypes.memset(chunk, 1, size)\n"
        "            for chunk in chunks: libc.free(chunk)\n"
        "            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "    thread = threading.Thread(target=work); thread.start(); thread.join()\n"
        "    return max(counts[1:])  # the first round faults its pages in either way\n"
        "default = faults_a_round()\n"
        "try:\n"
        "    cli(sys.argv[1:], standalone_mode=False)\n"
        "except click.MissingParameter:\n"
        "    pass\n"
        "print(json.dumps({'default': default, 'after': faults_a_round(), 'keras': 'keras' in sys.modules}))\n")
    environment = {name: value for name, value in os.environ.items() if name != "KERAS_BACKEND"}
    for flags, env, kept in [(["generate"], {}, True),  # jax, the default
                             (["--backend", "torch", "generate"], {}, False),
                             (["generate", "--backend", "torch"], {}, False),
                             (["--backend", "torch", "generate", "--backend", "jax"], {}, True),
                             (["generate", "--backend", "tensorflow"], {}, False),
                             (["generate"], {"MALLOC_ARENA_MAX": "8"}, False)]:
        result = subprocess.run([sys.executable, "-c", code, *flags], cwd=ROOT, capture_output=True, text=True,
                                timeout=60, env={**environment, **env})
        assert result.returncode == 0, result.stderr
        faults = json.loads(result.stdout.splitlines()[-1])
        assert faults["default"] > 5000 and not faults["keras"], faults  # 40 MB is ~10,000 pages
        assert (faults["after"] < 200) == kept, (flags, env, faults)


@pytest.mark.backend_independent
def test_zoo_on_jax_keeps_compiled_programs_on_disk_and_reads_them_back(tmp_path, tiny_run):
    """Every `zoo` command on JAX points JAX's persistent compilation cache at $ZOO_JAX_CACHE_DIR
    (else $XDG_CACHE_HOME/zoo/jax), before anything compiles; a JAX_COMPILATION_CACHE_DIR of the
    user's own stays, ZOO_JAX_CACHE_DIR=off and another backend leave JAX's settings alone. A second
    `zoo generate` of the same bundle reads every program back: it writes no new entry."""
    code = (
        "import json, sys\n"
        "import click\n"
        "from cli.main import cli\n"
        "try:\n"
        "    cli(sys.argv[1:], standalone_mode=False)\n"
        "except click.MissingParameter:\n"
        "    pass\n"
        "jax = sys.modules.get('jax')\n"
        "print(json.dumps(jax and [jax.config.jax_compilation_cache_dir,\n"
        "                          jax.config.jax_persistent_cache_min_compile_time_secs]))\n")
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("KERAS_BACKEND", "JAX_COMPILATION_CACHE_DIR", "ZOO_JAX_CACHE_DIR",
                                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    ours, xdg, users = tmp_path / "ours", tmp_path / "xdg", tmp_path / "users"
    for flags, env, directory in [(["generate"], {"ZOO_JAX_CACHE_DIR": str(ours)}, ours),
                                  (["generate"], {"XDG_CACHE_HOME": str(xdg)}, xdg / "zoo" / "jax"),
                                  (["generate"], {"JAX_COMPILATION_CACHE_DIR": str(users)}, users),
                                  (["generate"], {"ZOO_JAX_CACHE_DIR": "off"}, None),
                                  (["generate", "--backend", "torch"], {"ZOO_JAX_CACHE_DIR": str(ours)}, None)]:
        result = subprocess.run([sys.executable, "-c", code, *flags], cwd=ROOT, capture_output=True, text=True,
                                timeout=120, env={**environment, **env})
        assert result.returncode == 0, result.stderr
        settings = json.loads(result.stdout.splitlines()[-1])
        if directory is None:
            assert settings is None or settings[0] is None, (flags, env, settings)
        else:
            assert settings and settings[0] == str(directory), (flags, env, settings)
            if directory != users:  # the user's own cache is left to JAX, threshold and all
                assert directory.is_dir() and settings[1] == 0.0

    cache, texts, entries = tmp_path / "cache", [], []
    for _ in range(2):
        result = run_zoo("generate", tiny_run[1], "--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0",
                         "--backend", "jax",
                         env={"ZOO_JAX_CACHE_DIR": str(cache), "JAX_COMPILATION_CACHE_DIR": ""}, check=True)
        texts.append(result.stdout)
        entries.append(sorted(path.name for path in cache.iterdir()))
    assert entries[0] and entries[1] == entries[0], entries
    assert texts[1] == texts[0]
