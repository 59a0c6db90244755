"""One command from a model to an interpretability model card: ``inspectnet audit MODEL DATA --out DIR``.

Stages, in order (each reads what the earlier ones wrote into ``DIR``)::

    probe → decomposition → rules → sparsity → linear_probes → attributions
          → dissection (with concept data) → export (when asked) → card

Caching: ``DIR/audit.json`` stores, per stage, a key = sha256 of (model fingerprint, the stage's
parameters, the keys of the stages it reads). A stage whose key is unchanged and whose last run
succeeded is skipped (its stored result is reused), so a second audit is nearly free and a changed
parameter re-runs only the stages that depend on it. Failed stages are never cached.

Safety: a ``DIR`` holding another model's audit (different weights fingerprint) is refused, and so
is a non-empty folder that holds no audit. A stage that fails is recorded with its error; stages
that need it are marked failed with the reason; the card is written regardless.

>>> from inspectnet.models.zoo import load_model
>>> zm = load_model("runs/mnist_r18")                                           # doctest: +SKIP
>>> doc = run_audit(zm, AuditConfig(data="mnist5k:train", eval_data="mnist5k:test", limit=512), "audit")  # doctest: +SKIP
>>> doc["sections"]["rules"]["status"]                                          # doctest: +SKIP
'ok'
"""

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, read_json
from inspectnet.data import ImageDataset
from inspectnet.models.zoo import ZooModel

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = "inspectnet-audit"
STAGES = ("probe", "decomposition", "rules", "sparsity", "linear_probes", "attributions", "dissection", "export")
# which earlier stages each stage needs (a failed one fails the stage; its key feeds the cache key)
DEPENDS = {"probe": (), "decomposition": ("probe",), "rules": ("probe",), "sparsity": ("probe",),
           "linear_probes": ("probe",), "attributions": ("probe",), "dissection": ("probe",),
           "export": ("decomposition",)}
# stages whose results are used when they succeeded (their keys feed the cache key, failure is tolerated)
USES = {"attributions": ("decomposition", "rules")}
# files a stage may leave in DIR besides audit.json/card files (checked before a folder is adopted)
_OWN = {AUDIT_FILE, "card.json", "README.md", "card.html", *STAGES}


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What to audit and how. ``eval_data`` defaults to ``data`` (then every number is in-sample)."""

    data: str
    eval_data: str | None = None
    layers: list[str] | None = None
    limit: int | None = 512
    eval_limit: int | None = None
    k1: int = 5
    k2: int = 5
    retrain_epochs: int = 0
    concepts: str | None = None
    concept_limit: int | None = 200
    export: bool = False
    attribution_images: int = 6
    ig_steps: int = 32
    top_units: int = 6
    batch_size: int = 32
    device: str = "cpu"
    seed: int = 0
    command: str = ""

    def stage_params(self, stage: str) -> dict[str, Any]:
        """The parameters that change ``stage``'s result (and nothing else: they key its cache)."""
        probe = {"data": self.data, "eval": self.eval_data, "layers": self.layers, "limit": self.limit,
                 "eval_limit": self.eval_limit}
        return {"probe": probe,
                "decomposition": {"k1": self.k1, "k2": self.k2, "retrain": self.retrain_epochs, "seed": self.seed},
                "rules": {"seed": self.seed}, "sparsity": {}, "linear_probes": {},
                "attributions": {"n": self.attribution_images, "steps": self.ig_steps, "units": self.top_units},
                "dissection": {"concepts": self.concepts, "limit": self.concept_limit},
                "export": {"export": self.export, "format": 2}}[stage]


@dataclasses.dataclass
class _Context:
    """What the stages share while one audit runs."""

    zm: ZooModel
    out: Path
    config: AuditConfig
    results: dict[str, Any]
    _datasets: dict[str, Any] = dataclasses.field(default_factory=dict)

    def dataset(self, spec: str, limit: int | None = None) -> Any:
        """``spec`` loaded with the model's transform; with ``limit``, an evenly spread subset of that size."""
        from inspectnet.data import load_data

        if spec not in self._datasets:
            self._datasets[spec] = load_data(spec, self.zm.transform())
        ds = self._datasets[spec]
        return ds if limit is None or limit >= len(ds) else SpreadSubset(ds, limit)

    def records(self) -> tuple[Any, Any]:
        from inspectnet.probe.record import ProbeRecord

        return ProbeRecord.load(self.out / "probe" / "train"), ProbeRecord.load(self.out / "probe" / "eval")

    def rel(self, path: str | Path) -> str:
        """A path relative to the audit folder (card.json stays valid when the folder moves)."""
        return str(Path(path).resolve().relative_to(self.out.resolve()))


