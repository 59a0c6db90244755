"""The explanations stage: faithfulness and sanity checks of every model form's explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspectnet.data.subsets import spread_subset
from inspectnet.models.zoo import ZooModel
from inspectnet.pipelines.audit.context import AuditContext, describe_error


def stage_explanations(ctx: AuditContext) -> dict[str, Any]:
    from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig
    from inspectnet.analysis.explain.methods import MethodConfig
    from inspectnet.pipelines.explain import QualityConfig, explanation_quality

    cfg = ctx.config
    data = spread_subset(ctx.eval_dataset(), cfg.explain_images)
    quality = QualityConfig(images=cfg.explain_images, sanity_images=cfg.sanity_images,
                            faithfulness=FaithfulnessConfig(steps=cfg.deletion_steps, baseline=cfg.baseline,
                                                            batch_size=cfg.batch_size, seed=cfg.seed),
                            method=MethodConfig(ig_steps=cfg.ig_steps, internal_batch_size=cfg.batch_size,
                                                seed=cfg.seed))
    doc = explanation_quality(_model_forms(ctx), data, ctx.out / "explanations", quality)
    doc["figures"] = [{**f, "path": ctx.rel(f["path"])} for f in doc["figures"]]
    return doc


def _model_forms(ctx: AuditContext) -> list[Any]:
    """The full model, its decomposed and slimmed forms, and the int8 ONNX export of the last of them
    (with --export); a form that cannot be built says why."""
    from inspectnet.analysis.heads.slim import slim_model
    from inspectnet.models.zoo import load_model
    from inspectnet.pipelines.explain import ModelForm

    forms = [ModelForm("full", ctx.zm)]
    dec = ctx.results.get("decomposition", {})
    if dec.get("status") != "ok":
        return forms + [ModelForm(n, missing="the decomposition stage failed") for n in ("decomposed", "slimmed", "int8")]
    dzm = load_model(str(ctx.out / dec["result"]["model_dir"])).to(ctx.config.device)
    forms.append(ModelForm("decomposed", dzm))
    last = dzm
    try:
        last, _ = slim_model(dzm)
        forms.append(ModelForm("slimmed", last))
    except Exception as exc:  # noqa: BLE001 - the card says why this form is missing
        forms.append(ModelForm("slimmed", missing=describe_error(exc)))
    forms.append(_int8_form(ctx, last, "slimmed" if last is not dzm else "decomposed"))
    return forms


def _int8_form(ctx: AuditContext, zm: ZooModel, of: str) -> Any:
    """int8 ONNX export (with the evidence output) of ``zm``, calibrated on the fitting data."""
    from inspectnet.data.subsets import calibration_arrays
    from inspectnet.export.onnx import export_onnx
    from inspectnet.pipelines.explain import ModelForm

    name = f"int8 (of {of})"
    if not ctx.config.export:
        return ModelForm(name, missing="not evaluated: run the audit with --export")
    try:
        calibration, _ = calibration_arrays(ctx.dataset(ctx.config.data), 64)
        res = export_onnx(zm, ctx.out / "explanations" / "int8" / "model.onnx", evidence=1, int8=True,
                          calibration=calibration, latency=False, force=True, device=ctx.config.device)
    except Exception as exc:  # noqa: BLE001 - the card says why this form is missing
        return ModelForm(name, missing=describe_error(exc))
    return ModelForm(name, onnx=Path(res.int8["path"]))

