"""Rule extraction: a decision tree over quantized filter activations that mimics the model (EBP §4.1).

Each filter of a probed layer becomes a binary atom ``fj`` (active if A_ij > μ_j + σ_j, see
:mod:`inspectnet.analysis.rules.binarize`). A scikit-learn ``DecisionTreeClassifier(criterion="entropy")`` is fit
on the atoms with the model's *own predictions* as target, so each root-to-leaf path is a rule
``f12 ∧ ¬f40 ∧ f7 → 3`` that explains the model, not the labels. The tree size is chosen by
cost-complexity pruning: the pruning path is computed on a fitting part of the train record, the
alpha with the best fidelity on a held-out validation part is kept (ties go to the smaller tree),
and the tree is refit on the whole train record with that alpha. A fixed ``max_depth`` is the
alternative. Reported (on the eval record when given, else in-sample on the train record):
extracted accuracy (tree vs labels), fidelity (tree vs model predictions), unique atoms (filters
used in splits), rules (leaves), average leaf depth, and every rule with its support and confidence.

>>> from inspectnet.probe.record import ProbeRecord
>>> rs, model = extract_rules(ProbeRecord.load("rec_train"), "layer4",
...                           ProbeRecord.load("rec_test"))          # doctest: +SKIP
>>> rs.fidelity, rs.atoms, rs.rules_text[0]                           # doctest: +SKIP
(0.93, 21, 'f12 ∧ ¬f40 ∧ f7 → 3  support=412 confidence=0.97')
"""

import dataclasses
import re
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.tree import DecisionTreeClassifier

from inspectnet.analysis.rules.binarize import Quantizer, fit_quantizer
from inspectnet.analysis.rules.selection import CURVE_DEPTHS, READABLE_MARGIN, _select_alpha, _tree, plot_curve, select_depth
from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.core.storage import atomic_write_text, output_dir
from inspectnet.core.streaming import row_blocks
from inspectnet.data.subsets import spread_indices
from inspectnet.probe.record import ProbeRecord

__all__ = ["AND", "ARROW", "CURVE_DEPTHS", "FIT_SAMPLES", "MAX_DRAWN_LEAVES", "NOT", "READABLE_MARGIN", "RuleModel",
           "RuleSet", "extract_rules", "fit_rules", "format_rule", "plot_curve", "select_depth", "summary",
           "write_rules"]

AND, NOT, ARROW = " ∧ ", "¬", " → "
MAX_DRAWN_LEAVES = 12
_KEPT_LINE = re.compile(r"f\d+ <=|samples =|class =|\(\.\.\.\)")


@dataclasses.dataclass(frozen=True)
class RuleSet(Result):
    """What a rule extraction found; ``rules.json`` is this object."""

    layer: str
    evaluated_on: str
    extracted_accuracy: float | None
    fidelity: float
    train_fidelity: float
    model_accuracy: float | None
    atoms: int
    atom_filters: list[int]
    rules: int
    avg_depth: float
    max_depth: int
    rules_text: list[str]
    rule_list: list[dict[str, Any]]
    num_filters: int
    skipped_constant: int
    quantizer: dict[str, Any]
    selection: dict[str, Any]
    n_train: int
    n_eval: int
    class_names: list[str]
    identity: dict[str, Any]


