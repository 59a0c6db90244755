"""The public names: ``from inspectnet import ...`` for the main calls, and README's imports are true."""

import ast
import importlib
import re
from pathlib import Path

import inspectnet

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_public_name_is_the_object_of_its_home_module():
    assert {"train", "TrainConfig", "finetune", "fit_influence", "decompose_model", "slim_model", "extract_rules",
            "sparsity_metrics", "linear_probes", "dissect", "run_audit", "AuditConfig", "compare"} <= set(inspectnet.__all__)
    for name, module in inspectnet._LAZY.items():
        assert getattr(inspectnet, name) is getattr(importlib.import_module(module), name), name
    assert set(inspectnet.__all__) <= set(dir(inspectnet))


def readme_imports() -> list[str]:
    """Every import statement in README.md's Python blocks."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = []
    for block in blocks:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(ast.unparse(node))
    return found


def test_readme_python_imports_all_work():
    imports = readme_imports()
    assert len(imports) >= 10 and any("run_audit" in s for s in imports)
    for statement in imports:
        exec(statement, {})  # noqa: S102 - our own README, checking that it names real modules and names
