"""The public names: ``from inspectnet import ...`` for the main calls, and the documentation's imports are true."""

import ast
import importlib
import re
from pathlib import Path

import inspectnet

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_public_name_is_the_object_of_its_home_module():
    assert {"train", "TrainConfig", "finetune", "fit_influence", "decompose_model", "slim_model", "extract_rules",
            "sparsity_metrics", "linear_probes", "dissect", "run_audit", "AuditConfig", "compare"} <= set(inspectnet.__all__)
    for name, module in inspectnet._LAZY.items():
        assert getattr(inspectnet, name) is getattr(importlib.import_module(module), name), name
    assert set(inspectnet.__all__) <= set(dir(inspectnet))


def documented_imports() -> list[str]:
    """Every import statement in the Python blocks of README.md and docs/."""
    blocks = [block for page in PAGES
              for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)]
    found = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(ast.unparse(node))
    return found


def test_documented_python_imports_all_work():
    imports = documented_imports()
    assert len(imports) >= 10 and any("run_audit" in s for s in imports)
    for statement in imports:
        exec(statement, {})  # noqa: S102 - our own documentation, checking that it names real modules and names
