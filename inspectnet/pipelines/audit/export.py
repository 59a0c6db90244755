"""The export stage: the ONNX file users ship, with its parity, speed and size beside the dense model's."""

from __future__ import annotations

from typing import Any, TypedDict

from inspectnet.core.errors import InspectnetError
from inspectnet.core.tables import format_percent
from inspectnet.models.zoo import ZooModel
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Paragraph, Table
from inspectnet.reports.card.fields import counted


class ExportResult(TypedDict):
    """The export stage's result in card.json: what was exported and why, its parity, speed and size."""

    path: str
    exporter: str
    opset: int
    parity: dict[str, Any]
    latency_ms: dict[str, Any]
    size_bytes: int
    model: str
    decomposed_form: str
    dense_instead: str | None
    model_choice: str | None
    slimming: dict[str, Any]
    models: list[dict[str, Any]]


def run(ctx: AuditContext) -> ExportResult:
    """ONNX of what users ship: the decomposition's model, slimmed where slimming is exact.

    That is the better of retrained and not, else as it is (named, with the reason); the dense model
    instead when the decomposed one loses more than ``export_max_drop`` of accuracy (said, with the
    numbers). Its accuracy, fingerprint and size are listed next to the dense model's.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.export.onnx import export_onnx
    from inspectnet.training.loop import evaluate

    candidate, form, slimming = _decomposed_candidate(ctx)
    ev, probe = ctx.eval_dataset(), ctx.results["probe"]["result"]
    dense = _model_row("dense model (as audited)", ctx.zm, probe["accuracy"], probe["eval"]["samples"])
    accuracy = evaluate(candidate, ev, batch_size=ctx.config.batch_size, device=ctx.config.device)
    rows = [dense, _model_row(form, candidate, accuracy, len(ev))]
    fallback = _dense_instead(ctx, form, accuracy, len(ev), probe["accuracy"])
    shipped = ctx.zm if fallback else candidate
    res = export_onnx(shipped, ctx.out / "export" / "model.onnx", force=True, device=ctx.config.device)
    exported = rows[0 if fallback else 1]
    exported["model"] = f"exported: {exported['model']}"
    return {"path": ctx.rel(res.path), "exporter": res.exporter, "opset": res.opset, "parity": res.parity,
            "latency_ms": res.latency_ms, "size_bytes": res.size_bytes,
            "model": "dense model (as audited)" if fallback else form, "decomposed_form": form,
            "dense_instead": fallback, "model_choice": ctx.results["decomposition"]["result"].get("model_choice"),
            "slimming": slimming, "models": rows}


def _decomposed_candidate(ctx: AuditContext) -> tuple[ZooModel, str, dict[str, Any]]:
    """The decomposition's saved model, slimmed where that is exact: (model, its form, slimming facts)."""
    from inspectnet.analysis.heads.slim import slim_model
    from inspectnet.models.zoo import load_model

    dec = ctx.results["decomposition"]["result"]
    dzm = load_model(str(ctx.out / dec["model_dir"]))
    form = dec.get("model_form", "decomposed head")
    try:
        slimmed, slim = slim_model(dzm)
    except InspectnetError as exc:
        return dzm, form, {"error": str(exc)}
    keys = ("method", "kept_channels", "feature_dim", "logits_max_abs_diff", "macs_before", "macs_after")
    return slimmed, f"slimmed model, {form}", {k: slim[k] for k in keys}


