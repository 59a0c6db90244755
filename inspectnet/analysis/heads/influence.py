"""Influential features per class (Algorithm 1 of "Decomposing the Deep", Badola et al.).

For every training sample of class c take the indices of its top-``k1`` features by magnitude;
histogram those indices over the samples of class c; the ``k2`` most frequent indices form
class c's influential set S_c. Works on the penultimate features (``pre_logits``, the head's input)
or on any probed layer of a record (influential filters per class).

>>> from inspectnet.probe.record import ProbeRecord
>>> imap = fit_influence(ProbeRecord.load("runs/train_rec"), k1=5, k2=5)   # doctest: +SKIP
>>> imap.supports[3], imap.union()                                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from inspectnet.core.errors import InspectnetError, InvalidParameterError
from inspectnet.core.results import Result
from inspectnet.models.layers import PRE_LOGITS

if TYPE_CHECKING:
    from inspectnet.probe.record import ProbeRecord

_CHUNK = 4096  # samples per topk/bincount step: bounds memory for d = 4096 and N in the millions


def topk_counts(acts: np.ndarray, labels: np.ndarray, num_classes: int, k1: int,
                weight: torch.Tensor | None = None) -> np.ndarray:
    """How often feature j is among a class-c sample's top-k1 by |value|, as a (C, d) float64 histogram.

    With ``weight`` (the head's (C, d) matrix) a sample of class c ranks its features by
    |W[c, j]·f_j|, the magnitude of their contribution to its own class logit, instead of |f_j|.

    Exactly-zero values are not counted (a feature that is 0 contributes nothing; counting it
    would only record topk's arbitrary tie order). Samples with label < 0 are ignored.

    Args:
        acts: (N, d) features.
        labels: (N,) labels.
        num_classes: C.
        k1: top features per sample.
        weight: the head's (C, d) weight, to rank by contribution.

    Returns:
        The (C, d) counts.

    Examples:
        >>> a = np.array([[3., -5., 1.], [0., 2., 4.]]); topk_counts(a, np.array([0, 1]), 2, 2)
        array([[1., 1., 0.],
               [0., 1., 1.]])
    """
    n, d = acts.shape
    counts = torch.zeros(num_classes * d, dtype=torch.float64)
    for start in range(0, n, _CHUNK):  # np.array copies: record memmaps are read-only
        a = torch.from_numpy(np.array(acts[start:start + _CHUNK], dtype=np.float32)).abs()
        y = torch.from_numpy(np.array(labels[start:start + _CHUNK], dtype=np.int64))
        keep = y >= 0
        a, y = a[keep], y[keep]
        if len(y) == 0:
            continue
        if weight is not None:
            a = a * weight.abs().float()[y]
        values, idx = a.topk(k1, dim=1)
        flat = (y[:, None] * d + idx)[values > 0]
        counts += torch.bincount(flat, minlength=num_classes * d).to(torch.float64)
    return counts.reshape(num_classes, d).numpy()


def top_indices(counts: np.ndarray, k2: int) -> list[list[int]]:
    """Per row, the ``k2`` most frequent indices with a non-zero count (ties: lower index first).

    Args:
        counts: the (C, d) counts of :func:`topk_counts`.
        k2: indices per row.

    Returns:
        One list of indices per row.

    Examples:
        >>> top_indices(np.array([[1., 3., 1.], [0., 0., 0.]]), 2)
        [[1, 0], []]
    """
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k2]
    return [[int(j) for j in row if counts[c, j] > 0] for c, row in enumerate(order)]


@dataclasses.dataclass(frozen=True)
class InfluenceMap(Result):
    """Per-class influential feature sets S_c fitted on a probe record (see :func:`fit_influence`).

    ``frequencies[c][i]`` is the fraction of class-c samples whose top-k1 contains ``supports[c][i]``.
    ``empty_classes`` had no samples in the fit record (the usual case for data covering a few of a
    pretrained model's classes): nothing says which of their features matter, so their support is
    empty and a decomposed head keeps their dense rows (:meth:`mask`).
    """

    k1: int
    k2: int
    layer: str
    dim: int
    num_classes: int
    supports: list[list[int]]
    frequencies: list[list[float]]
    class_counts: list[int]
    empty_classes: list[int]
    class_names: list[str]
    record_fingerprint: str
    weights_fingerprint: str
    score: str = "magnitude"

    def union(self) -> list[int]:
        """Sorted indices that some class's influential set holds (|∪ S_c|, classes with data).

        Returns:
            The indices.
        """
        return sorted({j for s in self.supports for j in s})

    def mask(self) -> torch.Tensor:
        """(C, d) bool: ``mask[c, j]`` is True when j ∈ S_c.

        The rows of ``empty_classes`` are all True (a class without fitting data keeps its dense row).

        Returns:
            The mask.

        Examples:
            >>> InfluenceMap.full(2, 3, supports=[[1], []], empty_classes=[1]).mask().int().tolist()
            [[0, 1, 0], [1, 1, 1]]
        """
        m = torch.zeros(self.num_classes, self.dim, dtype=torch.bool)
        for c, s in enumerate(self.supports):
            m[c, s] = True
        m[self.empty_classes] = True
        return m

    @classmethod
    def full(cls, num_classes: int, dim: int, **meta: Any) -> "InfluenceMap":
        """Every class uses every feature (the decomposed head then equals the dense head).

        Args:
            num_classes: C.
            dim: d.
            **meta: fields to set instead of the defaults (e.g. ``supports``).

        Returns:
            The map.
        """
        sup = [list(range(dim)) for _ in range(num_classes)]
        base = dict(k1=dim, k2=dim, layer=PRE_LOGITS, dim=dim, num_classes=num_classes, supports=sup,
                    frequencies=[[1.0] * dim for _ in range(num_classes)], class_counts=[0] * num_classes,
                    empty_classes=[], class_names=[f"class_{i}" for i in range(num_classes)],
                    record_fingerprint="", weights_fingerprint="")
        return cls(**{**base, **meta})


def check_k(k1: int, k2: int, dim: int) -> None:
    """Refuse ``k1``/``k2`` that Algorithm 1 cannot use on features of width ``dim``.

    Args:
        k1: top features kept per sample.
        k2: influential features chosen per class among those.
        dim: the feature width.

    Raises:
        InvalidParameterError: ``k1`` or ``k2`` is below 1, ``k2`` exceeds ``k1``, or ``k1`` exceeds ``dim``.

    Examples:
        >>> check_k(5, 6, 512)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InvalidParameterError: k2=6 is larger than k1=5; the k2 influential features are ...
    """
    if k1 < 1 or k2 < 1:
        raise InvalidParameterError("k1" if k1 < 1 else "k2", f"{{k1}} and {{k2}} must be at least 1, got k1={k1}, k2={k2}")
    if k2 > k1:
        raise InvalidParameterError("k2", f"{{k2={k2}}} is larger than {{k1={k1}}}; the k2 influential features are "
                                          f"chosen among each sample's top-k1, so k2 <= k1 is required")
    if k1 > dim:
        raise InvalidParameterError("k1", f"{{k1={k1}}} is larger than the feature dimension {dim}")


def record_labels(record: ProbeRecord, num_classes: int) -> np.ndarray:
    """The record's labels, checked to be present and in range of the model's classes.

    Args:
        record: the probe record.
        num_classes: the model's classes.

    Returns:
        The labels.

    Raises:
        InspectnetError: the record has no labels, or labels beyond the model's classes.
    """
    labels = np.asarray(record.labels)
    if len(labels) == 0 or (labels < 0).all():
        raise InspectnetError(f"probe record {record.root} has no labels; influential features are fitted per "
                              f"class on labelled data (e.g. mnist5k:train)")
    if labels.max() >= num_classes:
        raise InspectnetError(f"probe record {record.root} has labels up to {labels.max()} but the model has "
                              f"{num_classes} classes")
    return labels


SCORES = ("magnitude", "contribution")


def fit_influence(record: ProbeRecord, k1: int, k2: int, *, layer: str = PRE_LOGITS, score: str = "magnitude",
                  weight: torch.Tensor | None = None) -> InfluenceMap:
    """Algorithm 1 on ``record`` (a :class:`~inspectnet.probe.record.ProbeRecord`) at ``layer``.

    ``score="magnitude"`` ranks each sample's features by |f_j| (the paper). ``"contribution"``
    (beyond the paper) ranks them by |W[c, j]·f_j| for the sample's class c and needs the head's
    ``weight``; it helps where a few large features dominate every class (e.g. a new head on a
    frozen ImageNet backbone).

    Args:
        record: the probe record.
        k1: top features kept per sample.
        k2: influential features chosen per class.
        layer: the recorded layer (``pre_logits`` for a head decomposition).
        score: ``"magnitude"`` or ``"contribution"``.
        weight: the head's (C, d) weight, for ``"contribution"``.

    Returns:
        The influence map.

    Raises:
        InspectnetError: the layer is not (N, d), ``score`` is unknown, or ``"contribution"`` lacks a
            fitting weight.

    Examples:
        >>> imap = fit_influence(rec, k1=5, k2=5)                  # doctest: +SKIP
        >>> imap.save("influence.json"); InfluenceMap.load("influence.json")   # doctest: +SKIP
    """
    acts = record.activations(layer)
    if acts.ndim != 2:
        raise InspectnetError(f"layer {layer!r} of record {record.root} has shape {acts.shape[1:]}; expected "
                              f"one value per filter (record it with a reducer such as absmean)")
    num_classes = len(record.class_names)
    dim = acts.shape[1]
    check_k(k1, k2, dim)
    labels = record_labels(record, num_classes)
    if score not in SCORES:
        raise InspectnetError(f"--score {score!r} is unknown; expected one of {', '.join(SCORES)}")
    if score == "contribution":
        if weight is None or layer != PRE_LOGITS:
            raise InspectnetError("--score contribution needs the head's weights and the pre_logits layer")
        if tuple(weight.shape) != (num_classes, dim):
            raise InspectnetError(f"head weight of shape {tuple(weight.shape)} does not match the record's "
                                  f"{num_classes} classes x {dim} features")
    counts = topk_counts(acts, labels, num_classes, k1, weight if score == "contribution" else None)
    per_class = np.bincount(labels[labels >= 0], minlength=num_classes)
    supports = top_indices(counts, k2)
    freqs = [[float(counts[c, j] / per_class[c]) for j in s] for c, s in enumerate(supports)]
    return InfluenceMap(
        k1=k1, k2=k2, layer=layer, dim=dim, num_classes=num_classes, supports=supports, frequencies=freqs,
        class_counts=[int(v) for v in per_class], empty_classes=[int(c) for c in np.flatnonzero(per_class == 0)],
        class_names=record.class_names, record_fingerprint=record.fingerprint,
        weights_fingerprint=record.manifest["identity"]["weights_fingerprint"], score=score)
