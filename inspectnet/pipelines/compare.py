"""Side-by-side comparison of fine-tuning methods (EBP paper Table 1 and Fig. 1 layout).

Every method (``vanilla`` = plain cross-entropy fine-tuning; any other name = a plugin from the
registry, e.g. ``ebp:K=25,lam=1e-3``) is fine-tuned from the *same* starting model with the same
budget and seed, then the train and test data are probed at one layer *with the plugin still
attached* (so activation plugins such as k-WTA are part of the measured model), rules are
extracted (:mod:`inspectnet.analysis.rules.tree`) and sparsity measured on the test record
(:mod:`inspectnet.analysis.sparsity`). Each seed is one run; the table reports mean ± std over seeds.
Hyperparameter sweeps (``ebp.K=5/25/100``) give the Fig. 1 style plot: accuracy, fidelity and
atoms against the hyperparameter.

Runs are resumable: a finished run's ``run.json`` is reused, and fine-tuning and probing resume.

>>> methods = expand_methods(["vanilla", "ebp:K=25,lam=1e-3"], layer="layer4",
...                          sweeps={"ebp": ("K", ["5", "25"])})
>>> [m.label for m in methods]
['vanilla', 'ebp:K=5,lam=1e-3', 'ebp:K=25,lam=1e-3']
"""

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectnet.analysis.rules.tree import extract_rules
from inspectnet.analysis.sparsity import LABELS as SPARSITY_LABELS
from inspectnet.analysis.sparsity import METRICS as SPARSITY_METRICS
from inspectnet.analysis.sparsity import sparsity_metrics
from inspectnet.core import tables
from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.core.storage import atomic_write_json, atomic_write_text, output_dir, read_json
from inspectnet.core.tables import format_value
from inspectnet.data import ImageDataset
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.recorder import run_probe
from inspectnet.training.loop import TrainConfig

VANILLA = "vanilla"
RULE_COLUMNS = [("extracted_accuracy", "Extracted Acc."), ("fidelity", "Fidelity"), ("atoms", "Atoms"),
                ("rules", "Rules"), ("avg_depth", "Avg. Depth")]
