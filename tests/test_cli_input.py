"""Texts from a file or standard input (`--input FILE|-`) for every command that takes texts, through
the real CLI: plain lines, .jsonl with "text" (and "pair"), a text that starts with "-", and
one-line errors for a missing, empty or malformed file and for texts given twice or not at all.

The model-running tests use the small bundles of tests/fixtures/bundles_v1 and run once: reading
the texts does not depend on the Keras backend (the bundles' outputs on each backend are
tests/test_bundle_compat.py's)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_zoo

FIXTURES = Path(__file__).parent / "fixtures" / "bundles_v1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
DASHED = "--help is not an option here"  # on the command line it would be one


def _classify_locally(texts, pairs=None):
    from zoo.bundle import load_runtime

    classifier, _ = load_runtime(FIXTURES / "bert", "classify")
    return classifier.probabilities(texts, pairs)[0]


@pytest.mark.backend_independent
def test_classify_reads_standard_input_one_text_per_line():
    texts = EXPECTED["bert"]["texts"] + [DASHED]
    stdin = "\n".join(texts[:2]) + "\n\n" + "\n".join(texts[2:]) + "\n"  # a blank line is skipped
    result = run_zoo("classify", FIXTURES / "bert", "--input", "-", "--json", input=stdin, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == texts
    labels = EXPECTED["bert"]["labels"]
    for row, expected in zip(rows, EXPECTED["bert"]["probabilities"]):
        np.testing.assert_allclose([row["classes"][label] for label in labels], expected, atol=1e-5)
        assert row["label"] == labels[int(np.argmax(expected))]


@pytest.mark.backend_independent
def test_classify_reads_a_jsonl_file_with_pairs_and_a_text_that_starts_with_a_dash(tmp_path):
    texts, pairs = [DASHED, "Show all results"], ["Mot de passe oublié", "-x"]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "pair": p, "id": i}) + "\n" for i, (t, p) in enumerate(zip(texts, pairs))),
                    encoding="utf-8")
    result = run_zoo("classify", FIXTURES / "bert", "--input", path, "--json", check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(row["text"], row["pair"]) for row in rows] == list(zip(texts, pairs))
    labels = EXPECTED["bert"]["labels"]
    for row, expected in zip(rows, _classify_locally(texts, pairs)):  # the pair is read, not dropped
        np.testing.assert_allclose([row["classes"][label] for label in labels], expected, atol=1e-5)


@pytest.mark.backend_independent
def test_generate_takes_one_prompt_per_line_in_order_whatever_the_batch(tmp_path):
    expected = EXPECTED["gpt"]
    path = tmp_path / "prompts.jsonl"
    prompts = [expected["prompt"], "-" + expected["prompt"], "O", "KING.", "To be, or not", expected["prompt"]]
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in prompts), encoding="utf-8")
    greedy = ["--temperature", "0", "--max-new-tokens", str(expected["max_new_tokens"])]
    result = run_zoo("generate", FIXTURES / "gpt", "--input", path, "--json", "--batch-size", "4", *greedy, check=True)
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(prompts)  # one per prompt, in their order: the first and last are the same prompt
    for row in rows[0], rows[-1]:
        assert row["token_ids"] == expected["token_ids"] and row["text"] == expected["text"]
    assert [row["prompt_tokens"] for row in rows[:3]] == [len(expected["prompt_ids"]), len(expected["prompt_ids"]) + 1, 2]
    assert "prompts 6/6 (100%)" in result.stderr  # progress
    # Sampled with a seed and a stop string, as text: six prompts on four slots (two wait for a
    # slot), on two, and one at a time streamed, print the same.
    sampled = ["--temperature", "0.9", "--top-k", "20", "--seed", "5", "--stop", "a", "--max-new-tokens", "10"]
    outputs = [run_zoo("generate", FIXTURES / "gpt", "--input", path, *sampled, *batch, check=True).stdout
               for batch in (["--batch-size", "4"], ["--batch-size", "2"], ["--batch-size", "1"])]
    assert outputs[0] == outputs[1] == outputs[2]
    assert [line[:len(prompt)] for line, prompt in zip(outputs[0].splitlines(), prompts)] == prompts


@pytest.mark.backend_independent
def test_generate_checks_every_prompt_first_and_names_the_line_of_a_bad_one(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": p}) + "\n" for p in ["ROMEO.", "KING.", "word " * 100]), encoding="utf-8")
    for batch in "4", "1":
        result = run_zoo("generate", FIXTURES / "gpt", "--input", path, "--temperature", "0", "--batch-size", batch)
        assert result.returncode == 1 and result.stdout == ""  # the third prompt does not fit: none is generated
        assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {path}, line 3: the prompt has ")


@pytest.mark.backend_independent
@pytest.mark.parametrize("args, stdin, message", [
    (["classify", "B", "hello", "--input", "-"], "x\n",
     "give the texts as TEXTS arguments or with --input, not both"),
    (["classify", "B"], None, "no texts: give them as TEXTS arguments, or with --input FILE (- for standard input)"),
    (["translate", "B"], None, "no texts: give them as TEXTS arguments, or with --input FILE"),
    (["generate", "B", "--prompt", "x", "--input", "-"], "y\n",
     "give the prompt with --prompt or the prompts with --input, not both"),
    (["client", "embed", "m", "a", "--input", "-"], "x\n", "give the texts as TEXTS arguments or with --input"),
    (["client", "generate", "m", "--token-ids", "1,2", "--input", "-"], "x\n",
     "give the prompt with one of --prompt, --token-ids or --input, not --token-ids and --input"),
    (["classify", "B", "--input", "-", "--pair", "p"], "x\n", "--pair goes with texts on the command line"),
    (["generate", "B", "--prompt", "x", "--batch-size", "4"], None, "--batch-size goes with --input"),
    (["generate", "B", "--input", "-", "--beam-width", "2", "--batch-size", "4"], "x\n",
     "--batch-size 4: --beam-width generates one prompt at a time; drop --batch-size"),
])
def test_texts_and_input_are_exclusive(args, stdin, message):
    result = run_zoo(*args, input=stdin)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}" or message in result.stderr, result.stderr


def _assert_one_line_error(result, message):
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith(f"Error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no traceback


@pytest.mark.backend_independent
def test_bad_input_files_are_one_line_errors_naming_the_file_and_line(tmp_path):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_text("")
    blank.write_text("\n  \n")
    no_text = tmp_path / "rows.jsonl"
    no_text.write_text('{"text": "fine"}\n\n{"txt": "typo"}\n')
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text('{"text": "fine"}\n{"text": \n')
    for path, stdin, message in [
        (tmp_path / "missing.txt", None, f"{tmp_path / 'missing.txt'}: no such file"),
        (empty, None, f"{empty}: is empty (no texts"),
        (blank, None, f"{blank}: is empty (no texts"),
        ("-", "", "standard input: is empty (no texts"),
        (no_text, None, f"{no_text}, line 3: no 'text' field (fields: txt)"),
        (not_json, None, f"{not_json}, line 2: not valid JSON"),
    ]:
        _assert_one_line_error(run_zoo("classify", "B", "--input", path, input=stdin), message)


@pytest.mark.backend_independent
@pytest.mark.parametrize("command", [["translate", "B"], ["generate", "B"], ["client", "classify", "m"],
                                     ["client", "embed", "m"], ["client", "generate", "m"], ["client", "stream", "m"]],
                         ids=" ".join)
def test_every_command_that_takes_texts_reads_them_alike(tmp_path, command):
    # Each fails on the file before it loads a model or calls a server.
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    _assert_one_line_error(run_zoo(*command, "--input", path), f"{path}, line 2: no 'text' field (fields: txt)")


@pytest.mark.backend_independent
def test_jsonl_pairs_on_some_lines_only_are_an_error(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text": "a", "pair": "b"}\n{"text": "c"}\n')
    result = run_zoo("classify", "B", "--input", path)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"Error: {path}, line 2: no 'pair' field, but line 1 has one "
                                     "(give a pair on every line or on none)")
