"""Quantization of a probed layer's filter activations into binary atoms ("filter j is active").

EBP §4.1 (Kasioumis et al., 2021): filter j is active on image i if its activation A_ij (Eq. 1, the
spatial mean of |F_ij|) exceeds μ_j + σ_j, the mean and standard deviation of that filter's
activations over the data. The thresholds are *fitted* on one record (the train record) and then
*applied* to others (the test record), in the scikit-learn fit/transform style. Other thresholds:
``quantile`` (active above the q-quantile of the filter) and ``fixed`` (one value for every filter).

Filters that are constant on the fitting data carry no information and are never active; they are
listed in ``constant`` so that callers can skip and count them.

>>> import numpy as np
>>> A = np.array([[0., 1.], [0., 3.], [0., 2.]])
>>> q = fit_quantizer(A)                      # μ+σ per filter; filter 0 is constant
>>> q.constant, q.transform(A)[:, 1].tolist()
([0], [False, True, False])
"""

import dataclasses

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result

METHODS = ("mean_std", "quantile", "fixed")


@dataclasses.dataclass(frozen=True)
class Quantizer(Result):
    """Per-filter thresholds: ``transform(A)[i, j] = A[i, j] > thresholds[j]``."""

    method: str
    param: float
    thresholds: list[float]
    constant: list[int]

    def transform(self, activations: np.ndarray) -> np.ndarray:
        """Binary (N, K) matrix of active filters; constant filters are always inactive.

        Args:
            activations: (N, K) activations of the filters the quantizer was fitted on.

        Returns:
            The (N, K) bool matrix: activation above the filter's threshold.

        Raises:
            InspectnetError: the number of filters differs from the fitted one.

        Examples:
            >>> fit_quantizer(np.array([[0.0, 1.0], [2.0, 1.0]]), "fixed", 1.0).transform(np.array([[3.0, 3.0]])).tolist()
            [[True, False]]
        """
        a = _as_matrix(activations, "activations")
        if a.shape[1] != len(self.thresholds):
            raise InspectnetError(f"activations have {a.shape[1]} filters but the quantizer was fitted on "
                                  f"{len(self.thresholds)}")
        active = a > np.asarray(self.thresholds, dtype=np.float64)
        active[:, self.constant] = False
        return active


def fit_quantizer(activations: np.ndarray, method: str = "mean_std", param: float | None = None) -> Quantizer:
    """Fit per-filter thresholds on ``activations`` (N images × K filters).

    ``method``: ``mean_std`` (threshold μ_j + param·σ_j, param defaults to 1 as in EBP),
    ``quantile`` (the param-quantile of filter j, default 0.9), ``fixed`` (threshold = param).
    Statistics are computed in float64 (population σ, ddof=0).

    Args:
        activations: (N, K) activations.
        method: ``mean_std``, ``quantile`` or ``fixed``.
        param: the method's parameter (None: its default).

    Returns:
        The quantizer.

    Raises:
        InspectnetError: the method is unknown, there are fewer than 2 samples, or ``param`` is out of range.

    Examples:
        >>> fit_quantizer(np.array([[0.0], [2.0]])).thresholds
        [2.0]
    """
    a = _as_matrix(activations, "activations")
    if method not in METHODS:
        raise InspectnetError(f"quantization method {method!r} is unknown; expected one of {', '.join(METHODS)}")
    if a.shape[0] < 2:
        raise InspectnetError(f"need at least 2 samples to fit thresholds, got {a.shape[0]}")
    if param is not None and not np.isfinite(float(param)):
        raise InspectnetError(f"--quantize-param must be a finite number, got {param}")
    if method == "mean_std":
        param = 1.0 if param is None else float(param)
        thresholds = a.mean(axis=0) + param * a.std(axis=0)
    elif method == "quantile":
        param = 0.9 if param is None else float(param)
        if not 0.0 < param < 1.0:
            raise InspectnetError(f"quantile must be in (0, 1), got {param}")
        thresholds = np.quantile(a, param, axis=0)
    else:
        if param is None:
            raise InspectnetError("the fixed quantization method needs a threshold value")
        param = float(param)
        thresholds = np.full(a.shape[1], param)
    constant = np.flatnonzero(np.ptp(a, axis=0) == 0).tolist()
    return Quantizer(method=method, param=param, thresholds=thresholds.tolist(), constant=constant)


def _as_matrix(x: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InspectnetError(f"{what} must be a 2-D (samples × filters) matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InspectnetError(f"{what} contain NaN or infinite values")
    return a