def _dense_instead(ctx: AuditContext, form: str, accuracy: float, n: int, dense: float | None) -> str | None:
    """Why the dense model is exported instead of the decomposed ``form``, or None when it is not."""
    drop = ctx.config.export_max_drop
    if dense is None or accuracy >= dense - drop:
        return None
    dec = ctx.results["decomposition"]["result"]
    why = (f"the {form} scores {accuracy * 100:.1f} % on the {n} evaluation samples against the dense model's "
           f"{dense * 100:.1f} %, more than --export-max-drop {drop:g} ({drop * 100:.1f} points) below")
    total = dec["num_classes"]
    with_data = dec.get("classes_with_data", total)
    if with_data < total:
        why += (f"; only {with_data} of the model's {total} classes have data, and the {total - with_data} others "
                f"keep dense rows that outscore the {dec['k2']}-feature rows")
    return why + " (raise --k2, retrain with --retrain-epochs, or accept the loss with a larger --export-max-drop)"


def _model_row(name: str, zm: ZooModel, accuracy: float | None, n: int) -> dict[str, Any]:
    params = sum(p.numel() for p in zm.model.parameters())
    return {"model": name, "fingerprint": zm.fingerprint(), "accuracy": accuracy, "n": n, "parameters": params,
            "weights_bytes": sum(p.numel() * p.element_size() for p in zm.model.parameters())}


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """What was exported and why, its parity and speed, beside the dense model.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    blocks: list[Block] = [Paragraph(f"Exported: the {r.get('model', 'model')} ({r['exporter']} exporter, opset "
                                     f"{r['opset']}, {r['path']}, {r['size_bytes'] / 1e6:.2f} MB).")]
    if r.get("dense_instead"):
        blocks.append(Paragraph(f"Not the decomposed model: {r['dense_instead']}."))
    if r.get("model_choice"):
        blocks.append(Paragraph(f"Which decomposed head: {r['model_choice']}."))
    slim = r.get("slimming") or {}
    if "error" in slim:
        blocks.append(Paragraph(f"Not slimmed: {slim['error']}."))
    elif slim:
        blocks.append(Paragraph(f"Slimmed exactly ({slim['method']}): {slim['kept_channels']} of {slim['feature_dim']} "
                                f"penultimate channels kept, logits within {slim['logits_max_abs_diff']:.1e} of the "
                                f"decomposed model's, MACs {slim['macs_before']:,} -> {slim['macs_after']:,}."))
    if r.get("models"):
        blocks.append(Table(["model", "weights fingerprint", "accuracy", "parameters", "weights (float32)"],
                            [[m["model"], m["fingerprint"][:16], counted(m["accuracy"], m["n"]), f"{m['parameters']:,}",
                              f"{m['weights_bytes'] / 1e6:.2f} MB"] for m in r["models"]]))
    return [*blocks, Paragraph("The ONNX file verified against PyTorch:"), Table(["metric", "value"], export_rows(r))]


def export_rows(r: dict[str, Any]) -> list[list[Any]]:
    """Parity and latency of an export section as (metric, value) rows.

    Args:
        r: the export section's result.

    Returns:
        The rows.
    """
    par = r.get("parity", {})
    agree = par.get("top1_agreement")
    rows: list[list[Any]] = [["top-1 agreement ONNX Runtime vs PyTorch", None if agree is None else format_percent(agree)],
                             ["max abs. logit difference", f"{par['max_abs_diff']:.2e}" if "max_abs_diff" in par else None]]
    lat = r.get("latency_ms", {})
    for batch in sorted({b for v in lat.values() if isinstance(v, dict) for b in v}, key=lambda b: int(b)):
        cells = {k: v[batch] for k, v in lat.items() if isinstance(v, dict) and batch in v}
        rows.append([f"latency ms at batch {batch}", ", ".join(f"{k} {v:.3g}" for k, v in cells.items())])
        if "torch_eager" in cells and cells.get("ort_fp32"):
            rows.append([f"speed-up ORT fp32 / torch at batch {batch}", f"{cells['torch_eager'] / cells['ort_fp32']:.2f}x"])
    return rows


STAGE = Stage("export", "Export (ONNX) parity and speed", run, blocks=blocks,
              params=lambda c: {"export": c.export, "max_drop": c.export_max_drop, "format": 4},
              needs=("decomposition",), enabled=lambda c: c.export)