@dataclasses.dataclass
class RuleModel:
    """A fitted quantizer + tree; ``predict`` maps raw activations to the tree's class."""

    quantizer: Quantizer
    tree: DecisionTreeClassifier
    filters: np.ndarray          # original filter index of each tree feature (constant filters dropped)
    class_names: list[str]

    def atoms(self, activations: np.ndarray) -> np.ndarray:
        """The binary atoms (active filters) the tree reads, per row.

        Args:
            activations: (N, K) activations of the layer.

        Returns:
            The (N, number of atoms) uint8 matrix.
        """
        return self.quantizer.transform(activations)[:, self.filters].astype(np.uint8)

    def predict(self, activations: np.ndarray) -> np.ndarray:
        """The tree's class per row, read block by block (a record's memmap stays on disk).

        Args:
            activations: (N, K) activations of the layer.

        Returns:
            (N,) classes.
        """
        return np.concatenate([self.tree.predict(self.atoms(activations[rows]))
                               for rows in row_blocks(len(activations))])

    def leaves(self, activations: np.ndarray) -> np.ndarray:
        """The leaf (rule) each row falls into, read block by block.

        Args:
            activations: (N, K) activations of the layer.

        Returns:
            (N,) leaf ids.
        """
        return np.concatenate([self.tree.apply(self.atoms(activations[rows])) for rows in row_blocks(len(activations))])

    def used_filters(self) -> list[int]:
        """The layer's filters that some split of the tree tests.

        Returns:
            The filter indices, sorted.
        """
        feats = self.tree.tree_.feature
        return sorted({int(self.filters[f]) for f in feats if f >= 0})

    def leaf_depths(self) -> dict[int, int]:
        """The depth of each leaf: the number of conditions of its rule.

        Returns:
            Leaf id -> depth.
        """
        return {leaf: len(conds) for leaf, conds in self._paths().items()}

    def _paths(self) -> dict[int, list[tuple[int, bool]]]:
        """Leaf node id -> [(filter, active?)] from the root (right child = atom > 0.5 = active)."""
        t = self.tree.tree_
        paths: dict[int, list[tuple[int, bool]]] = {}
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, conds = stack.pop()
            if t.children_left[node] == -1:
                paths[node] = conds
                continue
            f = int(self.filters[t.feature[node]])
            stack.append((t.children_right[node], conds + [(f, True)]))
            stack.append((t.children_left[node], conds + [(f, False)]))
        return paths

    def rule_list(self, activations: np.ndarray | None = None, predictions: np.ndarray | None = None
                  ) -> list[dict[str, Any]]:
        """One dict per leaf: conditions, class, support/confidence, sorted by support.

        Support and confidence are given on the fitting data, and on ``activations``/``predictions`` when given.

        Args:
            activations: (N, K) activations to report on.
            predictions: the model's (N,) predictions on them.

        Returns:
            The rules.
        """
        t = self.tree.tree_
        classes = self.tree.classes_
        eval_leaves = self.leaves(activations) if activations is not None else None
        out = []
        for leaf, conds in self._paths().items():
            value = np.asarray(t.value[leaf][0], dtype=np.float64)
            k = int(np.argmax(value))
            cls = int(classes[k])
            rule = {"conditions": [{"filter": f, "active": a} for f, a in conds],
                    "class": cls, "class_name": _name(self.class_names, cls), "depth": len(conds),
                    "support": int(t.n_node_samples[leaf]),
                    "confidence": float(value[k] / value.sum()) if value.sum() > 0 else 0.0}
            if eval_leaves is not None:
                hit = eval_leaves == leaf
                rule["eval_support"] = int(hit.sum())
                rule["eval_confidence"] = (float((predictions[hit] == cls).mean()) if hit.any() else None)
            rule["text"] = format_rule(conds, cls, self.class_names)
            out.append(rule)
        out.sort(key=lambda r: (-r["support"], r["text"]))
        return out

    def figure(self, *, max_depth: int = 3) -> tuple[Any, list[Any]]:
        """The tree down to ``max_depth`` levels (deeper nodes elided as ``(...)``): the figure and its node boxes.

        Each box shows the split atom, the samples and the majority class (no per-class counts: with many
        classes they would make every box wider than its slot).

        Args:
            max_depth: the levels drawn.

        Returns:
            ``(figure, node boxes)``.
        """
        from sklearn.tree import plot_tree

        from inspectnet.core.figures import new_figure

        # plot_tree gives every drawn leaf (an elided ``(...)`` child included) an equal slot of the
        # width, and a box needs about two slots of 1.1 inch: fewer levels are drawn where more would not fit
        max_depth = next((d for d in range(max_depth, 0, -1) if self._drawn_leaves(d) <= MAX_DRAWN_LEAVES), 1)
        shown = min(self.tree.get_depth(), max_depth)
        fig = new_figure(figsize=(max(6.0, 1.1 * self._drawn_leaves(max_depth)), 1.5 * (shown + 1.5)))
        ax = fig.subplots()
        names = [f"f{int(f)}" for f in self.filters]
        cls = [_name(self.class_names, int(c))[:14] for c in self.tree.classes_]
        boxes = plot_tree(self.tree, feature_names=names, class_names=cls, filled=True, impurity=False,
                          max_depth=max_depth, fontsize=8, ax=ax, proportion=False)
        for box in boxes:  # drop the per-class counts (``value = [...]``, wrapped over lines)
            box.set_text("\n".join(line for line in box.get_text().split("\n") if _KEPT_LINE.search(line)))
        ax.set_title(f"decision tree over active filters ({self.tree.get_n_leaves()} rules, depth "
                     f"{self.tree.get_depth()}, top {shown} levels drawn); left = inactive, right = active",
                     fontsize=9)
        return fig, boxes

    def _drawn_leaves(self, max_depth: int) -> int:
        """Leaves of the tree as drawn down to ``max_depth`` (a node there with children shows two)."""
        t = self.tree.tree_
        count, stack = 0, [(0, 0)]
        while stack:
            node, depth = stack.pop()
            if t.children_left[node] == -1:
                count += 1
            elif depth == max_depth:
                count += 2
            else:
                stack += [(t.children_left[node], depth + 1), (t.children_right[node], depth + 1)]
        return count

    def plot(self, path: str | Path, *, max_depth: int = 3) -> Path:
        """Draw the tree (down to ``max_depth`` levels, deeper nodes elided) as a PNG.

        Args:
            path: the PNG to write.
            max_depth: the levels drawn.

        Returns:
            ``path`` as a ``Path``.
        """
        from inspectnet.core.figures import save_figure

        fig, _ = self.figure(max_depth=max_depth)
        return save_figure(fig, path, dpi=100, bbox_inches="tight")


