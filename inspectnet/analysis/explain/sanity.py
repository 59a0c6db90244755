"""Sanity checks for saliency maps (Adebayo et al. 2018).

Cascading model-parameter randomisation and data randomisation.

A copy of the model is randomised block by block from the head down (each block's layers re-drawn
with their own initialisers, seeded); after each step every method's maps are recomputed for the
*same* images and target classes and compared with the trained model's maps by the Spearman rank
correlation, per image, averaged. An explanation that reflects what the model learned must change:
a method **passes** when the mean |ρ| after the whole cascade is below ``threshold`` (0.5). A map
independent of the model — the random control — keeps ρ = 1 and fails, as it should.

Ties (e.g. Grad-CAM zeros) get average ranks. Where exactly one of the two maps is constant there is
no shared ranking and ρ counts as 0 (the map changed completely); pairs of constant maps (nothing to
rank, e.g. a 1×1 map) and maps with NaN are left out and counted; a method left with no pair is
neither passed nor failed (``passes`` None).

*Data randomisation* compares the maps of a model trained on the true labels with those of the same
architecture trained by the same recipe on a label-shuffled copy of its data
(:func:`~inspectnet.data.subsets.shuffle_labels`), for the same images and target classes; the
verdict is read the same way (mean |ρ| below ``threshold``).

>>> res = cascading_randomisation(zm, x, targets, ["gradcam", "evidence"], indices=range(len(x)))   # doctest: +SKIP
>>> res["methods"]["evidence"]["passes"]                                                           # doctest: +SKIP
True
>>> data_randomisation(zm, shuffled_zm, x, targets, ["evidence"], indices=range(len(x)))["methods"]  # doctest: +SKIP
{'evidence': {'spearman': 0.08, 'abs_spearman': 0.31, 'passes': True, 'skipped': 0}}
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.explain.methods import MethodConfig, explanation_maps
from inspectnet.core.errors import InspectnetError

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

THRESHOLD = 0.5


def cascade_blocks(model: nn.Module, head_name: str) -> list[str]:
    """The blocks randomised in turn, from the head down.

    The head, then the model's top-level children with parameters in reverse order, stages
    (Sequential / ModuleList) split into their own children.

    Args:
        model: the classifier.
        head_name: the dotted name of its head.

    Returns:
        The block names, head first.

    Examples:
        >>> from torchvision.models import resnet18
        >>> cascade_blocks(resnet18(), "fc")[:4]
        ['fc', 'layer4.1', 'layer4.0', 'layer3.1']
    """
    blocks: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            blocks += [f"{name}.{sub}" for sub, m in child.named_children() if _has_params(m)]
        elif _has_params(child):
            blocks.append(name)
    blocks = [b for b in blocks if b != head_name and not head_name.startswith(b + ".")]
    return [head_name, *reversed(blocks)]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomise(module: nn.Module, seed: int) -> None:
    """Re-initialise every layer of ``module`` that holds parameters of its own and has an initialiser, seeded.

    The initialiser is the layer's ``reset_parameters``; a wrapper's, whose parameters are its children's, is not
    called (the children re-initialise themselves). Batch norms also reset their running statistics. The global
    random state is left untouched.

    Args:
        module: the block to randomise, in place.
        seed: seeds the new weights.

    Examples:
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> randomise(a, 0); randomise(b, 0)
        >>> bool(torch.equal(a.weight, b.weight))
        True
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (as scipy.stats.rankdata).

    Args:
        values: (n,) values.

    Returns:
        The (n,) float64 ranks.

    Examples:
        >>> average_ranks(np.array([3.0, 1.0, 3.0])).tolist()
        [2.5, 1.0, 2.5]
    """
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two maps (flattened); 0 when exactly one is constant, NaN when both are or with NaN.

    Args:
        a: a map.
        b: a map with as many values.

    Returns:
        ρ of their average ranks.

    Examples:
        >>> spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0]))
        0.5
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    flat_a, flat_b = a.max() == a.min(), b.max() == b.min()
    if flat_a and flat_b:
        return float("nan")
    if flat_a or flat_b:
        return 0.0
    return float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])


def cascading_randomisation(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor, methods: Sequence[str], *,
                            indices: Sequence[int], config: MethodConfig = MethodConfig(),
                            max_steps: int | None = None, seed: int = 0,
                            threshold: float = THRESHOLD) -> dict[str, Any]:
    """Randomise ``zm`` (a copy) from the head down; per method, the mean Spearman ρ with its trained maps.

    Args:
        zm: the model (left unchanged).
        x: (B, C, H, W) model inputs.
        targets: (B,) the class each map explains.
        methods: the explanation methods (see :func:`~inspectnet.analysis.explain.methods.explanation_maps`).
        indices: the images' positions in their dataset (they seed the random control).
        config: the methods' parameters.
        max_steps: keep that many cascade steps, evenly spread, always the first (head) and the last (whole
            model); None keeps every block.
        seed: seeds the re-initialisation (block i with seed + i).
        threshold: a method passes when its final mean |ρ| is below this.

    Returns:
        ``{"blocks", "steps", "total_blocks", "threshold", "images", "methods": {name: {"spearman": [per step],
        "abs_spearman_final", "passes", "skipped"}}}``.

    Raises:
        InspectnetError: no methods, or ``max_steps`` < 2.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=2, input_size=64)
        >>> res = cascading_randomisation(zm, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), ["random"],
        ...                               indices=[0, 1], max_steps=2)
        >>> res["blocks"], res["methods"]["random"]["spearman"], res["methods"]["random"]["passes"]
        (['fc', 'conv1'], [1.0, 1.0], False)
    """
    if not methods:
        raise InspectnetError("the sanity check needs at least one explanation method")
    blocks = cascade_blocks(zm.model, zm.head_name)
    steps = _spread(len(blocks), max_steps)
    trained = {m: explanation_maps(m, zm, x, targets, indices=indices, config=config).numpy() for m in methods}
    copy_zm = dataclasses.replace(zm, model=copy.deepcopy(zm.model))
    curves: dict[str, list[float]] = {m: [] for m in methods}
    abs_final: dict[str, float] = {}
    skipped: dict[str, int] = {}
    done = 0
    for step in steps:
        for i in range(done, step + 1):
            randomise(copy_zm.model.get_submodule(blocks[i]), seed + i)
        done = step + 1
        for m in methods:
            found = _similarity(trained[m], explanation_maps(m, copy_zm, x, targets, indices=indices, config=config))
            curves[m].append(found["spearman"])
            if step == steps[-1]:
                skipped[m], abs_final[m] = found["skipped"], found["abs_spearman"]
    return {"blocks": [blocks[s] for s in steps], "steps": [s + 1 for s in steps], "total_blocks": len(blocks),
            "threshold": threshold, "images": len(x),
            "methods": {m: {"spearman": curves[m], "abs_spearman_final": abs_final[m],
                            "passes": _verdict(abs_final[m], threshold), "skipped": skipped[m]} for m in methods}}


def data_randomisation(real: ZooModel, shuffled: ZooModel, x: torch.Tensor, targets: torch.Tensor,
                       methods: Sequence[str], *, indices: Sequence[int], config: MethodConfig = MethodConfig(),
                       threshold: float = THRESHOLD) -> dict[str, Any]:
    """Per method, the Spearman ρ between ``real``'s maps and ``shuffled``'s, per image, averaged.

    Args:
        real: the model trained on true labels.
        shuffled: the same architecture trained on shuffled labels.
        x: (B, C, H, W) model inputs.
        targets: (B,) the class each map explains.
        methods: the explanation methods.
        indices: the images' positions in their dataset (they seed the random control).
        config: the methods' parameters.
        threshold: a method passes when its mean |ρ| is below this.

    Returns:
        ``{"threshold", "images", "methods": {name: {"spearman", "abs_spearman", "passes", "skipped"}}}``.

    Raises:
        InspectnetError: no methods, or the same model given twice.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> a, b = (load_model("resnet18", num_classes=2, input_size=64) for _ in range(2))
        >>> res = data_randomisation(a, b, torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), ["random"], indices=[0, 1])
        >>> res["methods"]["random"]["spearman"], res["methods"]["random"]["passes"]
        (1.0, False)
    """
    if not methods:
        raise InspectnetError("the sanity check needs at least one explanation method")
    if real.model is shuffled.model:
        raise InspectnetError("the data-randomisation check needs two models (trained on true and on shuffled "
                              "labels); got the same model twice")
    found = {m: _similarity(explanation_maps(m, real, x, targets, indices=indices, config=config).numpy(),
                            explanation_maps(m, shuffled, x, targets, indices=indices, config=config))
             for m in methods}
    return {"threshold": threshold, "images": len(x),
            "methods": {m: {**f, "passes": _verdict(f["abs_spearman"], threshold)} for m, f in found.items()}}


def _similarity(reference: np.ndarray, maps: torch.Tensor) -> dict[str, Any]:
    """Mean ρ and mean |ρ| of paired maps over the images that can be ranked, and how many could not."""
    rho = np.array([spearman(a, b) for a, b in zip(reference, maps.numpy())])
    ok = np.isfinite(rho)
    return {"spearman": float(rho[ok].mean()) if ok.any() else float("nan"),
            "abs_spearman": float(np.abs(rho[ok]).mean()) if ok.any() else float("nan"), "skipped": int((~ok).sum())}


def _verdict(abs_rho: float, threshold: float) -> bool | None:
    """Passes when the maps changed (mean |ρ| below the threshold); None when nothing could be ranked."""
    return bool(abs_rho < threshold) if np.isfinite(abs_rho) else None


def _spread(n: int, k: int | None) -> list[int]:
    """``k`` indices of 0..n-1, evenly spread, first and last included (all when k is None or ≥ n)."""
    if k is None or k >= n:
        return list(range(n))
    if k < 2:
        raise InspectnetError(f"the sanity check needs at least 2 cascade steps (head and whole model), got {k}")
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})