class SpreadSubset(ImageDataset):
    """``n`` samples of ``base`` at evenly spaced indices: class-sorted data (mnist5k, folders) keep every class.

    >>> from inspectnet.data import load_data
    >>> sorted(set(SpreadSubset(load_data("digits"), 20).labels.tolist())) == list(range(10))
    True
    """

    def __init__(self, base: ImageDataset, n: int):
        if n < 1:
            raise InspectnetError(f"--limit must be at least 1, got {n}")
        super().__init__(base.transform)
        self.base = base
        self.index = np.unique(np.linspace(0, len(base) - 1, n).round().astype(np.int64))
        self.labels = np.asarray(base.labels)[self.index]
        self.class_names = list(base.class_names)
        self.spec = f"{base.spec}?spread={len(self.index)}"
        self.skipped = list(getattr(base, "skipped", []))

    def image(self, index: int) -> Any:
        return self.base.image(int(self.index[index]))

    def name(self, index: int) -> str:
        return self.base.name(int(self.index[index]))


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
def _stage_probe(ctx: _Context) -> dict[str, Any]:
    from inspectnet.models.layers import resolve_layers
    from inspectnet.probe.record import run_probe

    cfg, zm = ctx.config, ctx.zm
    layers = resolve_layers(zm.model, cfg.layers or default_layers(zm), head_name=zm.head_name)
    layers = [n for n in layers if n != "pre_logits"]
    eval_spec = cfg.eval_data or cfg.data
    kw = dict(batch_size=cfg.batch_size, device=cfg.device, show_progress=None)
    eval_limit = cfg.eval_limit if cfg.eval_data else cfg.limit
    train = run_probe(zm, ctx.dataset(cfg.data, cfg.limit), layers, ctx.out / "probe" / "train", **kw)
    ev = run_probe(zm, ctx.dataset(eval_spec, eval_limit), layers, ctx.out / "probe" / "eval", **kw)
    labels = np.asarray(ev.labels)
    return {"layers": layers, "train": {"data": cfg.data, "samples": len(train)},
            "eval": {"data": eval_spec, "samples": len(ev), "in_sample": cfg.eval_data is None},
            "accuracy": ev.accuracy() if (labels >= 0).any() else None,
            "feature_dim": int(ev.manifest["features_dim"])}