def format_rule(conds: list[tuple[int, bool]], cls: int, class_names: list[str]) -> str:
    """A rule as text: ``[(12, True), (40, False)], 3`` -> ``f12 ∧ ¬f40 → 3 (name)`` (``⊤`` for the empty rule).

    Args:
        conds: (filter, active) conditions.
        cls: the rule's class.
        class_names: the class names (the name is shown when it is not the index).

    Returns:
        The text.

    Examples:
        >>> format_rule([(12, True), (40, False)], 1, ["a", "b"])
        'f12 ∧ ¬f40 → 1 (b)'
    """
    body = AND.join(f"f{f}" if active else f"{NOT}f{f}" for f, active in conds) or "⊤"
    name = _name(class_names, cls)
    return f"{body}{ARROW}{cls}" + ("" if name == str(cls) else f" ({name})")


def _name(class_names: list[str], cls: int) -> str:
    return class_names[cls] if 0 <= cls < len(class_names) else str(cls)


def fit_rules(activations: np.ndarray, predictions: np.ndarray, *, class_names: list[str] | None = None,
              quantize: str = "mean_std", quantize_param: float | None = None, max_depth: int | None = None,
              readable_margin: float | None = None, val_fraction: float = 0.25, max_alphas: int = 40,
              seed: int = 0) -> tuple[RuleModel, dict]:
    """Quantize ``activations`` (N × K) and fit the tree to ``predictions``.

    The tree's size is chosen so: ``max_depth`` given, that depth; ``readable_margin`` given, the
    smallest depth within that margin of the best held-out fidelity (:func:`select_depth`); else
    cost-complexity pruning.

    Args:
        activations: (N, K) activations of the layer.
        predictions: the model's (N,) predictions.
        class_names: the class names.
        quantize: the quantization method (see :func:`~inspectnet.analysis.rules.binarize.fit_quantizer`).
        quantize_param: its parameter.
        max_depth: a fixed tree depth.
        readable_margin: the fidelity margin of the readable depth.
        val_fraction: the held-out fraction for the size selection.
        max_alphas: pruning strengths tried.
        seed: seeds the held-out split.

    Returns:
        ``(model, selection)``: the rule model and how its size was chosen.

    Raises:
        InspectnetError: the row counts differ, ``max_depth`` is below 1, the model predicts a single class,
            or every filter is constant.
    """
    predictions = np.asarray(predictions).astype(np.int64)
    if len(predictions) != len(activations):
        raise InspectnetError(f"{len(activations)} activation rows but {len(predictions)} predictions")
    if max_depth is not None and max_depth < 1:
        raise InspectnetError(f"--max-depth must be at least 1, got {max_depth}")
    quantizer = fit_quantizer(activations, quantize, quantize_param)
    predicted = np.unique(predictions)
    if len(predicted) < 2:
        raise InspectnetError(f"the model predicts a single class ({predicted.tolist()}) on all "
                              f"{len(predictions)} samples; rules need at least two predicted classes")
    filters = np.setdiff1d(np.arange(np.asarray(activations).shape[1]), quantizer.constant)
    if len(filters) == 0:
        raise InspectnetError("every filter of the layer is constant on the train record; no atoms to build rules")
    class_names = list(class_names or [])
    x = quantizer.transform(activations)[:, filters].astype(np.uint8)
    if max_depth is not None:
        tree = _tree(seed, max_depth=max_depth).fit(x, predictions)
        selection = {"method": "fixed_depth", "max_depth": max_depth, "ccp_alpha": 0.0}
    elif readable_margin is not None:
        depth, selection = select_depth(x, predictions, readable_margin, val_fraction=val_fraction, seed=seed)
        tree = _tree(seed, max_depth=depth).fit(x, predictions)
    else:
        alpha, selection = _select_alpha(x, predictions, val_fraction, max_alphas, seed)
        tree = _tree(seed, ccp_alpha=alpha).fit(x, predictions)
    return RuleModel(quantizer, tree, filters, class_names), selection


