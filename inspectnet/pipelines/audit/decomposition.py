"""The decomposition stage: influential features per class and the decomposed head."""

from __future__ import annotations

from typing import Any

from inspectnet.pipelines.audit.context import AuditContext


def stage_decomposition(ctx: AuditContext) -> dict[str, Any]:
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

