"""The linear-probes stage: how linearly decodable the classes are at each probed layer."""

from __future__ import annotations

from typing import Any, TypedDict

from inspectnet.core.tables import format_percent
from inspectnet.pipelines.audit.context import AuditContext
from inspectnet.pipelines.audit.stage import Stage
from inspectnet.reports.blocks import Block, Table


class LinearProbesResult(TypedDict):
    """The linear-probes stage's result in card.json."""

    rows: list[dict[str, Any]]
    model_accuracy: float | None
    n_train: int
    n_eval: int
    figures: list[dict[str, str]]


def run(ctx: AuditContext) -> LinearProbesResult:
    """A linear probe per probed layer, fitted on the train record and scored on the eval record.

    Args:
        ctx: the audit's context (model, config, data, output folder, earlier stages' results).

    Returns:
        The stage's result, as card.json stores it.
    """
    from inspectnet.analysis.linprobe import linear_probes, plot

    train, ev = ctx.records()
    res = linear_probes(train, ev)
    path = plot(res, ctx.out / "linear_probes" / "linear_probes.png")
    return {"rows": res.rows, "model_accuracy": res.model_accuracy, "n_train": res.n_train, "n_eval": res.n_eval,
            "figures": [{"path": ctx.rel(path), "caption": "linear-probe accuracy across depth"}]}


def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
    """Linear-probe accuracy per layer.

    Args:
        doc: the card document.
        r: this stage's result.

    Returns:
        The section's blocks.
    """
    n_train, n_eval = r.get("n_train"), r.get("n_eval")
    return [Table(["layer", "dim", "train acc." + (f" (n = {n_train:,})" if n_train else ""),
                   "test acc." + (f" (n = {n_eval:,})" if n_eval else "")],
                  [[x["layer"], x["dim"], format_percent(x["train_accuracy"]), format_percent(x["test_accuracy"])]
                   for x in r["rows"]])]


STAGE = Stage("linear_probes", "Linear probes across depth", run, blocks=blocks, params=lambda c: {},
              needs=("probe",))
