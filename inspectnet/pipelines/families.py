"""The family matrix: every capability on every model family, each verified by its invariant or refused in one line.

Capabilities (columns) and what "works" means for each:

* ``record`` — the probe record (features, logits) of the same images is the same at batch sizes 1 and 3;
* ``evidence`` — exact class evidence: Σ_hw E_c + offset_c = logit_c for every class (for token transformers the
  offset is the head's bias plus the input-dependent remainder, :mod:`~inspectnet.analysis.explain.exact_evidence`);
* ``onnx`` — the fp32 export passes its gate (ONNX Runtime = PyTorch at batch 1 and 8);
* ``onnx_evidence`` — the export with the evidence output (and the ``remainder`` output of token transformers) passes
  the gate on the maps and Σ E (+ remainder) + offset = logit in ONNX;
* ``int8`` — the int8 export is written (QDQ, calibrated, checked by onnx.checker and run by ONNX Runtime);
* ``explain`` — the audit's explanations stage (faithfulness against the random control, sanity cascade) runs;
* ``dissect`` — dissection of the last stage on ``shapes`` runs.

A cell is ``"✓"`` or the one-line reason of an :class:`InspectnetError`; any other exception is a bug
and propagates. ``python -m inspectnet.pipelines.families`` prints the matrix as a markdown table.

>>> cells = family_cells(family("ResNet"), "out/matrix", capabilities=("evidence",))   # doctest: +SKIP
>>> cells["evidence"]                                                                    # doctest: +SKIP
'✓'
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectnet.analysis.dissect.dissection import dissect
from inspectnet.analysis.explain.exact_evidence import exact_evidence
from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig
from inspectnet.analysis.explain.methods import MethodConfig
from inspectnet.core.errors import InspectnetError
from inspectnet.data import load_data
from inspectnet.data.concepts import load_concepts
from inspectnet.export.onnx import export_onnx
from inspectnet.models.families import FAMILIES, Family, family, family_model
from inspectnet.models.zoo import ZooModel
from inspectnet.pipelines.explain import ModelForm, QualityConfig, explanation_quality
from inspectnet.probe.recorder import run_probe

CAPABILITIES = ("record", "evidence", "onnx", "onnx_evidence", "int8", "explain", "dissect")
OK = "✓"
DATA = "shapes?n=6&task=square"  # two classes; the shapes have masks for dissection
# the explanations stage at a matrix size: few images, short curves, a short cascade
QUICK = QualityConfig(images=2, sanity_images=2, sanity_steps=2,
                      faithfulness=FaithfulnessConfig(steps=4, road_fractions=(0.5,)), method=MethodConfig(ig_steps=4))
__all__ = ["CAPABILITIES", "OK", "QUICK", "family_cells", "matrix_markdown"]


def family_cells(row: Family, out: str | Path, *, capabilities: Sequence[str] = CAPABILITIES,
                 explain_config: QualityConfig = QUICK, timings: dict[str, float] | None = None) -> dict[str, str]:
    """Run ``capabilities`` on the row's model; each cell is :data:`OK` or a one-line refusal.

    Args:
        row: the family (:data:`inspectnet.models.families.FAMILIES`).
        out: a folder for the records and exported files.
        capabilities: which columns to run (:data:`CAPABILITIES`).
        explain_config: the explanations stage's parameters.
        timings: filled with the CPU seconds (this process, all threads) of each capability when given.

    Returns:
        ``{capability: "✓" or the reason}``.

    Raises:
        InspectnetError: a capability is unknown.

    Examples:
        >>> family_cells(family("MobileNetV3"), "out", capabilities=("evidence",))["evidence"][:40]  # doctest: +SKIP
        'timm:mobilenetv3_small_050 applies Conv2d'
    """
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        raise InspectnetError(f"unknown capability {unknown[0]!r}; expected some of {', '.join(CAPABILITIES)}")
    out = Path(out)
    zm = family_model(row)
    data = load_data(DATA, zm.transform())
    checks: dict[str, Callable[[], None]] = {
        "record": lambda: _record_is_batch_independent(zm, data, out / "record"),
        "evidence": lambda: _evidence_is_exact(zm, data),
        "onnx": lambda: _export(zm, data, out / "fp32.onnx"),
        "onnx_evidence": lambda: _export(zm, data, out / "evidence.onnx", evidence=1),
        "int8": lambda: _export(zm, data, out / "int8.onnx", int8=True),
        "explain": lambda: explanation_quality([ModelForm("full", zm)], data, out / "explain", explain_config) and None,
        "dissect": lambda: dissect(zm, load_concepts("shapes?n=8"), "last_stage", batch_size=4, device="cpu") and None,
    }
    cells = {}
    for name in capabilities:
        start = time.process_time()
        try:
            checks[name]()
            cells[name] = OK
        except InspectnetError as exc:
            cells[name] = " ".join(str(exc).split())  # one line, whatever the message held
        if timings is not None:
            timings[name] = time.process_time() - start
    return cells


def _record_is_batch_independent(zm: ZooModel, data, out: Path) -> None:
    one = run_probe(zm, data, "pre_logits", out / "b1", batch_size=1, device="cpu", show_progress=False)
    three = run_probe(zm, data, "pre_logits", out / "b3", batch_size=3, device="cpu", show_progress=False)
    for name in ("features", "logits"):
        a, b = getattr(one, name), getattr(three, name)
        scale = float(np.abs(a).max()) + 1e-12
        if a.shape != b.shape or float(np.abs(a - b).max()) > 1e-4 * scale:
            raise AssertionError(f"{zm.spec}: the record's {name} differ between batch sizes 1 and 3")


def _evidence_is_exact(zm: ZooModel, data) -> None:
    x = torch.stack([data[i][0] for i in range(2)])
    ev = exact_evidence(zm, x, "all")
    total = ev.maps.double().sum((2, 3)) + ev.offset.double()
    residual = float((total - ev.logits.double().gather(1, ev.classes)).abs().max())
    if residual > 1e-4 * float(ev.logits.abs().max()) + 1e-6:
        raise AssertionError(f"{zm.spec}: evidence sums differ from the logits by {residual:.3g}")


def _export(zm: ZooModel, data, path: Path, *, evidence: int | None = None, int8: bool = False) -> None:
    """An export through the gate (which raises when ONNX Runtime and torch differ)."""
    calibration = np.stack([data[i][0].numpy() for i in range(len(data))]) if int8 else None
    export_onnx(zm, path, force=True, latency=False, evidence=evidence, int8=int8, calibration=calibration)


def matrix_markdown(rows: dict[str, dict[str, str]], families: Sequence[Family] = FAMILIES) -> str:
    """The matrix as a markdown table: one row per family, ✓ or the reason per capability.

    Args:
        rows: ``{family name: {capability: cell}}`` as :func:`family_cells` returns them.
        families: the rows' order (and which to show).

    Returns:
        The table; reasons lose the model's name and the refusal's closing boilerplate.

    Examples:
        >>> print(matrix_markdown({"ResNet": {"evidence": "✓"}}).splitlines()[2])
        | ResNet | resnet18 (64 px) | average pooling + linear | ✓ |
    """
    columns = [c for c in CAPABILITIES if any(c in cells for cells in rows.values())]
    lines = ["| family | model (input) | head | " + " | ".join(columns) + " |",
             "|" + "---|" * (3 + len(columns))]
    for row in families:
        if row.name in rows:
            cells = [_short(rows[row.name].get(c, "")) for c in columns]
            lines.append(f"| {row.name} | {row.describe()} | {row.head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(cell: str) -> str:
    """A refusal without the model's name and the boilerplate that every refusal of its kind repeats."""
    if cell == OK:
        return cell
    text = cell.split(": its head is not average pooling")[0]
    if text.startswith(("timm:", "torchvision:")):
        text = text.split(" ", 1)[1]
    return text.replace("|", "/")


