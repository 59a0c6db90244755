"""The import-layering contract: a lower layer never imports a higher one, and runtime/ never imports torch.

Every ``import`` statement of every module in ``inspectnet/`` and ``plugins/`` counts, wherever it
stands (module level, inside functions, under ``TYPE_CHECKING``), read from the source with ``ast``.
A module belongs to the layer of its longest matching prefix in :data:`LAYERS` and may import its
own layer and the ones below. docs/architecture.md explains the order.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom-up. reports/ renders dictionaries and arrays only (the card from card.json, HTML pieces,
# pictures), so it sits just above core: the analyses that write their own pages (dissection,
# attributions) use it, and it can never reach into a model, a record or an analysis. The package
# itself (the lazy public facade) and ``__main__`` are the top: no module may go through it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("inspectnet.core",),
    ("inspectnet.runtime",),
    ("inspectnet.reports",),
    ("inspectnet.data",),
    ("inspectnet.models",),
    ("inspectnet.probe",),
    ("inspectnet.analysis",),
    ("inspectnet.plugins", "inspectnet.plugin_base", "inspectnet.training", "inspectnet_plugins", "inspectnet.testing"),
    ("inspectnet.export",),
    ("inspectnet.pipelines",),
    ("inspectnet.cli",),
    ("inspectnet", "inspectnet.__main__"),
)
TORCH = ("torch", "torchvision", "timm", "captum")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for the library and the first-party plugins."""
    found = {}
    for package, folder in (("inspectnet", ROOT / "inspectnet"), ("inspectnet_plugins", ROOT / "plugins")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names ``module`` or a package holding it."""
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer of the contract; add it to LAYERS")
    return best


def imports_of(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file; ``from P import m`` names P.m when m is a module.

    A string literal that is exactly the dotted name of a first-party module counts too: that is how a
    module is imported by name (``importlib.import_module``), which hides a dependency otherwise.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in MODULES:
            out.append((node.value, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in MODULES else base, node.lineno))
    return out


def first_party(name: str) -> bool:
    return name == "inspectnet" or name.startswith(("inspectnet.", "inspectnet_plugins"))


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 60 and "inspectnet.models.zoo" in MODULES and "inspectnet_plugins.ebp" in MODULES
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_higher_layer():
    violations = []
    for module, path in sorted(MODULES.items()):
        own = layer_of(module)
        for target, line in imports_of(module, path):
            if first_party(target) and layer_of(target) > own:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {module} (layer {own}) imports {target} "
                                  f"(layer {layer_of(target)})")
    assert not violations, "\n".join(violations)


def test_runtime_is_torch_free_and_imports_only_core():
    runtime = {m: p for m, p in MODULES.items() if m.startswith("inspectnet.runtime")}
    assert "inspectnet.runtime.classifier" in runtime
    for module, path in runtime.items():
        for target, line in imports_of(module, path):
            assert target.split(".")[0] not in TORCH, f"{path}:{line} imports {target}"
            if first_party(target):
                assert target.startswith(("inspectnet.core", "inspectnet.runtime")), f"{path}:{line} imports {target}"


def test_the_contract_catches_what_it_forbids(tmp_path):
    """The checker itself: an upward import (also inside a function) and a torch import are found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from inspectnet.pipelines.audit import run_audit\n\nimport torch.nn\n")
    found = imports_of("inspectnet.models.fake", src)
    assert ("inspectnet.pipelines.audit", 2) in found and ("torch.nn", 4) in found
    assert layer_of("inspectnet.pipelines.audit") > layer_of("inspectnet.models.fake")
    assert layer_of("inspectnet.reports.card") < layer_of("inspectnet.data") < layer_of("inspectnet.analysis.sparsity")
    src.write_text("import importlib\nfor name in ('inspectnet.analysis.heads.slim',):\n    importlib.import_module(name)\n")
    assert ("inspectnet.analysis.heads.slim", 2) in imports_of("inspectnet.models.fake", src)
    src.write_text("from inspectnet.reports import html, card\n")
    assert imports_of("inspectnet.analysis.fake", src) == [("inspectnet.reports.html", 1), ("inspectnet.reports.card", 1)]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("somewhere.else")


MAX_MODULE_LINES = 450


def test_no_module_is_longer_than_450_lines():
    """Every module in inspectnet/ stays short enough to read in one sitting; the offenders are listed."""
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines())
               for module, path in MODULES.items() if module == "inspectnet" or module.startswith("inspectnet.")}
    assert len(lengths) > 60
    offenders = sorted(f"{path.relative_to(ROOT)}: {n} lines" for path, n in lengths.items() if n > MAX_MODULE_LINES)
    assert not offenders, f"modules above {MAX_MODULE_LINES} lines:\n" + "\n".join(offenders)
