"""One command from a model to an interpretability model card: ``inspectnet audit MODEL DATA --out DIR``.

Stages, in order (each reads what the earlier ones wrote into ``DIR``)::

    probe → decomposition → rules → sparsity → linear_probes → attributions → explanations
          → dissection (with concept data) → export (when asked) → card

Each stage is one :class:`Stage` in :data:`STAGES`: its name and card title, the parameters of the
config that change its result, the stages it needs (their failure fails it) and uses (when they
succeeded), whether it writes a folder ``DIR/<name>``, and the function that runs it. The driver
reads nothing else.

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

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.core.devices import resolve_device
from inspectnet.core.distributed import share_from_main, world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, output_dir, read_json
from inspectnet.data import ImageDataset, check_data_spec, load_data
from inspectnet.data.labels import align_classes
from inspectnet.data.subsets import spread_subset
from inspectnet.models.layers import PRE_LOGITS, resolve_layers
from inspectnet.models.zoo import ModelAbout, ModelRef, ZooModel
from inspectnet.probe.record import ProbeRecord

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = "inspectnet-audit"
CARD_FILES = ("card.json", "README.md", "card.html")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. ``eval_data`` defaults to ``data`` (then every number is in-sample).

    ``layers`` are probed (default: the model's stage outputs); ``layer`` is the one analysed by
    rules, receptive fields and dissection (default: the last probed layer; probed if not listed).
    The data's classes are mapped onto the model's by name or WordNet id, or by ``class_map``
    (``{"data class": model index or name}``; see :mod:`inspectnet.data.labels`).
    """

    data: str
    eval_data: str | None = None
    layers: list[str] | None = None
    layer: str | None = None
    limit: int | None = 512
    eval_limit: int | None = None
    k1: int = 5
    k2: int = 5
    retrain_epochs: int = 0
    concepts: str | None = None
    concept_limit: int | None = 200
    export: bool = False
    # the export ships the dense model instead of the decomposed one when the latter's accuracy falls
    # more than this below the dense model's (e.g. K of C classes with data: dense rows outscore sparse ones)
    export_max_drop: float = 0.05
    attribution_images: int = 6
    ig_steps: int = 32
    top_units: int = 6
    explain_images: int = 0  # opt-in: faithfulness costs ~28 forward passes per image, method and model form
    deletion_steps: int = 10
    baseline: str = "blur"
    sanity_images: int = 8
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    class_map: dict[str, int | str] | None = None
    command: str = ""


@dataclasses.dataclass
class _Context:
    """What the stages share while one audit runs."""

    ref: ModelRef
    about: ModelAbout
    out: Path
    config: AuditConfig
    results: dict[str, Any]
    num_workers: int = 0
    shard_order: str = "contiguous"
    index_order: bool = False
    _datasets: dict[str, ImageDataset] = dataclasses.field(default_factory=dict)

    @property
    def zm(self) -> ZooModel:
        """The model, loaded on first use, with the class names the audit settled on."""
        zm = self.ref.load()
        zm.class_names = list(self.about.class_names)
        return zm

    def raw_dataset(self, spec: str) -> ImageDataset:
        """``spec`` loaded with the model's transform, its labels the data's own."""
        if spec not in self._datasets:
            self._datasets[spec] = load_data(spec, self.zm.transform())
        return self._datasets[spec]

    def dataset(self, spec: str, limit: int | None = None) -> ImageDataset:
        """``spec`` with its classes mapped onto the model's; with ``limit``, an evenly spread subset of that size."""
        return spread_subset(self.aligned(spec), limit)

    def aligned(self, spec: str) -> ImageDataset:
        """``spec`` whole, its classes mapped onto the model's."""
        return self.raw_dataset(spec).aligned_to(self.zm.class_names, class_map=self.config.class_map,
                                                 strict=spec == self.config.data)

    def eval_dataset(self) -> ImageDataset:
        """The evaluation data as probed: ``eval_data`` (or ``data``, in-sample) at its limit."""
        cfg = self.config
        return self.dataset(cfg.eval_data or cfg.data, cfg.eval_limit if cfg.eval_data else cfg.limit)

    def records(self) -> tuple[ProbeRecord, ProbeRecord]:
        """(train record, eval record); in-sample audits evaluate on the train record itself."""
        train = ProbeRecord.load(self.out / "probe" / "train")
        return train, (ProbeRecord.load(self.out / "probe" / "eval") if self.config.eval_data else train)

    @property
    def layer(self) -> str:
        """The analysed layer, as the probe stage resolved it."""
        return self.results["probe"]["result"]["analysed_layer"]

    def classes_present(self, split: str) -> list[int]:
        """The model classes with labelled samples in the ``train`` or ``eval`` record."""
        return self.results["probe"]["result"][split]["classes_present"]

    def rel(self, path: str | Path) -> str:
        """A path relative to the audit folder (card.json stays valid when the folder moves)."""
        return str(Path(path).resolve().relative_to(self.out.resolve()))