def main(argv: Sequence[str] | None = None) -> int:
    """Print the family matrix (markdown) and the CPU seconds each capability took per row.

    An exception other than InspectnetError (a bug) is shown in its cell as ``internal error: ...``
    instead of ending the run, so one broken cell does not hide the others.
    """
    p = argparse.ArgumentParser(prog="python -m inspectnet.pipelines.families", description=main.__doc__)
    p.add_argument("--families", default="", help="comma-separated family names (default: every non-slow row)")
    p.add_argument("--slow", action="store_true", help="include the slow rows")
    p.add_argument("--capabilities", default=",".join(CAPABILITIES), help="comma-separated columns")
    p.add_argument("--explain-images", type=int, default=2, help="images of the explanations stage (default 2)")
    p.add_argument("--json", metavar="PATH", help="also write the cells and CPU seconds, row by row, to PATH")
    p.add_argument("--merge", nargs="+", metavar="PATH", help="print the table of --json files written before")
    args = p.parse_args(argv)
    if args.merge:
        merged: dict[str, dict[str, str]] = {}
        for f in args.merge:  # cell by cell: a later file's cells replace an earlier file's
            for name, cells in json.loads(Path(f).read_text())["cells"].items():
                merged.setdefault(name, {}).update(cells)
        print(matrix_markdown(merged))
        return 0
    chosen = [family(n) for n in args.families.split(",") if n] or [r for r in FAMILIES if args.slow or not r.slow]
    # the audit's own explanations stage (its default methods, curves and cascade) on a few images
    config = QualityConfig(images=args.explain_images, sanity_images=args.explain_images)
    rows: dict[str, dict[str, str]] = {}
    times: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in chosen:
            times[row.name] = {}
            rows[row.name] = {}
            for capability in args.capabilities.split(","):
                try:
                    rows[row.name].update(family_cells(row, Path(tmp) / row.name, capabilities=(capability,),
                                                       explain_config=config, timings=times[row.name]))
                except Exception as exc:  # noqa: BLE001 - a bug is reported in its cell, the run goes on
                    rows[row.name][capability] = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            if args.json:
                Path(args.json).write_text(json.dumps({"cells": rows, "cpu_seconds": times}, indent=1))
            spent = ", ".join(f"{k} {v:.1f} s" for k, v in times[row.name].items())
            print(f"{row.name}: {spent}", flush=True)
    print(matrix_markdown(rows, chosen))
    if "explain" in times[chosen[0].name]:
        print("\nexplanations stage, CPU seconds per image: " + ", ".join(
            f"{n} {t['explain'] / args.explain_images:.1f}" for n, t in times.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