def _stage_decomposition(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.heads.decompose import class_contributions, head_of, run_decomposition

    cfg = ctx.config
    train, ev = ctx.records()
    doc = run_decomposition(train, ev, ctx.out / "decomposition", zm=ctx.zm, k1=cfg.k1, k2=cfg.k2,
                            retrain_epochs=cfg.retrain_epochs, seed=cfg.seed)
    # exact mean contribution W[c, j] * f_j of each influential feature over class c's eval samples
    import torch

    feats = torch.from_numpy(np.array(ev.features, dtype=np.float32))
    contrib = class_contributions(head_of(ctx.zm), feats).numpy()  # (N, C, d)
    labels = np.asarray(ev.labels)
    per_class = []
    for c, support in enumerate(doc["supports"]):
        sel = labels == c
        mean = contrib[sel, c].mean(0) if sel.any() else None
        per_class.append({"class": c, "features": support, "frequencies": doc["frequencies"][c],
                          "mean_contribution": [float(mean[j]) for j in support] if mean is not None else None,
                          "accuracy_full": doc["per_class_accuracy_full"][c],
                          "accuracy_decomposed": doc["per_class_accuracy_decomposed"][c]})
    keep = ("k1", "k2", "accuracy_full", "accuracy_decomposed", "rA", "agreement", "union_size", "feature_dim",
            "head_macs_full", "head_macs_decomposed", "head_macs_gathered_dense", "noise_ablation",
            "accuracy_retrained", "retrain_epochs", "empty_classes")
    return {**{k: doc[k] for k in keep if k in doc}, "per_class": per_class,
            "model_dir": ctx.rel(doc["model_dir"])}


def _stage_rules(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.rules.tree import extract_rules, write_rules

    train, ev = ctx.records()
    layer = train.layers[-1]
    rs, model = extract_rules(train, layer, ev, seed=ctx.config.seed)
    paths = write_rules(rs, model, ctx.out / "rules")
    keep = ("layer", "evaluated_on", "extracted_accuracy", "fidelity", "train_fidelity", "model_accuracy", "atoms",
            "atom_filters", "rules", "avg_depth", "max_depth", "num_filters")
    d = rs.to_dict()
    return {**{k: d[k] for k in keep}, "rules_text": rs.rules_text[:40], "rules_total": len(rs.rules_text),
            "figures": [{"path": ctx.rel(paths["png"]), "caption": f"decision tree on {layer} (top levels)"}]}


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
    cfg_eval = cfg.eval_data or cfg.data
    ds = ctx.dataset(cfg_eval, cfg.eval_limit if cfg.eval_data else cfg.limit)
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
            supports = [p["features"] for p in dec["result"]["per_class"]]
            rows = at.influential_feature_maps(zm, ds, labels, supports, out / "classes")
            result["classes"] = [{**r, "path": ctx.rel(r["path"])} for r in rows]
        except Exception as exc:  # noqa: BLE001
            result["errors"]["classes"] = _why(exc)
    try:
        layer = ev.layers[-1]
        acts = np.asarray(ev.activations(layer))
        rules = ctx.results.get("rules", {})
        atoms = rules.get("result", {}).get("atom_filters", []) if rules.get("status") == "ok" else []
        units = list(atoms[:cfg.top_units]) or [int(k) for k in np.argsort(-acts.var(0))[:cfg.top_units]]
        rows = at.receptive_fields(zm, ds, acts, layer, units, out / "units", batch_size=cfg.batch_size)
        result["units"] = {"layer": layer, "chosen_by": "rule atoms" if atoms else "activation variance",
                           "rows": [{**r, "path": ctx.rel(r["path"])} for r in rows]}
    except Exception as exc:  # noqa: BLE001
        result["errors"]["units"] = _why(exc)
    if len(result["errors"]) == 3:
        raise InspectnetError("every attribution picture failed: " + "; ".join(result["errors"].values()))
    return result


def _stage_dissection(ctx: _Context) -> dict[str, Any]:
    from inspectnet.analysis.dissect.dissection import dissect, write_dissection
    from inspectnet.data.concepts import load_concepts

    cfg = ctx.config
    data = load_concepts(cfg.concepts)
    train, _ = ctx.records()
    res = dissect(ctx.zm, data, [train.layers[-1]], limit=cfg.concept_limit, batch_size=cfg.batch_size,
                  device=cfg.device, show_progress=None)
    write_dissection(res, ctx.out / "dissection")
    layers = {k: {kk: v[kk] for kk in ("num_units", "detectors", "unique_detectors", "unique_by_category",
                                       "detector_concepts")} for k, v in res.layers.items()}
    return {"data": res.data, "num_images": res.num_images, "iou_threshold": res.iou_threshold,
            "quantile": res.quantile, "layers": layers}


def _stage_export(ctx: _Context) -> dict[str, Any]:
    from inspectnet.export.onnx import export_onnx
    from inspectnet.models.zoo import load_model

    dec = ctx.results["decomposition"]["result"]
    dzm = load_model(str(ctx.out / dec["model_dir"]))
    res = export_onnx(dzm, ctx.out / "export" / "model.onnx", force=True, device=ctx.config.device)
    return {"path": ctx.rel(res.path), "exporter": res.exporter, "opset": res.opset, "parity": res.parity,
            "latency_ms": res.latency_ms, "size_bytes": res.size_bytes, "model": "model with its decomposed head"}


_RUNNERS: dict[str, Callable[[_Context], dict[str, Any]]] = {
    "probe": _stage_probe, "decomposition": _stage_decomposition, "rules": _stage_rules,
    "sparsity": _stage_sparsity, "linear_probes": _stage_linear_probes, "attributions": _stage_attributions,
    "dissection": _stage_dissection, "export": _stage_export}


# ---------------------------------------------------------------- driver
def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _key(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _open_folder(out: Path, zm: ZooModel, fingerprint: str) -> dict[str, Any]:
    """The folder's audit state; refuses another model's audit and folders holding something else."""
    if out.exists() and not out.is_dir():
        raise InspectnetError(f"--out {out} is a file; expected a folder for the audit")
    path = out / AUDIT_FILE
    if path.exists():
        state = read_json(path, what="audit state")
        if state.get("format") != AUDIT_FORMAT:
            raise InspectnetError(f"{path} is not an inspectnet audit state file")
        if state.get("model_fingerprint") != fingerprint:
            raise InspectnetError(
                f"--out {out} holds the audit of another model ({state.get('model')}, weights "
                f"{str(state.get('model_fingerprint'))[:16]}), not of {zm.spec} (weights {fingerprint}); "
                f"choose another folder or delete it")
        return state
    if out.exists() and any(p.name not in _OWN for p in out.iterdir()):
        raise InspectnetError(f"--out {out} is not empty and holds no audit; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return {"format": AUDIT_FORMAT, "model": zm.spec, "model_fingerprint": fingerprint, "stages": {}}


def _adopt_data_class_names(zm: ZooModel, ctx: _Context, state: dict[str, Any]) -> None:
    """A model with placeholder class names takes the data's names when they fit (shown in the card).

    The names are remembered in the audit state, so a fully cached audit never loads the data.
    """
    from inspectnet.models.zoo import default_class_names

    known = state.setdefault("data_class_names", {})
    if ctx.config.data not in known:
        known[ctx.config.data] = list(ctx.dataset(ctx.config.data).class_names)
    names = known[ctx.config.data]
    if zm.class_names == default_class_names(zm.num_classes) and len(names) == zm.num_classes:
        zm.class_names = list(names)


def _log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run_audit(zm: ZooModel, config: AuditConfig, out: str | Path, *,
              log: Callable[[str], None] | None = _log) -> dict[str, Any]:
    """Run (or reuse) every stage, write ``card.json``, ``README.md`` and ``card.html``; return the card.

    ``log`` receives one line per stage (start, cached/ok/failed with seconds) and the summary.
    """
    from inspectnet.reports import card as card_mod

    log = log or (lambda _m: None)
    out = Path(out)
    fingerprint = zm.fingerprint()
    state = _open_folder(out, zm, fingerprint)
    ctx = _Context(zm=zm, out=out, config=config, results={})
    t_all = time.perf_counter()
    try:
        _adopt_data_class_names(zm, ctx, state)
    except Exception as exc:  # noqa: BLE001 - the probe stage reports a bad data spec properly
        log(f"note: could not read class names from {config.data}: {_why(exc)}")
    wanted = [s for s in STAGES if (s != "dissection" or config.concepts) and (s != "export" or config.export)]
    keys: dict[str, str] = {}
    for n, stage in enumerate(wanted, 1):
        deps = DEPENDS[stage]
        keys[stage] = _key([fingerprint, zm.class_names, stage, config.stage_params(stage),
                            [keys.get(d) for d in (*deps, *USES.get(stage, ()))],
                            [ctx.results.get(d, {}).get("status") for d in USES.get(stage, ())]])
        prev = state["stages"].get(stage, {})
        prefix = f"[{n}/{len(wanted)}] {stage}"
        files_there = stage == "sparsity" or (out / stage).is_dir()  # a deleted stage folder is recomputed
        if prev.get("key") == keys[stage] and prev.get("status") == "ok" and files_there:
            ctx.results[stage] = {**prev, "cached": True}
            log(f"{prefix}: cached")
            continue
        bad = [d for d in deps if d in wanted and ctx.results.get(d, {}).get("status") != "ok"]
        if bad:
            entry = {"status": "failed", "error": f"needs stage {', '.join(bad)}, which failed", "seconds": 0.0}
        else:
            log(f"{prefix}: running")
            shutil.rmtree(out / stage, ignore_errors=True)  # stale files of another key never mix in
            t0 = time.perf_counter()
            try:
                entry = {"status": "ok", "result": _RUNNERS[stage](ctx)}
            except Exception as exc:  # noqa: BLE001 - any failure becomes the section's reason
                entry = {"status": "failed", "error": _why(exc),
                         "traceback": traceback.format_exc(limit=4)}
            entry["seconds"] = round(time.perf_counter() - t0, 3)
        entry.update(key=keys[stage], cached=False)
        ctx.results[stage] = entry
        state["stages"][stage] = {k: v for k, v in entry.items() if k != "cached"}
        atomic_write_json(out / AUDIT_FILE, state)
        log(f"{prefix}: {entry['status']} ({entry['seconds']:.1f} s)"
            + (f" — {entry['error']}" if entry["status"] == "failed" else ""))
    atomic_write_json(out / AUDIT_FILE, state)
    doc = card_mod.build_card(zm, config, ctx.results, fingerprint=fingerprint,
                              total_seconds=time.perf_counter() - t_all)
    card_mod.write_card(doc, out)
    doc["timing"]["total_seconds"] = round(time.perf_counter() - t_all, 3)
    card_mod.write_card(doc, out)
    log(summary(doc))
    return doc


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