def default_layers(zm: ZooModel) -> list[str]:
    """The model's stage outputs (timm ``feature_info``), else its last convolution."""
    info = getattr(zm.model, "feature_info", None)
    names: list[str] = []
    try:
        names = [f["module"] for f in info] if info is not None else []
    except (TypeError, KeyError):
        names = []
    known = {n for n, _ in zm.model.named_modules()}
    names = [n for n in names if n in known and n]
    return names or ["last_conv"]


# ---------------------------------------------------------------- stages
# The analyses are imported inside each stage: a fully cached audit must not pay for importing
# scikit-learn, captum or onnx.
def _stage_probe(ctx: _Context) -> dict[str, Any]:
    from inspectnet.probe.record import run_probe

    cfg, zm = ctx.config, ctx.zm
    layers, analysed = probed_layers(zm, cfg)
    eval_spec = cfg.eval_data or cfg.data
    kw = dict(batch_size=cfg.batch_size, device=cfg.device, show_progress=None, num_workers=ctx.num_workers,
              shard_order=ctx.shard_order)
    train = run_probe(zm, ctx.dataset(cfg.data, cfg.limit), layers, ctx.out / "probe" / "train", **kw)
    ev = run_probe(zm, ctx.eval_dataset(), layers, ctx.out / "probe" / "eval", **kw) if cfg.eval_data else train
    labels = np.asarray(ev.labels)
    eval_limit = cfg.eval_limit if cfg.eval_data else cfg.limit
    return {"layers": layers, "analysed_layer": analysed,
            "train": {"data": cfg.data, "samples": len(train), "available": len(ctx.aligned(cfg.data)),
                      "limit": cfg.limit, **_classes_of(train)},
            "eval": {"data": eval_spec, "samples": len(ev), "available": len(ctx.aligned(eval_spec)),
                     "limit": eval_limit, "in_sample": cfg.eval_data is None, **_classes_of(ev)},
            "num_classes": zm.num_classes, "index_order": ctx.index_order,
            "accuracy": ev.accuracy() if (labels >= 0).any() else None,
            "feature_dim": int(ev.manifest["features_dim"])}


def _classes_of(record: ProbeRecord) -> dict[str, Any]:
    """The model classes a record has labelled samples of, and how the data's classes were mapped."""
    labels = np.asarray(record.labels)
    return {"classes_present": [int(c) for c in np.unique(labels[labels >= 0])],
            "label_mapping": record.manifest.get("label_mapping")}


