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
