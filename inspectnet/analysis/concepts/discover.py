"""Concept discovery on a layer's map cells: fit, measure, rank by class importance, and name.

Two streaming passes over the data, the maps of each batch dropped with it (memory flat in the
number of images):

1. **fit** (``epochs`` times): every map cell (B·h·w rows of C channels) of the fitting images feeds
   the factorisers of ``seeds`` runs (seed, seed + 1, ...), NMF or TopK autoencoder
   (:mod:`inspectnet.analysis.concepts.factor`);
2. **measure**: every cell is encoded by each run; held-out images (every ``holdout_every``-th)
   give each run's reconstruction R² = 1 − Σ‖A − Â‖² / Σ‖A − Ā‖², its L0 (mean non-zero codes per cell)
   and its dead codes (never non-zero on any image). The first run is the reported one: its class
   importance (exact when the head pools the layer, :mod:`~inspectnet.analysis.concepts.importance`;
   else gradient × activation with deletion faithfulness on the first ``check_images`` images), its top
   images, class purity on labelled data, and names by mask IoU where the data has concept masks
   (with the same count for draws of random directions as the baseline).

Stability: the runs' bases matched by cosine with the Hungarian algorithm, share matched ≥ 0.8
(:mod:`~inspectnet.analysis.concepts.matching`).

>>> from inspectnet.models.zoo import load_model; from inspectnet.data import load_data
>>> zm = load_model("resnet18", num_classes=2, input_size=64)
>>> c = discover_concepts(zm, load_data("shapes?n=24"), "layer4", k=4, epochs=1)
>>> len(c.concepts), c.importance["kind"], c.runs[0]["seed"]
(4, 'exact', 0)
"""

import dataclasses
import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.concepts import DEFAULT_ACTIVE, DEFAULT_K, DEFAULT_SEEDS, METHODS, NAME_QUANTILES, naming
from inspectnet.analysis.concepts.factor import make_factoriser
from inspectnet.analysis.concepts.importance import ExactImportance, deletion_check, faithfulness
from inspectnet.analysis.concepts.matching import stability
from inspectnet.analysis.concepts.stream import CACHE_BYTES, MapStream, as_source
from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.data.concepts import ConceptDataset
from inspectnet.data.datasets import ImageDataset
from inspectnet.models.zoo import ZooModel


@dataclasses.dataclass(frozen=True)
class Concepts(Result):
    """Concepts discovered in one layer.

    ``runs``: per seed, R² on held-out cells, L0 and dead codes; ``stability``: see
    :func:`~inspectnet.analysis.concepts.matching.stability`; ``importance``: exact per-class split or
    the estimate with its faithfulness; ``concepts``: per concept its top images, importance, name by
    mask IoU (or None), purest classes (or None); ``naming``: labelled concepts recovered by the
    concepts and by random directions. ``basis`` (K, C), ``centre`` (C,) and the fitted ``factoriser``
    (whose ``encode`` gives the codes of new cells) are kept out of the JSON.

    Examples:
        >>> from inspectnet.models.zoo import load_model; from inspectnet.data import load_data
        >>> zm = load_model("resnet18", num_classes=2, input_size=64)
        >>> c = discover_concepts(zm, load_data("shapes?n=24"), "layer4", k=4, epochs=1)  # doctest: +SKIP
        >>> sorted(c.to_dict())[:3], c.basis.shape  # doctest: +SKIP
        (['channels', 'concepts', 'data'], (4, 512))
    """

    model: str
    fingerprint: str
    data: str
    layer: str
    method: str
    k: int
    seeds: list[int]
    num_images: int
    heldout_images: int
    channels: int
    map_size: list[int]
    runs: list[dict[str, Any]]
    stability: dict[str, Any]
    importance: dict[str, Any]
    concepts: list[dict[str, Any]]
    naming: dict[str, Any] | None = None
    basis: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    centre: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    factoriser: Any = dataclasses.field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The discovery as plain JSON fields.

        Returns:
            Every field but ``basis``, ``centre`` and ``factoriser`` (the arrays are saved to an ``.npz``).
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _ARRAYS}