def probed_layers(zm: ZooModel, config: AuditConfig) -> tuple[list[str], str]:
    """The layers the audit probes and the one it analyses (``config.layer``, else the last probed).

    >>> from inspectnet.models.zoo import load_model
    >>> probed_layers(load_model("resnet18"), AuditConfig(data="digits", layers=["layer3"], layer="layer4"))
    (['layer3', 'layer4'], 'layer4')
    """
    layers = [n for n in resolve_layers(zm.model, config.layers or default_layers(zm), head_name=zm.head_name)
              if n != PRE_LOGITS]
    if config.layer is None:
        if not layers:
            raise InspectnetError("no layer to probe besides pre_logits; name one with --layers")
        return layers, layers[-1]
    named = resolve_layers(zm.model, config.layer, head_name=zm.head_name)
    if len(named) != 1 or named[0] == PRE_LOGITS:
        raise InspectnetError(f"--layer {config.layer!r} names {len(named)} layer(s) ({', '.join(named)}); "
                              f"name one layer with spatial maps (see `inspectnet layers MODEL`)")
    return (layers if named[0] in layers else [*layers, named[0]]), named[0]


def _stage_decomposition(ctx: _Context) -> dict[str, Any]:
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


TOP_RULES = 10


def _stage_rules(ctx: _Context) -> dict[str, Any]:
    """A readable tree (the smallest depth within a margin of the best held-out fidelity), its top
    rules by support and the size–fidelity curve; the full pruned tree is written as a download."""
    from inspectnet.analysis.rules.tree import READABLE_MARGIN, extract_rules, plot_curve, write_rules

    train, ev = ctx.records()
    seed, folder = ctx.config.seed, ctx.out / "rules"
    rs, model = extract_rules(train, ctx.layer, ev, readable_margin=READABLE_MARGIN, seed=seed)
    paths = write_rules(rs, model, folder)
    full, full_model = extract_rules(train, ctx.layer, ev, seed=seed)
    full_paths = write_rules(full, full_model, folder / "full_tree", plot_depth=None)
    curve = plot_curve(rs.selection, folder / "fidelity_curve.png")
    keep = ("layer", "evaluated_on", "extracted_accuracy", "fidelity", "train_fidelity", "model_accuracy", "atoms",
            "atom_filters", "rules", "avg_depth", "max_depth", "num_filters", "n_train", "n_eval")
    d = rs.to_dict()
    if ev is not train:  # named relative to the folder, like every path in the card (valid when it moves)
        d["evaluated_on"] = f"eval record {ctx.rel(ev.root)}"
    top = [{k: r[k] for k in ("text", "class", "support", "confidence", "eval_support", "eval_confidence")}
           for r in rs.rule_list[:TOP_RULES]]
    return {**{k: d[k] for k in keep}, "top_rules": top, "rules_path": ctx.rel(paths["text"]),
            "classes": sorted({r["class"] for r in rs.rule_list}),
            "selection": {k: v for k, v in rs.selection.items() if k != "method"},
            "full_tree": {"rules": full.rules, "atoms": full.atoms, "max_depth": full.max_depth,
                          "avg_depth": full.avg_depth, "fidelity": full.fidelity,
                          "extracted_accuracy": full.extracted_accuracy, "path": ctx.rel(full_paths["text"])},
            "figures": [{"path": ctx.rel(curve), "caption": f"size–fidelity trade-off of the rules on {ctx.layer}"},
                        {"path": ctx.rel(paths["png"]), "caption": f"the readable tree on {ctx.layer} (top levels)"}]}


