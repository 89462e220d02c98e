"""The shape of the code (../shared/ARCHITECTURE.md): only zoo/families/ knows a family by name,
and the import contract in pyproject.toml (layers cli -> server -> zoo, model files free of
jax/tensorflow/torch, zoo.engine in one direction) holds."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import families

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parent.parent


def family_name_uses(path, names):
    """(line, name) for each comparison with, or dict key of, a family's name in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            operands = [key for key in node.keys if key is not None]
        else:
            continue
        found += [(node.lineno, o.value) for o in operands if isinstance(o, ast.Constant) and o.value in names]
    return found


def test_no_family_switch_outside_the_families_folder():
    names = set(families.names())
    assert {"gpt", "bert", "seq2seq"} <= names
    offenders = []
    for folder in ("zoo", "server", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("zoo", "families") or "gen" in relative.parts:
                continue
            offenders += [f"{relative}:{line} {name!r}" for line, name in family_name_uses(path, names)]
    assert not offenders, "family names compared outside zoo/families/: " + ", ".join(offenders)


def test_the_check_sees_a_switch(tmp_path):
    switch = tmp_path / "switch.py"
    switch.write_text('def f(info):\n    return 1 if info.kind == "seq2seq" else {"gpt": 2}\n', encoding="utf-8")
    assert family_name_uses(switch, set(families.names())) == [(2, "seq2seq"), (2, "gpt")]


def test_the_import_contract_holds():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def unsafe_loads(path):
    """(line, what) for each call in the file that could run code from data: pickle, torch.load,
    np.load without allow_pickle=False, Keras loading outside safe mode."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [(node.lineno, f"import {m}") for m in modules if m and m.split(".")[0] in ("pickle", "dill",
                                                                                                  "cloudpickle", "joblib")]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        if name.endswith("np.load") or name == "numpy.load":
            if keywords.get("allow_pickle") != "False":
                found.append((node.lineno, f"{name} without allow_pickle=False"))
        elif name.endswith("torch.load") or name.endswith("pickle.load") or name.endswith("pickle.loads"):
            found.append((node.lineno, name))
        elif keywords.get("safe_mode") == "False" or name.endswith("enable_unsafe_deserialization"):
            found.append((node.lineno, f"{name} outside Keras safe mode"))
    return found


def test_nothing_loads_pickle_or_leaves_keras_safe_mode():
    sources = [p for folder in ("zoo", "cli", "server", "benchmarks", "scripts") for p in (ROOT / folder).rglob("*.py")
               if "gen" not in p.relative_to(ROOT).parts]
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in sources for line, what in unsafe_loads(p)]
    assert not found, found


def test_the_unsafe_load_check_sees_each_kind(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text("import pickle\nimport numpy as np\nimport torch\nnp.load('a')\nnp.load('b', allow_pickle=True)\n"
                      "np.load('c', allow_pickle=False)\ntorch.load('d')\n"
                      "keras.saving.load_model('e', safe_mode=False)\n")
    assert [line for line, _ in unsafe_loads(source)] == [1, 4, 5, 7, 8]