def _check_record(rec: ProbeRecord, what: str) -> None:
    if not (rec.root / "logits.npy").exists() or rec.logits.ndim != 2 or rec.logits.shape[1] < 1:
        raise InspectnetError(f"{what} {rec.root} holds no model predictions (logits.npy); re-run "
                              f"`inspectnet probe` to make a complete record")


FIT_SAMPLES = 10_000


def extract_rules(train: ProbeRecord, layer: str, eval_record: ProbeRecord | None = None, *,
                  quantize: str = "mean_std", quantize_param: float | None = None, max_depth: int | None = None,
                  readable_margin: float | None = None, val_fraction: float = 0.25, max_alphas: int = 40,
                  seed: int = 0, fit_samples: int = FIT_SAMPLES) -> tuple[RuleSet, RuleModel]:
    """Fit thresholds and tree on ``train``'s ``layer`` and report on ``eval_record`` (else in-sample).

    The tree is fitted on at most ``fit_samples`` evenly spread rows of ``train`` (a tree needs its
    data in memory; ``n_train`` says how many); the evaluation reads every row, block by block.

    Args:
        train: the fitting record.
        layer: the layer.
        eval_record: the record reported on (None: in-sample).
        quantize: the quantization method.
        quantize_param: its parameter.
        max_depth: a fixed tree depth.
        readable_margin: the fidelity margin of the readable depth.
        val_fraction: the held-out fraction for the size selection.
        max_alphas: pruning strengths tried.
        seed: seeds the held-out split.
        fit_samples: the most fitting rows.

    Returns:
        ``(rule set, rule model)``.

    Raises:
        InspectnetError: the layer's width differs between the records (or the tree cannot be fitted,
            see :func:`fit_rules`).
    """
    _check_record(train, "train record")
    fit_rows = spread_indices(len(train), fit_samples)
    a_train = np.asarray(train.activations(layer)[fit_rows], dtype=np.float64)
    p_train = train.predictions[fit_rows]
    model, selection = fit_rules(a_train, p_train, class_names=train.class_names, quantize=quantize,
                                 quantize_param=quantize_param, max_depth=max_depth,
                                 readable_margin=readable_margin, val_fraction=val_fraction,
                                 max_alphas=max_alphas, seed=seed)
    ev, where = train, "train record (in-sample)"
    if eval_record is not None:
        _check_record(eval_record, "eval record")
        _check_same_model(train, eval_record)
        ev, where = eval_record, f"eval record {eval_record.root}"
    a_eval = ev.activations(layer)
    if a_eval.shape[1] != a_train.shape[1]:
        raise InspectnetError(f"layer {layer!r} has {a_train.shape[1]} filters in the train record but "
                              f"{a_eval.shape[1]} in the eval record")
    p_eval, labels = ev.predictions, np.asarray(ev.labels)
    tree_eval = model.predict(a_eval)
    labelled = labels >= 0
    rule_list = model.rule_list(a_eval, p_eval)
    depths = [r["depth"] for r in rule_list]
    used = model.used_filters()
    rs = RuleSet(
        layer=layer, evaluated_on=where,
        extracted_accuracy=float((tree_eval[labelled] == labels[labelled]).mean()) if labelled.any() else None,
        fidelity=float((tree_eval == p_eval).mean()),
        train_fidelity=float((model.predict(a_train) == p_train).mean()),
        model_accuracy=float((p_eval[labelled] == labels[labelled]).mean()) if labelled.any() else None,
        atoms=len(used), atom_filters=used, rules=len(rule_list), avg_depth=float(np.mean(depths)),
        max_depth=int(max(depths)),
        rules_text=[f"{r['text']}  support={r['support']} confidence={r['confidence']:.3f}" for r in rule_list],
        rule_list=rule_list, num_filters=int(a_train.shape[1]), skipped_constant=len(model.quantizer.constant),
        quantizer=model.quantizer.to_dict(), selection=selection, n_train=len(p_train), n_eval=len(p_eval),
        class_names=train.class_names,
        identity={"train": train.fingerprint, "eval": ev.fingerprint, "seed": seed})
    return rs, model