def _stage_sparsity(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.sparsity import record_sparsity

    _, ev = ctx.records()
    return {"rows": [m.to_dict() for m in record_sparsity(ev)]}


def _stage_linear_probes(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.linprobe import linear_probes, plot

    train, ev = ctx.records()
    res = linear_probes(train, ev)
    path = plot(res, ctx.out / "linear_probes" / "linear_probes.png")
    return {"rows": res.rows, "model_accuracy": res.model_accuracy, "n_train": res.n_train, "n_eval": res.n_eval,
            "figures": [{"path": ctx.rel(path), "caption": "linear-probe accuracy across depth"}]}


def _stage_attributions(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis import attributions as at

    cfg, zm = ctx.config, ctx.zm
    _, ev = ctx.records()
    ds = ctx.eval_dataset()
    labels = np.asarray(ev.labels)
    out = ctx.out / "attributions"
    result: dict[str, Any] = {"errors": {}}
    chosen = at.choose_images(labels, cfg.attribution_images)
    # each picture family is independent: one failing (e.g. no forward_features) keeps the others
    try:
        rows = at.input_attributions(zm, ds, chosen, out / "inputs", n_steps=cfg.ig_steps,
                                     internal_batch_size=cfg.batch_size)
        result["inputs"] = [{**r, "path": ctx.rel(r["path"])} for r in rows]
    except Exception as exc:  # noqa: BLE001 - reported in the card
        result["errors"]["inputs"] = _why(exc)
    dec = ctx.results.get("decomposition", {})
    if dec.get("status") == "ok":
        try:
            supports: list[list[int]] = [[] for _ in range(zm.num_classes)]  # per_class lists the classes with data
            for row in dec["result"]["per_class"]:
                supports[row["class"]] = row["features"]
            rows = at.influential_feature_maps(zm, ds, labels, supports, out / "classes")
            result["classes"] = [{**r, "path": ctx.rel(r["path"])} for r in rows]
        except Exception as exc:  # noqa: BLE001
            result["errors"]["classes"] = _why(exc)
    try:
        acts = np.asarray(ev.activations(ctx.layer))
        rules = ctx.results.get("rules", {})
        atoms = rules.get("result", {}).get("atom_filters", []) if rules.get("status") == "ok" else []
        units = list(atoms[:cfg.top_units]) or [int(k) for k in np.argsort(-acts.var(0))[:cfg.top_units]]
        rows = at.receptive_fields(zm, ds, acts, ctx.layer, units, out / "units", batch_size=cfg.batch_size)
        result["units"] = {"layer": ctx.layer, "chosen_by": "rule atoms" if atoms else "activation variance",
                           "rows": [{**r, "path": ctx.rel(r["path"])} for r in rows]}
    except Exception as exc:  # noqa: BLE001
        result["errors"]["units"] = _why(exc)
    if len(result["errors"]) == 3:
        raise InspectnetError("every attribution picture failed: " + "; ".join(result["errors"].values()))
    return result


def _stage_explanations(ctx: _Context) -> dict[str, Any]:
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


def _model_forms(ctx: _Context) -> list[Any]:
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
        forms.append(ModelForm("slimmed", missing=_why(exc)))
    forms.append(_int8_form(ctx, last, "slimmed" if last is not dzm else "decomposed"))
    return forms


def _int8_form(ctx: _Context, zm: ZooModel, of: str) -> Any:
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
        return ModelForm(name, missing=_why(exc))
    return ModelForm(name, onnx=Path(res.int8["path"]))


def _stage_dissection(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.dissect.dissection import dissect, write_dissection
    from inspectnet.data.concepts import load_concepts

    cfg = ctx.config
    data = load_concepts(cfg.concepts)
    res = dissect(ctx.zm, data, [ctx.layer], limit=cfg.concept_limit, batch_size=cfg.batch_size,
                  device=cfg.device, show_progress=None, num_workers=ctx.num_workers, shard_order=ctx.shard_order)
    if world()[1] == 0:  # every rank holds the same result
        write_dissection(res, ctx.out / "dissection")
    layers = {k: {kk: v[kk] for kk in ("num_units", "detectors", "unique_detectors", "unique_by_category",
                                       "detector_concepts")} for k, v in res.layers.items()}
    return {"data": res.data, "num_images": res.num_images, "iou_threshold": res.iou_threshold,
            "quantile": res.quantile, "layers": layers}


def _stage_export(ctx: _Context) -> dict[str, Any]:
    """ONNX of what users ship: the decomposition's model (the better of retrained and not), slimmed
    where slimming is exact, else as it is (named, with the reason); the dense model instead when the
    decomposed one loses more than ``export_max_drop`` of accuracy (said, with the numbers). Its
    accuracy, fingerprint and size are listed next to the dense model's."""
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


def _decomposed_candidate(ctx: _Context) -> tuple[ZooModel, str, dict[str, Any]]:
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


def _dense_instead(ctx: _Context, form: str, accuracy: float, n: int, dense: float | None) -> str | None:
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
    run: Callable[[_Context], dict[str, Any]]
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
    Stage("probe", "Probed samples and layers", _stage_probe, lambda c: {**_probe_params(c), "format": 2},
          resumable=True, distributed=True),
    Stage("decomposition", "Influential features and decomposed head", _stage_decomposition,
          lambda c: {"k1": c.k1, "k2": c.k2, "retrain": c.retrain_epochs, "seed": c.seed}, needs=("probe",)),
    Stage("rules", "Rules extracted from the model's filters", _stage_rules,
          lambda c: {"seed": c.seed, "format": 3},
          needs=("probe",)),
    Stage("sparsity", "Activation sparsity", _stage_sparsity, lambda c: {}, needs=("probe",), writes_folder=False),
    Stage("linear_probes", "Linear probes across depth", _stage_linear_probes, lambda c: {}, needs=("probe",)),
    Stage("attributions", "Attributions and receptive fields", _stage_attributions,
          lambda c: {"n": c.attribution_images, "steps": c.ig_steps, "units": c.top_units}, needs=("probe",),
          uses=("decomposition", "rules")),
    Stage("explanations", "Explanation faithfulness and sanity checks", _stage_explanations,
          lambda c: {"n": c.explain_images, "steps": c.deletion_steps, "baseline": c.baseline, "ig": c.ig_steps,
                     "sanity": c.sanity_images, "int8": c.export, "seed": c.seed},
          needs=("probe",), uses=("decomposition",), enabled=lambda c: c.explain_images > 0),
    Stage("dissection", "Concept detectors (network dissection)", _stage_dissection,
          lambda c: {"concepts": c.concepts, "limit": c.concept_limit}, needs=("probe",),
          enabled=lambda c: bool(c.concepts), distributed=True),
    Stage("export", "Export (ONNX) parity and speed", _stage_export,
          lambda c: {"export": c.export, "max_drop": c.export_max_drop, "format": 4},
          needs=("decomposition",), enabled=lambda c: c.export),
)


# ---------------------------------------------------------------- driver
def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_config(config: AuditConfig, zm: ZooModel | None = None) -> None:
    """Refuse, before anything runs, the arguments that would make a stage impossible; with ``zm``
    also those that need the model (layer names, ``k1`` against its feature width).

    >>> from inspectnet.models.zoo import load_model
    >>> check_config(AuditConfig(data="digits", limit=0))
    Traceback (most recent call last):
    ...
    inspectnet.core.errors.InspectnetError: --limit must be at least 1, got 0
    """
    from inspectnet.analysis.heads.influence import check_k
    from inspectnet.data.concepts import check_concepts_spec

    at_least = (("--limit", config.limit, 1), ("--eval-limit", config.eval_limit, 1),
                ("--retrain-epochs", config.retrain_epochs, 0), ("--concept-limit", config.concept_limit, 1),
                ("--images", config.attribution_images, 1), ("--ig-steps", config.ig_steps, 1),
                ("--top-units", config.top_units, 1), ("--batch-size", config.batch_size, 1))
    for option, value, low in at_least:
        if value is not None and value < low:
            raise InspectnetError(f"{option} must be at least {low}, got {value}")
    if not 0.0 <= config.export_max_drop <= 1.0:
        raise InspectnetError(f"--export-max-drop must be an accuracy difference in [0, 1], got {config.export_max_drop}")
    check_k(config.k1, config.k2, config.k1 if zm is None else getattr(zm.head, "in_features", config.k1))
    for spec in (config.data, config.eval_data):
        if spec is not None:
            check_data_spec(spec)
    if config.concepts:
        check_concepts_spec(config.concepts)
    resolve_device(config.device)
    if zm is not None:
        probed_layers(zm, config)


def _open_folder(out: Path, about: ModelAbout) -> dict[str, Any]:
    """The folder's audit state; refuses another model's audit and folders that hold anything else.

    A new audit writes ``audit.json`` into an empty folder before anything else, so a folder without
    it was not made by an audit (not even an interrupted one) and is never adopted.
    """
    if out.exists() and not out.is_dir():
        raise InspectnetError(f"--out {out} is a file; expected a folder for the audit")
    path = out / AUDIT_FILE
    if path.exists():
        state = read_json(path, what="audit state")
        if state.get("format") != AUDIT_FORMAT:
            raise InspectnetError(f"{path} is not an inspectnet audit state file")
        if state.get("model_fingerprint") != about.fingerprint():
            raise InspectnetError(
                f"--out {out} holds the audit of another model ({state.get('model')}, weights "
                f"{str(state.get('model_fingerprint'))[:16]}), not of {about.spec} (weights {about.fingerprint()}); "
                f"choose another folder or delete it")
        return state
    if out.exists() and any(out.iterdir()):
        raise InspectnetError(f"--out {out} is not empty and holds no audit ({AUDIT_FILE}); choose an empty or "
                              f"new folder")
    state = {"format": AUDIT_FORMAT, "model": about.spec, "model_fingerprint": about.fingerprint(), "stages": {}}
    output_dir(out)
    atomic_write_json(path, state)
    return state


def _files_under(out: Path, folder: str) -> list[str]:
    """Every file (and link) below ``out/folder``, as paths relative to ``out``."""
    root = out / folder
    return sorted(str(p.relative_to(out)) for p in root.rglob("*") if not p.is_dir()) if root.is_dir() else []


def _remove_stage_files(out: Path, stage: Stage, previous: dict[str, Any]) -> None:
    """Remove what the stage's previous run wrote, and nothing else (see the module docstring)."""
    if "files" in previous:
        ours = previous["files"]
    else:  # a run that was killed: whatever appeared in its folder after it started
        foreign = set(previous.get("foreign", _files_under(out, stage.name)))
        ours = [f for f in _files_under(out, stage.name) if f not in foreign]
    for rel in ours:
        path = out / rel
        path.unlink(missing_ok=True)
        for parent in path.parents:  # folders it leaves empty, up to and including the stage's own
            if parent == out or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()


def _map_classes(ctx: _Context, state: dict[str, Any], log: Callable[[str], None]) -> tuple[list[str], bool]:
    """Map the data's and the eval data's classes onto the model's before any stage runs; refuse what
    cannot be mapped. Returns the model's class names for this audit and whether the data map in
    index order: a model with placeholder class names takes the data's names then (the card says so).

    The data's class names are remembered in the audit state, so a fully cached audit never loads
    the data.
    """
    cfg = ctx.config
    known = state.setdefault("data_class_names", {})
    names, index_order = list(ctx.about.class_names), False
    for spec in dict.fromkeys([cfg.data, cfg.eval_data or cfg.data]):
        if spec not in known:
            try:
                known[spec] = list(ctx.raw_dataset(spec).class_names)
            except Exception as exc:  # noqa: BLE001 - the probe stage reports a bad data spec properly
                log(f"note: could not read class names from {spec}: {_why(exc)}")
                continue
        if not known[spec]:
            continue  # unlabelled data
        mapping = align_classes(known[spec], names, class_map=cfg.class_map, strict=spec == cfg.data,
                                what=f"data {spec!r}")
        if mapping.index_order:
            names, index_order = list(mapping.data_classes), True
    return names, index_order


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _from_main(fn: Callable[[], Any], *, share: bool = True) -> Any:
    """``fn()`` on rank 0 only (in one process: simply ``fn()``), its result (``share``) or error on every rank."""
    result, error = None, None
    if world()[1] == 0:
        try:
            result = fn()
        except InspectnetError as exc:
            error = str(exc)
    shared, error = share_from_main((result if share else None, error))
    result = shared if share else result
    if error is not None:
        raise InspectnetError(error)
    return result


def run_audit(model: ZooModel | ModelRef, config: AuditConfig, out: str | Path, *,
              log: Callable[[str], None] | None = _log, num_workers: int = 0,
              shard_order: str = "contiguous", made_by: list[str] | None = None) -> dict[str, Any] | None:
    """Run (or reuse) every stage, write ``card.json``, ``README.md`` and ``card.html``; return the card.

    ``model`` is a loaded model or a :class:`~inspectnet.models.zoo.ModelRef` (loaded only if a stage
    must run). ``log`` receives one line per stage (start, cached/ok/failed with seconds) and the
    summary; ``made_by`` are the commands that made the model
    (``inspectnet.models.provenance.made_by(folder)``), shown under "How to reproduce".
    ``num_workers`` data loader processes decode images for the data passes; under ``torchrun``
    ranks share them out in ``shard_order`` and ranks other than 0 return None.
    """
    from inspectnet.reports import card as card_mod

    main = world()[1] == 0
    log = log if (log and main) else (lambda _m: None)
    out = Path(out)
    ref = model if isinstance(model, ModelRef) else ModelRef.of(model)
    # the arguments that need the model are checked now unless the folder holds an audit already (a
    # fully cached audit never loads the model); the stages that use them check them as they run
    check_config(config, None if (out / AUDIT_FILE).is_file() else ref.load())
    about = ref.about()
    ctx = _Context(ref=ref, about=about, out=out, config=config, results={}, num_workers=num_workers,
                   shard_order=shard_order)
    t_all = time.perf_counter()
    state = _from_main(lambda: _open_folder(out, about), share=False)  # the other ranks keep no state
    # every rank probes with the class names rank 0 settled on (the label mapping is in the record's identity)
    about.class_names, ctx.index_order = _from_main(lambda: _map_classes(ctx, state, log))
    wanted = [s for s in STAGES if s.enabled(config)]
    if world()[0] > 1:  # the shared passes first: the other ranks are free once they are done
        wanted.sort(key=lambda s: not s.distributed)
    keys: dict[str, str] = {}
    for n, stage in enumerate(wanted, 1):
        if not (main or stage.distributed):
            continue
        prefix = f"[{n}/{len(wanted)}] {stage.name}"
        prepare = lambda: _prepare(stage, ctx, state, keys, log, prefix)  # noqa: B023, E731 - called at once
        if _from_main(prepare) if stage.distributed else prepare():  # rank 0 alone needs no collective
            entry = _run_stage(stage, ctx)
            if main:
                _record(stage, ctx, state, entry, keys, log, prefix)
        if stage.distributed and world()[0] > 1:  # later shared stages read it (e.g. the analysed layer)
            ctx.results[stage.name] = share_from_main(ctx.results.get(stage.name))
    if not main:
        return None
    atomic_write_json(out / AUDIT_FILE, state)
    results = {s.name: ctx.results[s.name] for s in STAGES if s.name in ctx.results}  # the card's order
    doc = card_mod.build_card(about, config, results, fingerprint=about.fingerprint(),
                              total_seconds=time.perf_counter() - t_all, made_by=made_by or [])
    card_mod.write_card(doc, out)
    doc["timing"]["total_seconds"] = round(time.perf_counter() - t_all, 3)
    card_mod.write_card(doc, out)
    log(summary(doc))
    return doc


def _prepare(stage: Stage, ctx: _Context, state: dict[str, Any], keys: dict[str, str],
             log: Callable[[str], None], prefix: str) -> bool:
    """Rank 0: whether ``stage`` must run now; a cached or unrunnable stage gets its entry here.

    A stage about to run first loses the files of its previous run (an interrupted resumable stage
    with the same key keeps them, e.g. the probe pass) and is marked ``running`` under its key, with
    the files already in its folder, so that what it writes is known even if it is killed.
    """
    reads = (*stage.needs, *stage.uses)
    keys[stage.name] = _key([ctx.about.fingerprint(), ctx.about.class_names, stage.name, stage.params(ctx.config),
                             [keys.get(d) for d in reads],
                             [ctx.results.get(d, {}).get("status") for d in stage.uses]])
    prev = state["stages"].get(stage.name, {})
    files_there = not stage.writes_folder or ((ctx.out / stage.name).is_dir()
                                              and all((ctx.out / f).exists() for f in prev.get("files", [])))
    if prev.get("key") == keys[stage.name] and prev.get("status") == "ok" and files_there:
        ctx.results[stage.name] = {**prev, "title": stage.title, "cached": True}
        log(f"{prefix}: cached")
        return False
    failed = [d for d in stage.needs if d in keys and ctx.results[d]["status"] != "ok"]
    if failed:
        entry = {"status": "failed", "error": f"needs stage {', '.join(failed)}, which failed", "seconds": 0.0}
        if stage.writes_folder:  # the files of its previous run belong to other inputs
            _remove_stage_files(ctx.out, stage, prev)
            entry["files"] = []
        _record(stage, ctx, state, entry, keys, log, prefix)
        return False
    foreign: list[str] = []
    if stage.writes_folder:
        if stage.resumable and prev.get("status") == "running" and prev.get("key") == keys[stage.name]:
            foreign = list(prev.get("foreign", []))
        else:
            _remove_stage_files(ctx.out, stage, prev)
            foreign = _files_under(ctx.out, stage.name)
    state["stages"][stage.name] = {"status": "running", "key": keys[stage.name], "foreign": foreign}
    atomic_write_json(ctx.out / AUDIT_FILE, state)
    log(f"{prefix}: running")
    return True


def _record(stage: Stage, ctx: _Context, state: dict[str, Any], entry: dict[str, Any], keys: dict[str, str],
            log: Callable[[str], None], prefix: str) -> None:
    """Rank 0: store a stage's entry (with the files it wrote) in the audit state and the card's results."""
    entry.update(key=keys[stage.name])
    if stage.writes_folder and "files" not in entry:
        foreign = set(state["stages"].get(stage.name, {}).get("foreign", []))
        entry["files"] = [f for f in _files_under(ctx.out, stage.name) if f not in foreign]
    state["stages"][stage.name] = entry
    atomic_write_json(ctx.out / AUDIT_FILE, state)
    ctx.results[stage.name] = {**entry, "title": stage.title, "cached": False}
    log(f"{prefix}: {entry['status']} ({entry['seconds']:.1f} s)"
        + (f" — {entry['error']}" if entry["status"] == "failed" else ""))


def _run_stage(stage: Stage, ctx: _Context) -> dict[str, Any]:
    """Run one stage; any failure becomes the entry's error (the card still gets written).

    Under torchrun a failure of a stage every rank runs ends the audit instead: the ranks could no
    longer agree on what runs next.
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    try:
        entry = {"status": "ok", "result": stage.run(ctx)}
    except Exception as exc:  # noqa: BLE001 - any failure becomes the section's reason
        if stage.distributed and world()[0] > 1:
            raise
        entry = {"status": "failed", "error": _why(exc), "traceback": traceback.format_exc(limit=4)}
    # CPU time beside wall time: on a shared machine the wall time of a stage says little of its cost
    entry["seconds"], entry["cpu_seconds"] = round(time.perf_counter() - t0, 3), round(time.process_time() - cpu0, 3)
    return entry


def summary(doc: dict[str, Any]) -> str:
    """One line per stage (status, cached, seconds) and the total."""
    lines = ["stage            status   cached  seconds"]
    for name, sec in doc["sections"].items():
        lines.append(f"{name:<16} {sec['status']:<8} {'yes' if sec.get('cached') else 'no':<7} "
                     f"{sec.get('seconds', 0.0):7.2f}")
    t = doc["timing"]
    lines.append(f"total {t['total_seconds']:.2f} s (stages run now {t['stages_run_seconds']:.2f} s, "
                 f"cached stages originally {t['stages_cached_seconds']:.2f} s)")
    return "\n".join(lines)
