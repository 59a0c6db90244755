"""The explanations stage: faithfulness and sanity checks of every model form's explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from inspectnet.core.tables import format_percent, format_value
from inspectnet.data.subsets import spread_subset
from inspectnet.models.zoo import ZooModel
from inspectnet.pipelines.audit.context import AuditContext, describe_error
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.pipelines.audit.token_card import token_evidence_blocks
from inspectnet.reports.blocks import Block, BulletList, Paragraph, Table


class ExplanationsResult(TypedDict, total=False):
    """The explanations stage's result in card.json.

    It is the report of :func:`~inspectnet.pipelines.explain.explanation_quality`, figure paths relative
    to the audit folder.
    """

    images: int
    data: str
    ig_steps: int
    faithfulness: dict[str, Any]
    forms: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    sanity: dict[str, Any]
    cost: dict[str, Any]
    localisation: dict[str, Any]
    token_evidence: dict[str, Any]
    figures: list[dict[str, str]]


def run(ctx: AuditContext) -> ExplanationsResult:
    """The measured quality of the explanations of every form of the model (:func:`explanation_quality`).

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
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
    """The full model, its decomposed and slimmed forms, and the int8 ONNX export of the last of them.

    The export is built with --export; a form that cannot be built says why.
    """
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


ARROWS = "↓ lower is better, ↑ higher is better"


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """The deletion/insertion table against the random control, the model forms and the sanity verdicts.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    f = r["faithfulness"]
    blocks: list[Block] = [Paragraph(
        f"{r['images']} images of {r.get('data') or 'the evaluation data'}, each explained for the class its model form "
        f"predicts. Deletion / insertion: the pixels, most relevant first, are replaced by the {f['baseline']} baseline "
        f"(insertion: restored onto it) in {f['steps']} steps; the area under the curve of the class probability "
        f"is shown. ROAD: {', '.join(f'{int(100 * x)} %' for x in f['road_fractions'])} of the pixels removed by noisy "
        f"linear imputation, most (MoRF) or least (LeRF) relevant first; the mean probability is shown. "
        f"Every method is compared with a random map of its own resolution on the same images (paired "
        f"difference); it beats the control when both deletion and insertion are better by more than two "
        f"standard errors. {ARROWS}.")]
    ok = [x for x in r["rows"] if x["status"] == "ok"]
    loc = r.get("localisation")
    if loc:
        blocks.append(Paragraph(
            "Localisation on the object masks: the energy-based pointing game (Wang et al. 2020) is the share of a "
            "map's positive part inside the objects; a map spread evenly scores the objects' share of the image, "
            f"{format_percent(loc['object_share'])}."))
    pointing = ["pointing game ↑", "Δ pointing game vs random"] if loc else []
    blocks.append(Table(["method", "model form", "map", "deletion AUC ↓", "insertion AUC ↑", "ROAD MoRF ↓",
                         "ROAD LeRF ↑", "Δ deletion vs random", "Δ insertion vs random", "beats random", *pointing,
                         "maps ranked (constant, NaN)"],
                        [[x["method"], x["form"], "x".join(map(str, x["map_size"])), x["deletion_auc"],
                          x["insertion_auc"], x["road_morf"], x["road_lerf"], *_versus(x.get("vs_random")),
                          *(_pointing(x.get("localisation")) if loc else []),
                          f"{x['evaluated']} of {x['images']} ({x['constant_maps']}, {x['nan_maps']})"] for x in ok],
                        sortable=True))
    blocks.append(Paragraph("Explanation quality by model form: what decomposing, slimming and int8 export cost in "
                            "faithfulness of the class-evidence map, beside accuracy."))
    blocks.append(Table(["model form", "engine", "accuracy", "top-1 agreement with full", "evidence deletion AUC ↓",
                         "evidence insertion AUC ↑", "evidence ROAD MoRF ↓", "random deletion AUC",
                         "random insertion AUC", "evidence beats random", "evidence sanity check"],
                        [_form_row(r, form) for form in r["forms"]]))
    if r.get("sanity"):
        blocks.append(Paragraph("Sanity check (Adebayo et al. 2018): the model is randomised block by block from the "
                                "head down and each method's maps are compared with the trained model's by the "
                                "Spearman rank correlation ρ (mean over images); a method passes when |ρ| after the "
                                "whole cascade is below the threshold. The random control does not depend on the "
                                f"model and must fail. Images: {_sanity_images(r)}."))
        blocks.append(Table(["method", "model form", "ρ after the head", "ρ after the whole cascade",
                             "mean |ρ| at the end", "threshold", "passes"],
                            [[m, form, v["spearman"][0], v["spearman"][-1], v["abs_spearman_final"], s["threshold"],
                              _verdict(v["passes"])] for form, s in r["sanity"].items() for m, v in s["methods"].items()]))
    blocks += token_evidence_blocks(r.get("token_evidence"))
    cost = r.get("cost", {})
    if cost.get("forward_passes_per_image_per_method") is not None:
        blocks.append(Paragraph(f"Cost of the metrics: {format_value(cost['forward_passes_per_image_per_method'], 1)} "
                                f"forward passes per image per method (counted; planned {cost['planned']})."))
    notes = [f"{x['name']}: {x['error']}" for x in r["forms"] if x["status"] != "ok"]
    notes += [f"{x['method']} on {x['form']}: {x['error']}" for x in r["rows"] if x["status"] != "ok"]
    if notes:
        blocks.append(BulletList(notes))
    return blocks


def _versus(v: dict[str, Any] | None) -> list[Any]:
    if not v:
        return ["n/a", "n/a", "n/a"]
    return [_plus_minus(v["deletion_auc"], v["deletion_auc_se"]), _plus_minus(v["insertion_auc"], v["insertion_auc_se"]),
            "yes" if v["beats_control"] else "no"]


def _pointing(loc: dict[str, Any] | None) -> list[str]:
    """The pointing game of one row and its paired difference from the random control."""
    if not loc:
        return ["n/a", "n/a"]
    v = loc.get("vs_random")
    return [_plus_minus(loc["energy_pointing_game"], loc["energy_pointing_game_se"]),
            _plus_minus(v["difference"], v["difference_se"]) if v else "—"]


def _plus_minus(value: float | None, se: float | None) -> str:
    return "n/a" if value is None else format_value(value, 3) + (f" ± {format_value(se, 3)}" if se is not None else "")


def _verdict(passes: bool | None) -> str:
    return {True: "pass", False: "fail", None: "undetermined (maps cannot be ranked)"}[passes]


def _sanity_images(r: dict[str, Any]) -> str:
    """How many of the explained images the cascade ran on (the same for every form)."""
    n = next(iter(r["sanity"].values()))["images"]
    return f"all {n} explained images" if n == r["images"] else f"{n} of the {r['images']} explained images, evenly spread"


def _form_row(r: dict[str, Any], form: dict[str, Any]) -> list[Any]:
    if form["status"] != "ok":
        return [form["name"], "—", "not evaluated", "", "", "", "", "", "", "", ""]
    rows = {x["method"] if x["method"] != "random" else "random " + "x".join(map(str, x["map_size"])): x
            for x in r["rows"] if x["form"] == form["name"] and x["status"] == "ok"}
    ev = rows.get("evidence", {})
    rand = rows.get("random " + "x".join(map(str, ev.get("map_size", []))), {})
    sanity = r.get("sanity", {}).get(form["name"], {}).get("methods", {}).get("evidence")
    return [form["name"], form["engine"], form["accuracy"], form["agreement_with_full"], ev.get("deletion_auc"),
            ev.get("insertion_auc"), ev.get("road_morf"), rand.get("deletion_auc"), rand.get("insertion_auc"),
            _versus(ev.get("vs_random"))[2], _verdict(sanity["passes"]) if sanity else "n/a"]


STAGE = Stage("explanations", "Explanation faithfulness and sanity checks", run, blocks=blocks,
              params=lambda c: {"n": c.explain_images, "steps": c.deletion_steps, "baseline": c.baseline,
                                "ig": c.ig_steps, "sanity": c.sanity_images, "int8": c.export, "seed": c.seed},
              needs=("probe",), uses=("decomposition",), enabled=lambda c: c.explain_images > 0)
