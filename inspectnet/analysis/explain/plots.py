"""The card's explanation pictures.

Mean deletion/insertion curves, the sanity-check cascade, example maps, the pointing game.

>>> plot_curves({"evidence": curves}, "out/curves.png")      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inspectnet.core.figures import new_figure, save_figure
from inspectnet.runtime.overlays import evidence_overlay

if TYPE_CHECKING:
    from inspectnet.analysis.explain.faithfulness import Curves


def plot_curves(curves: dict[str, Curves], path: str | Path) -> Path:
    """Deletion (left) and insertion (right) curves, mean probability of the target class per method.

    Args:
        curves: label -> the method's :class:`~inspectnet.analysis.explain.faithfulness.Curves`.
        path: the PNG to write.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> from inspectnet.analysis.explain.faithfulness import Curves
        >>> rows = np.array([[1.0, 0.5, 0.2]])
        >>> c = Curves([0.0, 0.5, 1.0], rows, rows[:, ::-1], [0.5], rows[:, :1], rows[:, :1], ["ok"], 6, "blur")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_curves({"evidence": c}, Path(d) / "curves.png").name
        'curves.png'
    """
    fig = new_figure(figsize=(8.4, 3.2))
    axes = fig.subplots(1, 2)
    for label, c in curves.items():
        dashed = "random" in label
        for ax, rows in zip(axes, (c.deletion, c.insertion)):
            ok = np.isfinite(rows).all(1)
            if ok.any():
                ax.plot(c.fractions, rows[ok].mean(0), label=label, linestyle="--" if dashed else "-",
                        color="grey" if dashed else None)
    for ax, title in zip(axes, (f"deletion ({_baseline(curves)} baseline): lower is better",
                                "insertion: higher is better")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("fraction of pixels, most relevant first", fontsize=8)
        ax.set_ylabel("probability of the target class", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _baseline(curves: dict[str, Curves]) -> str:
    return next(iter(curves.values())).baseline if curves else ""


def plot_sanity(results: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Mean Spearman ρ (trained vs randomised maps) along the cascade, one line per method and form.

    Args:
        results: form -> ``{"threshold", "blocks", "methods": {method: {"spearman": [...]}}}`` (as
            :func:`~inspectnet.analysis.explain.sanity.cascading_randomisation` gives, summarised).
        path: the PNG to write.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> res = {"threshold": 0.5, "blocks": ["fc", "layer4"], "methods": {"gradcam": {"spearman": [0.9, 0.1]}}}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_sanity({"full": res}, Path(d) / "sanity.png").name
        'sanity.png'
    """
    fig = new_figure(figsize=(6.4, 3.4))
    ax = fig.subplots()
    threshold = None
    for form, res in results.items():
        threshold = res["threshold"]
        for method, m in res["methods"].items():
            ax.plot(range(1, len(m["spearman"]) + 1), m["spearman"], marker="o", markersize=3,
                    label=f"{method} ({form})", linestyle="--" if method == "random" else "-")
        ticks = res["blocks"]
    if threshold is not None:
        ax.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(-threshold, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(1, len(ticks) + 1), [f"…{t}" for t in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman ρ with the trained model's maps", fontsize=8)
    ax.set_xlabel("randomised from the head down to", fontsize=8)
    ax.set_title("cascading parameter randomisation: a faithful method drops toward 0", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def plot_examples(views: list[np.ndarray], maps: dict[str, np.ndarray], titles: list[str], path: str | Path) -> Path:
    """One row per image: the image, then each method's map over it.

    Signed evidence is shown red/blue, other maps red by relevance.

    Args:
        views: per image, the (H, W, 3) picture the model saw.
        maps: method -> per image its (h, w) map.
        titles: per image, its title.
        path: the PNG to write.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> views, maps = [np.zeros((8, 8, 3), np.uint8)], {"evidence": [np.random.rand(2, 2) - 0.5]}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_examples(views, maps, ["a"], Path(d) / "examples.png").name
        'examples.png'
    """
    cols = ["input", *maps]
    fig = new_figure(figsize=(1.6 * len(cols), 1.7 * len(views) + 0.2))
    axes = fig.subplots(len(views), len(cols), squeeze=False)
    for r, view in enumerate(views):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.axis("off")
            picture = view if name == "input" else evidence_overlay(view, _signed(name, maps[name][r]))
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(_plain(titles[r]) if name == "input" else name, fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


def _plain(text: str) -> str:
    """A title that matplotlib shows as written: ``$`` would start mathtext (and fail on odd file names)."""
    return str(text).replace("$", r"\$")


def _signed(name: str, m: np.ndarray) -> np.ndarray:
    """Evidence keeps its sign; other maps are relevance ≥ 0 (shifted so their minimum shows no colour)."""
    m = np.asarray(m, dtype=np.float64)
    return m if "evidence" in name or not np.isfinite(m).all() else m - m.min()


def plot_localisation(scores: dict[str, tuple[float, float | None]], chance: float, path: str | Path) -> Path:
    """Energy-based pointing game per method and form (bars, ± one standard error), with the chance level.

    The chance level (the objects' share of the image: what a map spread evenly scores) is a dotted line.

    Args:
        scores: label (``"method (form)"``) -> (mean proportion, its standard error or None).
        chance: the mean share of the image inside the object masks.
        path: the PNG to write.

    Returns:
        ``path``.

    Examples:
        >>> import tempfile
        >>> scores = {"evidence (full)": (0.6, 0.05), "random 4x4 (full)": (0.2, None)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     plot_localisation(scores, 0.2, Path(d) / "pointing.png").name
        'pointing.png'
    """
    labels = list(scores)
    fig = new_figure(figsize=(7.2, 1.1 + 0.28 * len(labels)))
    ax = fig.subplots()
    means = [scores[k][0] for k in labels]
    errors = [scores[k][1] or 0.0 for k in labels]
    ax.barh(range(len(labels)), means, xerr=errors, color=["grey" if "random" in k else "tab:red" for k in labels])
    ax.axvline(chance, color="black", linewidth=0.8, linestyle=":", label="a map spread evenly (objects' share)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(labels)), [_plain(k) for k in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the map's positive energy inside the objects", fontsize=8)
    ax.set_title("energy-based pointing game: higher is better", fontsize=9)
    ax.tick_params(labelsize=7)
    return save_figure(fig, path, dpi=90, bbox_inches="tight")  # long method names: fit the labels, not the axes