def _check_same_model(a: ProbeRecord, b: ProbeRecord) -> None:
    fa = a.manifest["identity"]["weights_fingerprint"]
    fb = b.manifest["identity"]["weights_fingerprint"]
    if fa != fb:
        raise InspectnetError(f"records {a.root} and {b.root} were made by different models "
                              f"(weights {fa[:12]} vs {fb[:12]}); rules must be fit and evaluated on one model")


def write_rules(rs: RuleSet, model: RuleModel, out: str | Path, *, plot_depth: int | None = 3) -> dict[str, Path]:
    """Write ``rules.json``, ``rules.txt`` and (unless ``plot_depth`` is None) ``tree.png`` into ``out``.

    Args:
        rs: the rule set.
        model: the rule model.
        out: the output folder.
        plot_depth: the levels drawn in ``tree.png`` (None: no picture).

    Returns:
        The files written: ``{"json", "text"}``, and ``"png"`` when the tree is drawn.
    """
    out = output_dir(out)
    (out / "rules.json").unlink(missing_ok=True)  # written last: a rules.json is never beside a partial set
    paths = {"text": atomic_write_text(out / "rules.txt", summary(rs) + "\n")}
    if plot_depth is not None:
        paths["png"] = model.plot(out / "tree.png", max_depth=plot_depth)
    return {"json": rs.save(out / "rules.json"), **paths}


def summary(rs: RuleSet) -> str:
    """Human-readable report: the headline numbers, then one rule per line.

    Args:
        rs: the rule set.

    Returns:
        The text.
    """
    acc = "n/a" if rs.extracted_accuracy is None else f"{rs.extracted_accuracy:.4f}"
    head = (f"layer {rs.layer}: {rs.rules} rules over {rs.atoms} atoms (of {rs.num_filters} filters, "
            f"{rs.skipped_constant} constant skipped), avg depth {rs.avg_depth:.2f}; on {rs.evaluated_on}: "
            f"fidelity {rs.fidelity:.4f}, extracted accuracy {acc}")
    return "\n".join([head, *rs.rules_text])
