"""The decomposition stage: influential features per class and the decomposed head."""

from __future__ import annotations

from typing import Any, TypedDict

from inspectnet.core.tables import format_percent, format_value
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Paragraph, Table
from inspectnet.reports.card.fields import class_label, counted, ok_result, ratio_text


class DecompositionResult(TypedDict, total=False):
    """The decomposition stage's result in card.json.

    The keys of the decomposition report it keeps, and the per-class influential features of the classes
    with data.
    """

    k1: int
    k2: int
    accuracy_full: float | None
    accuracy_decomposed: float | None
    rA: float | None
    rA_undefined: str
    agreement: float | None
    union_size: int
    features_used: list[int]
    feature_dim: int
    dense_classes: list[int]
    head_macs_full: int
    head_macs_decomposed: int
    head_macs_gathered_dense: int
    among_fitted_classes: dict[str, Any]
    noise_ablation: dict[str, Any]
    accuracy_retrained: float | None
    retrain_epochs: int
    model_form: str
    model_choice: str
    num_classes: int
    classes_with_data: int
    per_class: list[dict[str, Any]]
    model_dir: str


def run(ctx: AuditContext) -> DecompositionResult:
    """Algorithm 1's influential features per class, the decomposed head, and each feature's exact mean contribution.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.analysis.heads.decompose import class_feature_means, head_of, linear_params, mean_contributions
    from inspectnet.pipelines.decompose import run_decomposition

    cfg = ctx.config
    train, ev = ctx.records()
    doc = run_decomposition(train, ev, ctx.out / "decomposition", zm=ctx.zm, k1=cfg.k1, k2=cfg.k2,
                            retrain_epochs=cfg.retrain_epochs, seed=cfg.seed)
    # exact mean contribution W[c, j] * f_j of each influential feature over class c's eval samples,
    # from per-class feature sums (memory O(C·d), not O(N·C·d))
    means, counts = class_feature_means(ev, ctx.zm.num_classes)
    contributions = mean_contributions(linear_params(head_of(ctx.zm))[0], means, doc["supports"])
    present = sorted(set(ctx.classes_present("train")) | set(ctx.classes_present("eval")))
    per_class = [{"class": c, "features": doc["supports"][c], "frequencies": doc["frequencies"][c],
                  "mean_contribution": contributions[c] if counts[c] > 0 else None,
                  "accuracy_full": doc["per_class_accuracy_full"][c],
                  "accuracy_decomposed": doc["per_class_accuracy_decomposed"][c]} for c in present]
    keep = ("k1", "k2", "accuracy_full", "accuracy_decomposed", "rA", "rA_undefined", "agreement", "union_size",
            "features_used", "feature_dim", "dense_classes", "head_macs_full", "head_macs_decomposed",
            "head_macs_gathered_dense", "among_fitted_classes", "noise_ablation", "accuracy_retrained",
            "retrain_epochs", "model_form", "model_choice")
    return {**{k: doc[k] for k in keep if k in doc}, "num_classes": doc["num_classes"],
            "classes_with_data": len(present), "per_class": per_class, "model_dir": ctx.rel(doc["model_dir"])}


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """Agreement, retraining, dense classes and the per-class influential features.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    n = (ok_result(doc, "probe") or {}).get("eval", {}).get("samples")
    blocks: list[Block] = [Paragraph(
        f"A_f, A_d, rA, the union and the head MACs are under Quantitative analyses. Top-1 agreement of the "
        f"decomposed head with the full one: {counted(r['agreement'], n)}.")]
    if r.get("model_choice"):
        blocks.append(Paragraph(f"Decomposed head after retraining: {counted(r.get('accuracy_retrained'), n)}; "
                                f"{r['model_choice']}."))
    if r.get("dense_classes"):
        blocks.append(Paragraph(
            f"{r['num_classes'] - r['dense_classes']} of the model's {r['num_classes']} classes had fitting data and "
            f"were decomposed; the other {r['dense_classes']} keep their dense rows (nothing says which of their "
            f"features matter), which the head MACs count and which win most top-1 decisions over all classes."))
        among = r.get("among_fitted_classes") or {}
        if among.get("samples"):
            blocks.append(Paragraph(
                f"Among the {among['num_classes']} decomposed classes only (top-1 among them, on their "
                f"{among['samples']} eval samples): A_f {format_value(among['accuracy_full'])}, A_d "
                f"{format_value(among['accuracy_decomposed'])}, rA {ratio_text(among)}."))
    per_class = [[class_label(doc, p["class"]), ", ".join(map(str, p["features"])) or "none (no fitting data)",
                  _listed(p["frequencies"]), _listed(p["mean_contribution"] or []), format_percent(p["accuracy_full"]),
                  format_percent(p["accuracy_decomposed"])] for p in r["per_class"]]
    return [*blocks,
            *_noise_blocks(r["noise_ablation"], n),
            Paragraph(f"Per class: the {len(per_class)} classes with data."),
            Table(["class", "influential features S_c", "frequency in top-k1", "mean contribution W·f", "acc. full",
                   "acc. decomposed"], per_class, sortable=True)]


def _noise_blocks(na: dict[str, Any], n: int | None) -> list[Block]:
    """The noise ablation, each number labelled with the head it was measured on."""
    rows = [["the original model's full head", counted(na["influential"], n), counted(na["non_influential"], n)]]
    if "decomposed_head" in na:
        rows.append(["the decomposed head", counted(na["decomposed_head"]["influential"], n),
                     counted(na["decomposed_head"]["non_influential"], n)])
    count = na.get("num_influential")
    return [Paragraph("Noise ablation: accuracy when the influential features (∪ S_c"
                      + (f", {count}" if count is not None else "") + ") or as many randomly chosen "
                      "non-influential ones are replaced by N(0, 1) noise" + (f" ({na['note']})" if na.get("note") else "")
                      + "."),
            Table(["head", "noise on influential", "noise on non-influential"], rows)]


def _listed(values: list[float]) -> str:
    return ", ".join(format_value(v, 3) for v in values)


STAGE = Stage("decomposition", "Influential features and decomposed head", run, blocks=blocks,
              params=lambda c: {"k1": c.k1, "k2": c.k2, "retrain": c.retrain_epochs, "seed": c.seed}, needs=("probe",))
