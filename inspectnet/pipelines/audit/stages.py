"""The audit's stages, in order, and every fact the driver needs about each."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from inspectnet.pipelines.audit.attributions import stage_attributions
from inspectnet.pipelines.audit.config import AuditConfig
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.decomposition import stage_decomposition
from inspectnet.pipelines.audit.dissection import stage_dissection
from inspectnet.pipelines.audit.explanations import stage_explanations
from inspectnet.pipelines.audit.export import stage_export
from inspectnet.pipelines.audit.linear_probes import stage_linear_probes
from inspectnet.pipelines.audit.probe import stage_probe
from inspectnet.pipelines.audit.rules import stage_rules
from inspectnet.pipelines.audit.sparsity import stage_sparsity


@dataclasses.dataclass(frozen=True)
class Stage:
    """One audit stage and every fact the driver needs about it.

    ``params(config)`` gives the parameters that change the stage's result (and nothing else: they
    key its cache); ``needs`` are earlier stages that must have succeeded; ``uses`` are earlier
    stages whose results it reads when they succeeded (a failure is tolerated). The keys of both
    feed its cache key. ``enabled(config)`` says whether this audit runs it at all; ``writes_folder``
    whether it leaves files in ``DIR/<name>`` (a deleted folder is recomputed, not trusted).
    """

    name: str
    title: str
    run: Callable[[AuditContext], dict[str, Any]]
    params: Callable[[AuditConfig], dict[str, Any]]
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    writes_folder: bool = True
    enabled: Callable[[AuditConfig], bool] = lambda _config: True
    resumable: bool = False  # an interrupted run (same key) continues from its files instead of clearing them
    distributed: bool = False  # under torchrun every rank runs it (its data pass is shared out)


def _probe_params(c: AuditConfig) -> dict[str, Any]:
    return {"data": c.data, "eval": c.eval_data, "layers": c.layers, "layer": c.layer, "limit": c.limit,
            "eval_limit": c.eval_limit, "class_map": c.class_map}


STAGES: tuple[Stage, ...] = (
    Stage("probe", "Probed samples and layers", stage_probe, lambda c: {**_probe_params(c), "format": 2},
          resumable=True, distributed=True),
    Stage("decomposition", "Influential features and decomposed head", stage_decomposition,
          lambda c: {"k1": c.k1, "k2": c.k2, "retrain": c.retrain_epochs, "seed": c.seed}, needs=("probe",)),
    Stage("rules", "Rules extracted from the model's filters", stage_rules,
          lambda c: {"seed": c.seed, "format": 3},
          needs=("probe",)),
    Stage("sparsity", "Activation sparsity", stage_sparsity, lambda c: {}, needs=("probe",), writes_folder=False),
    Stage("linear_probes", "Linear probes across depth", stage_linear_probes, lambda c: {}, needs=("probe",)),
    Stage("attributions", "Attributions and receptive fields", stage_attributions,
          lambda c: {"n": c.attribution_images, "steps": c.ig_steps, "units": c.top_units}, needs=("probe",),
          uses=("decomposition", "rules")),
    Stage("explanations", "Explanation faithfulness and sanity checks", stage_explanations,
          lambda c: {"n": c.explain_images, "steps": c.deletion_steps, "baseline": c.baseline, "ig": c.ig_steps,
                     "sanity": c.sanity_images, "int8": c.export, "seed": c.seed},
          needs=("probe",), uses=("decomposition",), enabled=lambda c: c.explain_images > 0),
    Stage("dissection", "Concept detectors (network dissection)", stage_dissection,
          lambda c: {"concepts": c.concepts, "limit": c.concept_limit}, needs=("probe",),
          enabled=lambda c: bool(c.concepts), distributed=True),
    Stage("export", "Export (ONNX) parity and speed", stage_export,
          lambda c: {"export": c.export, "max_drop": c.export_max_drop, "format": 4},
          needs=("decomposition",), enabled=lambda c: c.export),
)