COLUMNS = RULE_COLUMNS + [(k, SPARSITY_LABELS[k]) for k in SPARSITY_METRICS] + [("model_accuracy", "CNN Acc.")]
PERCENT = {"extracted_accuracy", "fidelity", "model_accuracy"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One configuration to fine-tune: its table label, plugin family, spec and swept value."""

    label: str
    family: str
    spec: str | None           # plugin spec handed to the registry (None for vanilla)
    sweep: tuple[str, str] | None = None   # (hyperparameter, value) when part of a sweep


def split_plugin_list(text: str) -> list[str]:
    """Split a ``--plugins`` list: ``"vanilla,ebp:K=25,lam=1e-3,kwta"`` -> ``["vanilla", "ebp:K=25,lam=1e-3", "kwta"]``.

    An item with ``=`` but no ``:`` continues the previous plugin's hyperparameters.

    Args:
        text: the list.

    Returns:
        One plugin spec per method.

    Raises:
        InspectnetError: the list is empty, or starts with a hyperparameter.

    Examples:
        >>> split_plugin_list("vanilla,ebp:K=25,lam=1e-3,kwta")
        ['vanilla', 'ebp:K=25,lam=1e-3', 'kwta']
    """
    out: list[str] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" in item and ":" not in item:
            if not out:
                raise InspectnetError(f"--plugins {text!r}: {item!r} has no plugin before it")
            sep = "," if ":" in out[-1] else ":"
            out[-1] = f"{out[-1]}{sep}{item}"
        else:
            out.append(item)
    if not out:
        raise InspectnetError("--plugins is empty; expected e.g. vanilla,ebp,kwta")
    return out


def parse_sweep(text: str) -> tuple[str, tuple[str, list[str]]]:
    """Read a ``--sweep``: ``"ebp.K=5/25/100"`` -> ``("ebp", ("K", ["5", "25", "100"]))``.

    Args:
        text: the sweep.

    Returns:
        ``(plugin, (hyperparameter, values))``.

    Raises:
        InspectnetError: the text is not ``PLUGIN.PARAM=v1/v2/...``.

    Examples:
        >>> parse_sweep("ebp.K=5/25/100")
        ('ebp', ('K', ['5', '25', '100']))
    """
    m = re.fullmatch(r"\s*([\w-]+)\.(\w+)\s*=\s*(.+)", text)
    values = [v.strip() for v in m.group(3).split("/") if v.strip()] if m else []
    if not m or not values:
        raise InspectnetError(f"--sweep {text!r}: expected PLUGIN.PARAM=v1/v2/... (e.g. ebp.K=5/25/100)")
    return m.group(1), (m.group(2), values)


def expand_methods(plugins: Sequence[str], *, layer: str | None = None,
                   sweeps: dict[str, tuple[str, list[str]]] | None = None) -> list[Method]:
    """Plugin specs -> methods; a swept family gives one method per value.

    ``layer`` fills in the ``layer`` hyperparameter of plugins that have one and were not given it.

    Args:
        plugins: the plugin specs (``vanilla`` for plain fine-tuning).
        layer: the layer for plugins that take one.
        sweeps: plugin -> (hyperparameter, values).

    Returns:
        The methods, in order.

    Raises:
        InspectnetError: ``vanilla`` has hyperparameters, a sweep names a plugin or hyperparameter that is
            not there, or a configuration is listed twice.
    """
    from inspectnet.plugins import get_plugin, make_plugin, parse_plugin_spec

    sweeps = dict(sweeps or {})
    methods: list[Method] = []
    for text in plugins:
        spec = parse_plugin_spec(text)
        if spec.name == VANILLA:
            if spec.values:
                raise InspectnetError(f"vanilla takes no hyperparameters, got {text!r}")
            methods.append(Method(VANILLA, VANILLA, None))
            continue
        hp_names = {h.name for h in get_plugin(spec.name).hparams}  # unknown names fail here, listing the known
        values = dict(spec.values)
        shown = dict(values)
        for key in ("layer", "layers"):  # CGL names its layer list "layers"
            if layer and key in hp_names and key not in values:
                values[key] = layer
        todo = [None]
        if spec.name in sweeps:
            param, swept = sweeps.pop(spec.name)
            if param not in hp_names:
                raise InspectnetError(f"--sweep {spec.name}.{param}: plugin {spec.name} has no hyperparameter "
                                      f"{param!r}; it has {', '.join(sorted(hp_names))}")
            todo = [(param, v) for v in swept]
        for sw in todo:
            v, s = dict(values), dict(shown)
            if sw:
                v[sw[0]] = s[sw[0]] = sw[1]
            label = spec.name + (":" + ",".join(f"{k}={x}" for k, x in s.items()) if s else "")
            full = spec.name + (":" + ",".join(f"{k}={x}" for k, x in v.items()) if v else "")
            make_plugin(full)  # types and ranges of every value are checked before anything trains
            methods.append(Method(label, spec.name, full, sw))
    if sweeps:
        raise InspectnetError(f"--sweep names plugin(s) not in --plugins: {', '.join(sweeps)}")
    labels = [m.label for m in methods]
    if len(set(labels)) != len(labels):
        raise InspectnetError(f"--plugins lists a configuration twice: {labels}")
    return methods


@dataclasses.dataclass(frozen=True)
class Comparison(Result):
    """Per-run metrics and their mean ± std per method (``compare.json``)."""

    layer: str
    seeds: list[int]
    config: dict[str, Any]
    model: str
    data: dict[str, Any]
    runs: list[dict[str, Any]]
    table: list[dict[str, Any]]
    rules_options: dict[str, Any]


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_") or "run"


def run_one(make_model: Callable[[], ZooModel], method: Method, seed: int, train_ds: ImageDataset,
            test_ds: ImageDataset, layer: str, config: TrainConfig, out: Path, *, device: str = "auto",
            probe_limit: int | None = None, eval_limit: int | None = None,
            rules_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune one method with one seed, probe ``layer`` with the plugin attached, extract rules and sparsity.

    The row is written to ``out/run.json`` (reused when it exists).

    Args:
        make_model: builds a fresh model.
        method: the configuration.
        seed: the seed of the fine-tuning.
        train_ds: the training data.
        test_ds: the evaluation data.
        layer: the layer probed for rules and sparsity.
        config: the training configuration.
        out: the run's folder.
        device: where to run.
        probe_limit: the most training samples probed.
        eval_limit: the most evaluation samples probed.
        rules_kw: keyword arguments of the rule extraction.

    Returns:
        The run's row.

    Raises:
        InspectnetError: ``out`` holds a run with other settings.
    """
    from inspectnet.plugins import make_plugin
    from inspectnet.training.finetune import finetune

    done = out / "run.json"
    identity = {"method": method.spec or VANILLA, "seed": seed, "layer": layer, "config": dataclasses.asdict(config),
                "train": train_ds.spec, "test": test_ds.spec, "probe_limit": probe_limit, "eval_limit": eval_limit,
                "rules": dict(rules_kw or {})}
    if done.exists():
        row = read_json(done, what="comparison run")
        if row.get("identity") != identity:
            raise InspectnetError(f"{out} holds a run with other settings; use another --out or delete it")
        return row
    torch.manual_seed(seed)  # plugin initialisation and stochastic plugins (dropout-like) per seed
    zm = make_model()
    plugins = [make_plugin(method.spec)] if method.spec else []
    cfg = dataclasses.replace(config, seed=seed)
    t0 = time.perf_counter()
    result = finetune(zm, train_ds, out / "model", plugins=plugins, config=cfg, device=device, keep_attached=True)
    seconds = time.perf_counter() - t0
    try:  # probe with the plugin still in the forward pass (k-WTA etc. are part of the model)
        train_rec = run_probe(zm, train_ds, layer, out / "probe_train", limit=probe_limit, device=device,
                              batch_size=128)
        test_rec = run_probe(zm, test_ds, layer, out / "probe_test", limit=eval_limit, device=device,
                             batch_size=128)
    finally:
        for p in reversed(plugins):
            p.detach()
    name = train_rec.layers[0]
    rs, _ = extract_rules(train_rec, name, test_rec, seed=seed, **(rules_kw or {}))
    sp = sparsity_metrics(test_rec.activations(name), layer=name)
    row = {"label": method.label, "family": method.family, "plugin": result.plugins[0] if result.plugins else None,
           "sweep": list(method.sweep) if method.sweep else None, "seed": seed, "layer": name,
           "extracted_accuracy": rs.extracted_accuracy, "fidelity": rs.fidelity, "atoms": rs.atoms,
           "rules": rs.rules, "avg_depth": rs.avg_depth, **{k: getattr(sp, k) for k in SPARSITY_METRICS},
           "model_accuracy": test_rec.accuracy(), "train_fidelity": rs.train_fidelity,
           "ccp_alpha": rs.selection.get("ccp_alpha"), "skipped_constant": rs.skipped_constant,
           "finetune_seconds": round(seconds, 2), "last_epoch": result.history[-1] if result.history else {},
           "rules_text_top5": rs.rules_text[:5], "identity": identity}
    atomic_write_json(done, row)
    return row


def compare(make_model: Callable[[], ZooModel], train_ds: ImageDataset, test_ds: ImageDataset,
            methods: Sequence[Method], layer: str, out: str | Path, *, config: TrainConfig = TrainConfig(epochs=1),
            seeds: Sequence[int] = (0,), device: str = "auto", probe_limit: int | None = None,
            eval_limit: int | None = None, rules_kw: dict[str, Any] | None = None,
            log: Callable[[str], None] | None = None) -> Comparison:
    """Run every method × seed (see :func:`run_one`) and write ``compare.{json,md,csv,png}`` in ``out``.

    Args:
        make_model: builds a fresh model.
        train_ds: the training data.
        test_ds: the evaluation data.
        methods: the configurations.
        layer: the layer probed for rules and sparsity.
        out: the output folder.
        config: the training configuration.
        seeds: the seeds, each run per method.
        device: where to run.
        probe_limit: the most training samples probed.
        eval_limit: the most evaluation samples probed.
        rules_kw: keyword arguments of the rule extraction.
        log: receives one line per run.

    Returns:
        The comparison.

    Raises:
        InspectnetError: no method or no seed is given.
    """
    if not methods:
        raise InspectnetError("nothing to compare: --plugins is empty")
    if not seeds:
        raise InspectnetError("--seeds must be at least 1")
    out = Path(out)
    runs: list[dict[str, Any]] = []
    done_methods: list[Method] = []
    for method in methods:
        for seed in seeds:
            row = run_one(make_model, method, seed, train_ds, test_ds, layer, config,
                          out / "runs" / _slug(method.label) / f"seed{seed}", device=device,
                          probe_limit=probe_limit, eval_limit=eval_limit, rules_kw=rules_kw)
            runs.append(row)
            if log:
                log(f"{method.label} seed {seed}: acc {row['model_accuracy']:.4f} fidelity {row['fidelity']:.4f} "
                    f"atoms {row['atoms']} rules {row['rules']} hoyer {format_value(row['hoyer'])}")
        done_methods.append(method)
        # tables are rewritten after every method, so an interrupted comparison still shows what finished
        result = Comparison(layer=runs[0]["layer"], seeds=list(seeds), config=dataclasses.asdict(config),
                            model=make_model().spec, data={"train": train_ds.spec, "test": test_ds.spec,
                                                           "probe_limit": probe_limit, "eval_limit": eval_limit},
                            runs=runs, table=aggregate(runs, [m.label for m in done_methods]),
                            rules_options=dict(rules_kw or {}))
        write_comparison(result, out)
    return result


def aggregate(runs: list[dict[str, Any]], order: list[str]) -> list[dict[str, Any]]:
    """Mean and sample std (ddof=1; 0 for one seed) of every column per method label, in ``order``.

    Args:
        runs: one row per run.
        order: the method labels.

    Returns:
        One row per method.
    """
    table = []
    for label in order:
        rows = [r for r in runs if r["label"] == label]
        entry: dict[str, Any] = {"label": label, "family": rows[0]["family"], "sweep": rows[0]["sweep"],
                                 "n_seeds": len(rows)}
        for key, _ in COLUMNS:
            vals = np.array([r[key] for r in rows if r[key] is not None], dtype=np.float64)
            entry[key] = float(vals.mean()) if len(vals) else None
            entry[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0 if len(vals) else None
        table.append(entry)
    return table


def _cell(entry: dict[str, Any], key: str) -> str:
    mean, std = entry[key], entry[f"{key}_std"]
    if mean is None:
        return "n/a"
    scale, digits = (100.0, 2) if key in PERCENT else (1.0, 4 if abs(mean) < 10 else 1)
    if key in ("atoms", "rules", "avg_depth"):
        digits = 1
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if entry["n_seeds"] > 1 else "")


def markdown_table(c: Comparison) -> str:
    """The paper's Table 1 layout: method × rule-extraction, sparsity and accuracy columns.

    Args:
        c: the comparison.

    Returns:
        The Markdown table.
    """
    return tables.markdown_table(["Method", *[name for _, name in COLUMNS]],
                                 [[e["label"], *[_cell(e, k) for k, _ in COLUMNS]] for e in c.table])


def csv_table(c: Comparison) -> str:
    """One row per method: the mean and the std over seeds of every column, at full precision.

    Args:
        c: the comparison.

    Returns:
        The CSV text.
    """
    keys = [x for k, _ in COLUMNS for x in (k, f"{k}_std")]
    return tables.csv_text(["method", "n_seeds", *keys], [[e["label"], e["n_seeds"], *[e[x] for x in keys]]
                                                          for e in c.table])


def plot_comparison(c: Comparison, path: str | Path) -> Path:
    """Fig. 1 style: CNN accuracy, fidelity and atoms per method.

    Swept families are lines over their hyperparameter (x axis), unswept methods single points; error
    bars = std over seeds.

    Args:
        c: the comparison.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.
    """
    from inspectnet.core.figures import new_figure, save_figure

    panels = [("model_accuracy", "CNN accuracy (%)"), ("fidelity", "fidelity (%)"), ("atoms", "unique atoms")]
    fig = new_figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    families: dict[str, list[dict[str, Any]]] = {}
    for e in c.table:
        families.setdefault(e["family"], []).append(e)
    swept = {f: es for f, es in families.items() if any(e["sweep"] for e in es)}
    for ax, (key, title) in zip(axes, panels):
        scale = 100.0 if key in PERCENT else 1.0
        if not swept:  # no sweep: one point per method
            xs = list(range(len(c.table)))
            for x, e in enumerate(c.table):
                y = e[key] * scale if e[key] is not None else np.nan
                ax.errorbar([x], [y], yerr=[(e[f"{key}_std"] or 0.0) * scale], marker="o", capsize=3,
                            color=f"C{x}", label=e["label"])
            ax.set_xticks(xs, [e["label"] for e in c.table], rotation=30, ha="right", fontsize=7)
            ax.set_title(title)
            continue
        for fam, es in families.items():
            ys = [e[key] * scale if e[key] is not None else np.nan for e in es]
            err = [(e[f"{key}_std"] or 0.0) * scale for e in es]
            if fam in swept:
                xs = list(range(len(es)))
                line = ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=fam)
                for x, e in zip(xs, es):
                    ax.annotate(f"{e['sweep'][0]}={e['sweep'][1]}", (x, ys[x]), fontsize=6,
                                textcoords="offset points", xytext=(2, 4), color=line[0].get_color())
            else:
                for e, y, s in zip(es, ys, err):
                    ax.axhline(y, ls="--", lw=1, color=f"C{list(families).index(fam)}", label=e["label"])
                    ax.axhspan(y - s, y + s, alpha=0.1, color=f"C{list(families).index(fam)}")
        ax.set_title(title)
        ax.set_xlabel("hyperparameter setting (swept methods)")
        ax.set_xticks([])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"layer {c.layer}: mean ± std over {len(c.seeds)} seed(s)")
    return save_figure(fig, path, dpi=100, bbox_inches="tight")


def write_comparison(c: Comparison, out: str | Path) -> dict[str, Path]:
    """Write ``compare.json``, ``compare.md``, ``compare.csv`` and ``compare.png`` into ``out``.

    Args:
        c: the comparison.
        out: the output folder.

    Returns:
        The files written: ``{"json", "md", "csv", "png"}``.
    """
    out = output_dir(out)
    return {"json": c.save(out / "compare.json"), "md": atomic_write_text(out / "compare.md", markdown_table(c) + "\n"),
            "csv": atomic_write_text(out / "compare.csv", csv_table(c)), "png": plot_comparison(c, out / "compare.png")}
