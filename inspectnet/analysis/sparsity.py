"""Activity-sparsity metrics of a layer's activation matrix A (N images × K filters), EBP Table 1.

The EBP paper (Kasioumis et al., 2021, §4.1) names its columns but not their formulas; it cites
Hoyer (2004) and Willmore & Tolhurst (2001). The definitions used here, all on r = |A| (EBP Eq. 1
activations are already non-negative), with "lifetime" = one filter across the N images and
"population" = one image across the K filters:

* **Hoyer** (Hoyer 2004, JMLR 5:1457): H(x) = (√n − ‖x‖₁/‖x‖₂) / (√n − 1), in [0, 1], 1 = a single
  non-zero entry. Computed per image over its filters (population) and averaged over images.
* **Lifetime kurtosis** (Willmore & Tolhurst 2001, Network 12:255): excess kurtosis
  K = (1/n) Σ ((r_i − r̄)/σ)⁴ − 3 (σ the population s.d.) of each filter over images, averaged over
  filters. Equals ``scipy.stats.kurtosis(A, axis=0, fisher=True, bias=True)``.
* **Population kurtosis**: the same per image over filters, averaged over images.
* **Treves–Rolls** (Treves & Rolls 1991; Rolls & Tovee 1995) activity ratio a = (Σ r_i/n)² / (Σ r_i²/n),
  reported as the sparseness S = (1 − a) / (1 − 1/n) (the Vinje & Gallant 2000 normalisation, in
  [0, 1], 1 = sparsest), so that larger means sparser as in the paper's table. *T-R popul.*: per
  image over filters, averaged; *T-R life.*: per filter over images, averaged.
* **Activity sparseness** (Willmore & Tolhurst 2001 distinguish lifetime, population and the pooled
  "activity" distribution of all responses): the same normalised Treves–Rolls sparseness on all
  N·K responses pooled.

Degenerate vectors are excluded from each average and counted in ``excluded``: all-zero vectors
(Hoyer and Treves–Rolls undefined, 0/0) and constant vectors for kurtosis (σ = 0). A constant non-zero
vector is well defined for Hoyer and Treves–Rolls (sparseness 0).

>>> import numpy as np
>>> m = sparsity_metrics(np.array([[1., 0., 0., 0.], [0., 2., 0., 0.]]))
>>> m.hoyer, m.treves_rolls_population
(1.0, 1.0)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.core.tables import markdown_table

if TYPE_CHECKING:
    from inspectnet.probe.record import ProbeRecord

METRICS = ("hoyer", "lifetime_kurtosis", "population_kurtosis", "treves_rolls_population",
           "treves_rolls_lifetime", "activity_sparseness")
LABELS = {"hoyer": "Hoyer Spars.", "lifetime_kurtosis": "Life. Kurt.", "population_kurtosis": "Popul. Kurt.",
          "treves_rolls_population": "T-R Popul.", "treves_rolls_lifetime": "T-R Life.",
          "activity_sparseness": "Activ. Spars."}


@dataclasses.dataclass(frozen=True)
class SparsityMetrics(Result):
    """The six metrics (``None`` when no vector was defined) and how many vectors each excluded."""

    hoyer: float | None
    lifetime_kurtosis: float | None
    population_kurtosis: float | None
    treves_rolls_population: float | None
    treves_rolls_lifetime: float | None
    activity_sparseness: float | None
    num_samples: int
    num_filters: int
    excluded: dict[str, int]
    layer: str = ""


def hoyer(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hoyer sparseness of each vector along ``axis`` (NaN for all-zero vectors or length 1).

    The one Hoyer of inspectnet: the card's sparsity and the plugins' training logs
    (:class:`inspectnet.plugins.HoyerLog`) both use it, so they agree also when units are silent.

    Args:
        x: the vectors.
        axis: the axis along which each vector lies.

    Returns:
        The sparseness in [0, 1] per vector.

    Examples:
        >>> hoyer(np.array([[3., 0., 0.], [1., 1., 1.]])).tolist()
        [1.0, 0.0]
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    n = x.shape[axis]
    l1, l2 = x.sum(axis=axis), np.sqrt((x * x).sum(axis=axis))
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (np.sqrt(n) - l1 / l2) / (np.sqrt(n) - 1.0)
    # clip: rounding leaves -1e-16 on flat vectors; the measure lies in [0, 1] by construction
    return np.where((l2 > 0) & (n > 1), np.clip(h, 0.0, 1.0), np.nan)


def excess_kurtosis(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """(1/n) Σ ((x − x̄)/σ)⁴ − 3 along ``axis``; NaN where σ = 0 (constant vectors).

    Args:
        x: the vectors.
        axis: the axis along which each vector lies.

    Returns:
        The excess kurtosis per vector.

    Examples:
        >>> round(float(excess_kurtosis(np.array([0., 0., 0., 1.]))), 12)
        -0.666666666667
    """
    x = np.asarray(x, dtype=np.float64)
    d = x - x.mean(axis=axis, keepdims=True)
    m2, m4 = (d ** 2).mean(axis=axis), (d ** 4).mean(axis=axis)
    # relative tolerance: float rounding leaves tiny m2 > 0 on constant vectors
    scale = np.maximum(np.abs(x).max(axis=axis), 1e-300) if x.size else 1.0
    const = m2 <= (1e-12 * scale) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        k = m4 / (m2 * m2) - 3.0
    return np.where(const, np.nan, k)


def treves_rolls(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Normalised Treves–Rolls sparseness (1 − a)/(1 − 1/n), a = (Σx/n)²/(Σx²/n); NaN for zero vectors.

    Args:
        x: the vectors.
        axis: the axis along which each vector lies.

    Returns:
        The sparseness in [0, 1] per vector.

    Examples:
        >>> treves_rolls(np.array([[1., 0., 0., 0.], [1., 1., 1., 1.]])).tolist()
        [1.0, 0.0]
    """
    x = np.abs(np.asarray(x, dtype=np.float64))
    n = x.shape[axis]
    mean, mean_sq = x.mean(axis=axis), (x * x).mean(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (1.0 - mean * mean / mean_sq) / (1.0 - 1.0 / n)
    return np.where((mean_sq > 0) & (n > 1), np.clip(s, 0.0, 1.0), np.nan)


def sparsity_metrics(activations: np.ndarray, *, layer: str = "") -> SparsityMetrics:
    """All six metrics of an (N images × K filters) activation matrix.

    Runs in float64 on the whole matrix (N·K values; a few MB for a probed layer).

    Args:
        activations: the (N, K) matrix.
        layer: the layer's name, kept in the result.

    Returns:
        The metrics.

    Raises:
        InspectnetError: the matrix is not 2-D with at least 2 samples and 2 filters, or holds NaN or infinity.

    Examples:
        >>> m = sparsity_metrics(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        >>> m.num_samples, m.num_filters, round(m.activity_sparseness, 4)
        (3, 2, 0.4)
    """
    a = np.abs(np.asarray(activations, dtype=np.float64))
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 2:
        raise InspectnetError(f"sparsity needs a (samples × filters) matrix with at least 2 of each, "
                              f"got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InspectnetError("activations contain NaN or infinite values")
    per = {"hoyer": hoyer(a, axis=1), "lifetime_kurtosis": excess_kurtosis(a, axis=0),
           "population_kurtosis": excess_kurtosis(a, axis=1), "treves_rolls_population": treves_rolls(a, axis=1),
           "treves_rolls_lifetime": treves_rolls(a, axis=0),
           "activity_sparseness": treves_rolls(a.reshape(1, -1), axis=1)}
    values = {k: (float(np.nanmean(v)) if np.isfinite(v).any() else None) for k, v in per.items()}
    excluded = {k: int(np.isnan(v).sum()) for k, v in per.items()}
    return SparsityMetrics(**values, num_samples=a.shape[0], num_filters=a.shape[1], excluded=excluded,
                           layer=layer)


def record_sparsity(record: ProbeRecord, layers: list[str] | None = None) -> list[SparsityMetrics]:
    """Metrics for ``layers`` of a :class:`~inspectnet.probe.record.ProbeRecord`.

    Args:
        record: the record.
        layers: the layers (default: every probed layer).

    Returns:
        One :class:`SparsityMetrics` per layer.
    """
    names = layers or record.layers
    return [sparsity_metrics(record.activations(name), layer=name) for name in names]


def format_table(rows: list[SparsityMetrics]) -> str:
    """Markdown table, one row per layer.

    Args:
        rows: the metrics of each layer.

    Returns:
        The table.
    """
    return markdown_table(["layer", *[LABELS[k] for k in METRICS]], [[r.layer, *[getattr(r, k) for k in METRICS]]
                                                                     for r in rows])
