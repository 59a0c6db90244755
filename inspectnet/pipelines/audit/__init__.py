"""One command from a model to an interpretability model card: ``inspectnet audit MODEL DATA --out DIR``.

Stages, in order (each reads what the earlier ones wrote into ``DIR``)::

    probe → decomposition → rules → sparsity → linear_probes → attributions → explanations
          → dissection (with concept data) → export (when asked) → card

Each stage is one module of this package declaring ``STAGE``, a :class:`Stage`: its name and card
title, the parameters of the config that change its result, the stages it needs (their failure fails
it) and uses (when they succeeded), whether it writes a folder ``DIR/<name>``, the function that runs
it (``run(ctx)``, its result is stored in card.json) and the one that renders its card section
(``blocks(doc, result)``). :data:`STAGES` lists them in order; the driver and the card read nothing
else, so the card's sections follow the stage list.

Adding a stage is one module and one line in :mod:`~inspectnet.pipelines.audit.stages`. The smallest,
``sparsity``::

    def run(ctx: AuditContext) -> dict[str, Any]:
        from inspectnet.analysis.sparsity import record_sparsity   # imported here: cached audits skip it

        _, ev = ctx.records()
        return {"rows": [m.to_dict() for m in record_sparsity(ev)]}

    def blocks(doc: dict[str, Any], r: dict[str, Any]) -> list[Block]:
        return [Table(["layer", *SPARSITY_KEYS], [[row["layer"], *[row[k] for k in SPARSITY_KEYS]] for row in r["rows"]])]

    STAGE = Stage("sparsity", "Activation sparsity", run, blocks=blocks, params=lambda c: {}, needs=("probe",),
                  writes_folder=False)

The analysed layer (rules, receptive fields, dissection) is chosen once: ``AuditConfig.layer``, by
default the last probed layer. The probe stage resolves it, probes it, and records it as
``analysed_layer`` in its section of the card.

Caching: ``DIR/audit.json`` stores, per stage, a key = sha256 of (model fingerprint, class names,
the stage's parameters, the keys of the stages it needs and uses). A stage whose key is unchanged
and whose last run succeeded is skipped (its stored result is reused), so a second audit is nearly
free and a changed parameter re-runs only the stages that depend on it. Failed stages are never
cached.

Safety: arguments that make a stage impossible (a limit below 1, unknown data or concept data, a
bad layer, k2 > k1, ...) are refused by :func:`check_config` before anything runs (those that need
the model, on a folder that holds an audit already, by the stage that uses them). A ``DIR``
holding another model's audit (different weights fingerprint) is refused, and so is a non-empty
folder without ``audit.json``: a folder is an audit's only when inspectnet wrote that file (first,
into an empty folder). Each stage's entry in ``audit.json`` lists the files the stage wrote, and
re-running a stage removes exactly those (a stage killed mid-way is known by what appeared in its
folder since it started), never anything else. An interrupted probe stage resumes its records. A
stage that fails for a reason found later is recorded with its error; stages that need it are
marked failed with the reason; the card is written regardless and ``inspectnet audit`` exits 3.

Cost: the model is loaded only when a stage has to run; for a folder saved by inspectnet its
fingerprint, classes and description are read from its files (:class:`~inspectnet.models.zoo.ModelRef`),
so a fully cached audit imports neither timm nor any analysis library. With ``eval_data`` unset the
evaluation record is the training record (probed once).

Under ``torchrun`` (:mod:`inspectnet.core.distributed`) the probe and dissection stages run first,
on every rank, each rank taking its share of the batches; rank 0 then runs the other stages and
writes the card, and the other ranks return None. A failure inside a distributed stage ends the
audit on every rank (one line naming the failed rank); re-running resumes.

>>> from inspectnet.models.zoo import load_model
>>> zm = load_model("runs/mnist_r18")                                           # doctest: +SKIP
>>> doc = run_audit(zm, AuditConfig(data="mnist5k:train", eval_data="mnist5k:test", limit=512), "audit")  # doctest: +SKIP
>>> doc["sections"]["rules"]["status"], doc["sections"]["rules"]["title"]       # doctest: +SKIP
('ok', "Rules extracted from the model's filters")
"""

# public name -> the module that defines it, imported on first use (PEP 562): the command line reads
# AuditConfig's options for --help without importing torch
_LAZY = {"AuditConfig": "config", "check_config": "config", "default_layers": "config", "probed_layers": "config",
         "run_audit": "driver", "summary": "driver", "AUDIT_FILE": "folder", "AUDIT_FORMAT": "folder",
         "CARD_FILES": "folder", "STAGES": "stages", "Stage": "stage", "card_sections": "card"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AUDIT_FILE", "AUDIT_FORMAT", "CARD_FILES", "STAGES", "AuditConfig", "Stage", "card_sections", "check_config",
           "default_layers", "probed_layers", "run_audit", "summary"]
