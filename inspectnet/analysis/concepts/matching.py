"""Concepts of two runs matched one to one by cosine (Hungarian algorithm), and stability across seeds.

Run a's concept i is matched to run b's concept σ(i), σ maximising Σ_i cos(V_a[i], V_b[σ(i)]) over
one-to-one assignments (:func:`scipy.optimize.linear_sum_assignment`). A run's stability against
another is the share of its concepts whose match reaches ``threshold`` (0.8).

>>> import torch
>>> a = torch.eye(3)
>>> pairs, cos = match_concepts(a, a[[2, 0, 1]])
>>> pairs.tolist(), cos.tolist()
([[0, 1], [1, 2], [2, 0]], [1.0, 1.0, 1.0])
"""

from collections.abc import Sequence

import numpy as np
import torch

from inspectnet.analysis.concepts import MATCH_COSINE
from inspectnet.core.errors import InspectnetError


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every pair of concepts of two bases, in float64.

    A zero row has cosine 0 with everything.

    Args:
        a: (Ka, C) concept basis.
        b: (Kb, C) concept basis.

    Returns:
        The (Ka, Kb) cosine matrix cos(a_i, b_j).

    Raises:
        InspectnetError: ``a`` or ``b`` is not (K, C), or their C differ.

    Examples:
        >>> cosine_matrix(torch.tensor([[1., 0.]]), torch.tensor([[1., 1.], [0., 0.]])).tolist()
        [[0.7071067811865475, 0.0]]
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise InspectnetError(f"concept bases to match must be (K, C) with the same C, got {tuple(a.shape)} and "
                              f"{tuple(b.shape)}")
    a, b = a.double(), b.double()
    na = a / a.norm(dim=1, keepdim=True).clamp(min=1e-300)
    nb = b / b.norm(dim=1, keepdim=True).clamp(min=1e-300)
    return na @ nb.T


def match_concepts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one matching of ``a``'s concepts to ``b``'s maximising the summed cosine.

    Args:
        a: (Ka, C) concept basis.
        b: (Kb, C) concept basis.

    Returns:
        (pairs (m, 2) int64 of (index in a, index in b), cosines (m,) float64), m = min(Ka, Kb), sorted by
        index in a.

    Examples:
        >>> match_concepts(torch.tensor([[1., 0.], [0., 1.]]), torch.tensor([[0., 1.], [1., 0.]]))[0].tolist()
        [[0, 1], [1, 0]]
    """
    from scipy.optimize import linear_sum_assignment

    cos = cosine_matrix(a, b).numpy()
    rows, cols = linear_sum_assignment(cos, maximize=True)
    pairs = torch.from_numpy(np.stack([rows, cols], axis=1).astype(np.int64))
    return pairs, torch.from_numpy(cos[rows, cols].copy())


def stability(bases: Sequence[torch.Tensor], threshold: float = MATCH_COSINE) -> dict[str, object]:
    """Stability of the first run's concepts against each other run.

    A run's stability against another is its share of Hungarian matches with cosine ≥ ``threshold``.

    Args:
        bases: the concept bases (K, C) of runs with different seeds, the reported run first.
        threshold: the cosine a match must reach.

    Returns:
        ``{"share": mean share over the other runs, "per_run": [share per other run], "threshold": ...,
        "matched_cosine": per concept of the first run, its mean matched cosine over the other runs}``.

    Raises:
        InspectnetError: fewer than two bases.

    Examples:
        >>> v = torch.rand(4, 6, generator=torch.Generator().manual_seed(0))
        >>> stability([v, v, v])["share"]
        1.0
    """
    if len(bases) < 2:
        raise InspectnetError(f"stability needs at least two runs, got {len(bases)}")
    shares, matched = [], torch.zeros(bases[0].shape[0], dtype=torch.float64)
    for other in bases[1:]:
        pairs, cos = match_concepts(bases[0], other)
        shares.append(float((cos >= threshold).double().sum()) / bases[0].shape[0])
        matched[pairs[:, 0]] += cos
    return {"share": float(np.mean(shares)), "per_run": shares, "threshold": threshold,
            "matched_cosine": (matched / (len(bases) - 1)).tolist()}