_ARRAYS = ("basis", "centre", "factoriser")   # kept out of the JSON (the arrays go to an .npz)


class _RunStats:
    """One run's held-out reconstruction sums, L0 and per-code activity."""

    def __init__(self, k: int, channels: int):
        self.res = 0.0
        self.sum, self.sq = torch.zeros(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
        self.cells, self.nonzero, self.active = 0, 0.0, torch.zeros(k, dtype=torch.bool)

    def add(self, cells: torch.Tensor, codes: torch.Tensor, run, heldout: torch.Tensor) -> None:
        self.active |= (codes > 0).any(0)
        u = codes[heldout]
        a, r = cells[heldout].double(), (u @ run.basis + run.centre).double()  # rebuilt where it is measured only
        self.res += float(((a - r) ** 2).sum())
        self.sum += a.sum(0)
        self.sq += (a ** 2).sum(0)
        self.cells += len(a)
        self.nonzero += float((u > 0).sum())

    def summary(self, seed: int) -> dict[str, Any]:
        if self.cells == 0:
            raise InspectnetError("no held-out cells: use more images or a smaller holdout_every")
        total = float((self.sq - self.sum ** 2 / self.cells).sum())
        return {"seed": seed, "r2": 1.0 - self.res / total if total > 0 else float("nan"),
                "l0": self.nonzero / self.cells, "dead": int((~self.active).sum()), "heldout_cells": self.cells}


def as_cells(maps: torch.Tensor) -> torch.Tensor:
    """Map cells as rows: (B, C, h, w) -> (B·h·w, C), image-major.

    Args:
        maps: (B, C, h, w) maps.

    Returns:
        The (B·h·w, C) cells.

    Examples:
        >>> as_cells(torch.arange(8.).reshape(1, 2, 2, 2))[:, 0].tolist()
        [0.0, 1.0, 2.0, 3.0]
    """
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


def as_maps(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Rows back to maps: (B·h·w, K) -> (B, K, h, w), the inverse of :func:`as_cells`.

    Args:
        rows: (B·h·w, K) per-cell values, image-major.
        shape: the (B, C, h, w) shape of the maps the rows came from (C is ignored).

    Returns:
        The (B, K, h, w) maps.

    Examples:
        >>> maps = torch.rand(2, 3, 2, 2)
        >>> bool(torch.equal(as_maps(as_cells(maps), maps.shape), maps))
        True
    """
    b, _, h, w = shape
    return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def discover_concepts(model: ZooModel | nn.Module, data: ImageDataset | ConceptDataset, layer: str,
                      method: str = "nmf", k: int = DEFAULT_K, seed: int = 0, *, seeds: int = DEFAULT_SEEDS,
                      active: int = DEFAULT_ACTIVE, epochs: int = 2, holdout_every: int = 5, batch_size: int = 32,
                      limit: int | None = None, data_config: dict[str, Any] | None = None, device: str = "cpu",
                      top_images: int = 8, check_images: int = 32, name_quantiles: tuple[float, ...] = NAME_QUANTILES,
                      run_seeds: list[int] | None = None, cache_bytes: int = CACHE_BYTES,
                      random_draws: int = 5) -> Concepts:
    """Discover ``k`` concepts in ``layer``'s map cells over ``data``.

    The data is streamed twice (fit, then measure); see the module doc for the passes.

    Args:
        model: a :class:`ZooModel` (exact importance needs its head) or a plain module with ``data_config``.
        data: labelled image data (``load_data``) or concept data (``load_concepts``).
        layer: the layer whose spatial maps are factorised (a name or alias such as ``last_stage``).
        method: ``"nmf"`` (non-negative maps only) or ``"sae"`` (TopK sparse autoencoder).
        k: number of concepts.
        seed: seed of the reported run; the stability runs use seed + 1, seed + 2, ...
        seeds: runs fitted for stability (≥ 2; 1 skips stability).
        active: codes kept per cell by the autoencoder.
        epochs: fitting passes over the data.
        holdout_every: every n-th image is held out of fitting and measures R² and L0.
        batch_size: images per forward pass.
        limit: use only the first ``limit`` images.
        data_config: preprocessing of a plain module.
        device: where the model runs.
        top_images: images kept per concept.
        check_images: images the gradient estimate and its deletion check use (layers the head does not pool).
        name_quantiles: top fractions tried as a concept map's mask for names.
        run_seeds: explicit seeds of the runs (overrides ``seed`` and ``seeds``; equal seeds give equal runs).
        random_draws: draws of ``k`` random directions named the same way, the baseline of the names.
        cache_bytes: maps up to this size are kept after the first pass and replayed (0: every pass streams).

    Returns:
        The :class:`Concepts`.

    Raises:
        InspectnetError: an unknown ``method``, ``k`` < 1, ``active`` outside 1..k, ``epochs`` < 1 or
            ``holdout_every`` < 2, or no images left to fit on.

    Examples:
        >>> discover_concepts(None, None, "layer4", method="pca")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: unknown concept method 'pca'; expected one of nmf, sae

        A real discovery (as in the module doc):

        >>> c = discover_concepts(zm, load_data("shapes?n=24"), "layer4", k=4, epochs=1)  # doctest: +SKIP
    """
    if method not in METHODS:
        raise InspectnetError(f"unknown concept method {method!r}; expected one of {', '.join(METHODS)}")
    if k < 1:
        raise InspectnetError(f"the number of concepts k must be at least 1, got {k}")
    if method == "sae" and not 1 <= active <= k:
        raise InspectnetError(f"active codes per cell must be within 1..{k}, got {active}")
    if epochs < 1 or holdout_every < 2:
        raise InspectnetError(f"epochs must be ≥ 1 and holdout_every ≥ 2, got {epochs} and {holdout_every}")
    run_seeds = list(run_seeds) if run_seeds is not None else [seed + i for i in range(max(1, seeds))]
    source = as_source(data, limit)
    stream = MapStream(model, source, layer, data_config=data_config, batch_size=batch_size, device=device,
                       cache_bytes=cache_bytes)
    runs = _fit(stream, method, k, active, run_seeds, epochs, holdout_every)
    measured = _measure(stream, runs, holdout_every, top_images, check_images, name_quantiles, random_draws)
    main = runs[0]
    concepts = _concept_entries(k, measured)
    return Concepts(model=stream.name, fingerprint=stream.fingerprint(), data=source.spec, layer=stream.layer,
                    method=method, k=k, seeds=run_seeds, num_images=source.size,
                    heldout_images=len(range(0, source.size, holdout_every)), channels=int(main.basis.shape[1]),
                    map_size=measured["map_size"], runs=[s.summary(sd) for s, sd in zip(measured["stats"], run_seeds)],
                    stability=stability([r.basis for r in runs]) if len(runs) > 1 else {},
                    importance=measured["importance"], concepts=concepts, naming=measured.get("naming"),
                    basis=main.basis.numpy(), centre=main.centre.numpy(), factoriser=main)


def _fit(stream: MapStream, method: str, k: int, active: int, run_seeds: list[int], epochs: int, every: int) -> list:
    runs: list = []
    for _ in range(epochs):
        for batch in stream.batches():
            keep = batch.index % every != 0
            if not keep.any():
                continue
            cells = as_cells(batch.maps[keep])
            if not runs:
                runs = [make_factoriser(method, cells.shape[1], k, s, active=active, layer=stream.layer)
                        for s in run_seeds]
            for run in runs:
                run.partial_fit(cells)
    if not runs:
        raise InspectnetError(f"no images to fit on: {stream.source.size} images, every {every}th held out")
    return runs


def _measure(stream: MapStream, runs: list, every: int, top: int, check_images: int,
             quantiles: tuple[float, ...], random_draws: int) -> dict[str, Any]:
    """The measuring pass: every run's statistics, and the first run's importance, top images, purity, names."""
    main, source = runs[0], stream.source
    basis, centre = main.basis, main.centre
    k, channels = basis.shape
    stats = [_RunStats(k, channels) for _ in runs]
    batches = stream.batches()
    first = next(batches)
    evidence = stream.pooled_evidence(first)
    exact = ExactImportance(evidence, basis, centre) if evidence is not None else None
    tops, checks = naming.TopImages(k, top), []
    purity = naming.ClassPurity(k, len(source.class_names)) if source.labels is not None else None
    names = None
    if source.masks is not None:
        names = naming.MaskNames(source.size, tuple(source.masks(0).shape[1:]), source.concepts, quantiles)
        directions = [naming.random_directions(channels, k, seed=12345 + d) for d in range(random_draws)]
    map_size = None
    for batch in itertools.chain([first], batches):
        cells = as_cells(batch.maps)
        heldout = (batch.index % every == 0).repeat_interleave(batch.maps.shape[2] * batch.maps.shape[3])
        for run, st in zip(runs, stats):
            codes = run.encode(cells)
            st.add(cells, codes, run, heldout)
            if run is main:
                main_codes = as_maps(codes, batch.maps.shape)
        map_size = list(batch.maps.shape[2:])
        tops.add(main_codes, batch.index)
        if exact is not None:
            exact.add(batch.maps, main_codes, batch.logits)
        elif sum(len(c["drop"]) for c in checks) < check_images:
            x = stream.inputs(batch.index[:check_images].tolist())
            checks.append(deletion_check(stream.net, stream.layer, x, main_codes[:check_images], basis))
        if purity is not None:
            purity.add(main_codes, source.labels[batch.index.numpy()])
        if names is not None:
            masks = torch.from_numpy(np.stack([source.masks(i) for i in batch.index.tolist()]))
            families = {f"random{d}": as_maps(cells @ r.T, batch.maps.shape) for d, r in enumerate(directions)}
            names.add({"concepts": main_codes, **families}, masks, batch.index)
    out: dict[str, Any] = {"stats": stats, "map_size": map_size, "top_images": tops.lists()}
    if exact is not None:
        out["importance"] = exact.summary(stream.class_names)
    else:
        per_concept = np.concatenate([c["estimate"] for c in checks]).mean(0)
        out["importance"] = {"kind": "gradient_x_activation", "per_concept": [float(v) for v in per_concept],
                             "faithfulness": faithfulness(checks)}
    if purity is not None:
        out["purity"] = purity.summary(source.class_names)
    if names is not None:
        best = names.best()
        out["names"] = naming.names_from_iou(best["concepts"], source.concepts)
        out["naming"] = naming.recovery_summary(best, source.concepts)
    return out


def _concept_entries(k: int, measured: dict[str, Any]) -> list[dict[str, Any]]:
    entries = []
    for m in range(k):
        entry = {"concept": m, "top_images": measured["top_images"][m],
                 "importance": measured["importance"]["per_concept"][m],
                 "name": measured["names"][m] if "names" in measured else None,
                 "purest_classes": measured["purity"][m]["classes"] if "purity" in measured else None}
        entries.append(entry)
    return entries


def concepts_summary(result: Concepts, classes: int = 8) -> dict[str, Any]:
    """The discovery's headline numbers as plain JSON (what a model card shows).

    Args:
        result: the discovery.
        classes: the predicted classes kept (most images first).

    Returns:
        ``{"layer", "method", "k", "images", "r2", "l0", "dead", "stability", "importance", "closure_error",
        "classes", "concepts", "naming"}``.

    Examples:
        >>> concepts_summary(discover_concepts(zm, data, "layer4", k=4))["k"]  # doctest: +SKIP
        4
    """
    run = result.runs[0]
    cosines = result.stability.get("matched_cosine") or [None] * result.k
    rows = sorted(result.importance.get("classes", []), key=lambda r: -r["images"])[:classes]
    return {"layer": result.layer, "method": result.method, "k": result.k, "images": result.num_images,
            "r2": run["r2"], "l0": run["l0"], "dead": run["dead"], "stability": result.stability.get("share"),
            "importance": result.importance["kind"], "closure_error": result.importance.get("max_closure_error"),
            "classes": [{k: r[k] for k in ("name", "images", "top_concepts", "top_share", "concepts_share")}
                        for r in rows],
            "concepts": [{"concept": e["concept"], "importance": e["importance"], "matched_cosine": cos,
                          "name": e["name"], "purest": (e["purest_classes"] or [None])[0]}
                         for e, cos in zip(result.concepts, cosines)],
            "naming": result.naming}
