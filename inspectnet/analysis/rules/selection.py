"""Choosing the rule tree's size: the held-out size–fidelity curve, the readable depth and cost-complexity pruning."""

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.tree import DecisionTreeClassifier

from inspectnet.core.errors import InspectnetError


def _tree(seed: int, **kw: Any) -> DecisionTreeClassifier:
    return DecisionTreeClassifier(criterion="entropy", random_state=seed, **kw)


CURVE_DEPTHS = tuple(range(2, 9))
READABLE_MARGIN = 0.02


def select_depth(x: np.ndarray, y: np.ndarray, margin: float = READABLE_MARGIN, *,
                 depths: tuple[int, ...] = CURVE_DEPTHS, val_fraction: float = 0.25, seed: int = 0
                 ) -> tuple[int, dict]:
    """The size–fidelity trade-off and a readable tree size.

    Fidelity is measured on a held-out part of ``x`` for a tree fitted (on the rest) at each depth in
    ``depths`` and without a depth limit; the chosen depth is the smallest whose fidelity is within
    ``margin`` of the best of them, or, where none of ``depths`` is (``within_margin`` false), the best
    of ``depths``.

    Args:
        x: (N, atoms) binary atoms.
        y: (N,) classes to reproduce.
        margin: the fidelity margin, in [0, 1).
        depths: the depths tried.
        val_fraction: the held-out fraction.
        seed: seeds the split.

    Returns:
        ``(depth, description)``; the description holds the curve.

    Raises:
        InspectnetError: ``margin`` is not in [0, 1).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.integers(0, 2, size=(400, 6)).astype(np.uint8)
        >>> depth, how = select_depth(x, x[:, 0] * 2 + x[:, 1])    # two atoms decide the class
        >>> depth, [(r["depth"], r["val_fidelity"]) for r in how["curve"][:2]]
        (2, [(2, 1.0), (3, 1.0)])
    """
    if not 0.0 <= margin < 1.0:
        raise InspectnetError(f"readable-tree margin must be in [0, 1), got {margin}")
    x_fit, x_val, y_fit, y_val = _split(x, y, val_fraction, seed)
    curve = []
    for depth in (*depths, None):
        t = _tree(seed, max_depth=depth).fit(x_fit, y_fit)
        curve.append({"depth": depth, "val_fidelity": float((t.predict(x_val) == y_val).mean()),
                      "leaves": int(t.get_n_leaves()), "tree_depth": int(t.get_depth())})
    best = max(r["val_fidelity"] for r in curve)
    within = [r["depth"] for r in curve[:-1] if r["val_fidelity"] >= best - margin - 1e-9]
    # no small tree within the margin: a readable tree is still capped at the largest depth tried
    chosen = within[0] if within else max(curve[:-1], key=lambda r: (r["val_fidelity"], -r["depth"]))["depth"]
    return chosen, {"method": "readable_depth", "max_depth": chosen, "margin": margin, "best_val_fidelity": best,
                    "within_margin": bool(within), "val_fraction": val_fraction, "n_fit": len(y_fit),
                    "n_val": len(y_val), "curve": curve}


def _split(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int) -> list[np.ndarray]:
    """Fitting and validation parts (stratified by class where every class has two samples)."""
    if not 0.0 < val_fraction < 1.0:
        raise InspectnetError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    _, counts = np.unique(y, return_counts=True)
    stratify = y if counts.min() >= 2 else None
    try:
        return train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=stratify)
    except ValueError:  # too few samples per class for a stratified split
        return train_test_split(x, y, test_size=val_fraction, random_state=seed)


def _select_alpha(x: np.ndarray, y: np.ndarray, val_fraction: float, max_alphas: int, seed: int
                  ) -> tuple[float, dict]:
    """Cost-complexity pruning: the alpha whose tree (fit on the fitting part) validates best.

    Fidelity is measured on the validation part; among alphas within 1e-9 of the best, the largest
    (smallest tree) wins.
    """
    x_fit, x_val, y_fit, y_val = _split(x, y, val_fraction, seed)
    path = _tree(seed).cost_complexity_pruning_path(x_fit, y_fit)
    alphas = np.unique(np.clip(path.ccp_alphas, 0.0, None))
    if len(alphas) > max_alphas:  # evenly spaced along the path keeps both ends
        alphas = alphas[np.unique(np.linspace(0, len(alphas) - 1, max_alphas).round().astype(int))]
    scores = []
    for a in alphas:
        t = _tree(seed, ccp_alpha=float(a)).fit(x_fit, y_fit)
        scores.append((float(a), float((t.predict(x_val) == y_val).mean()), int(t.get_n_leaves())))
    best = max(s for _, s, _ in scores)
    chosen = max(a for a, s, _ in scores if s >= best - 1e-9)
    return chosen, {"method": "cost_complexity_pruning", "ccp_alpha": chosen, "val_fraction": val_fraction,
                    "val_fidelity": best, "n_fit": len(y_fit), "n_val": len(y_val),
                    "path": [{"ccp_alpha": a, "val_fidelity": s, "leaves": n} for a, s, n in scores]}


def plot_curve(selection: dict[str, Any], path: str | Path) -> Path:
    """The size–fidelity trade-off of :func:`select_depth` as a curve.

    Held-out fidelity and rules (leaves) against the tree depth, the readable depth marked.

    Args:
        selection: the description :func:`select_depth` returned.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.
    """
    from inspectnet.core.figures import new_figure, save_figure

    rows = [r for r in selection["curve"] if r["depth"] is not None]
    fig = new_figure(figsize=(6.0, 3.2))
    ax = fig.subplots()
    depths = [r["depth"] for r in rows]
    ax.plot(depths, [100 * r["val_fidelity"] for r in rows], marker="o", color="tab:blue")
    ax.axhline(100 * (selection["best_val_fidelity"] - selection["margin"]), color="tab:blue", ls=":", lw=1,
               label=f"best − {100 * selection['margin']:.0f} points")
    ax.axvline(selection["max_depth"], color="tab:green", ls="--", lw=1, label=f"readable tree: depth "
                                                                               f"{selection['max_depth']}")
    ax.set_xlabel("tree depth")
    ax.set_ylabel(f"fidelity on held-out {selection['n_val']} (%)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(depths, [r["leaves"] for r in rows], marker="s", color="tab:orange", alpha=0.7)
    twin.set_ylabel("rules (leaves)", color="tab:orange")
    unlimited = selection["curve"][-1]
    ax.set_title(f"size–fidelity trade-off (no depth limit: depth {unlimited['tree_depth']}, {unlimited['leaves']} "
                 f"rules, {100 * unlimited['val_fidelity']:.1f} %)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, dpi=100, bbox_inches="tight")
