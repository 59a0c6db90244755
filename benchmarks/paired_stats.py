"""Paired statistics for the paper reproductions: mean ± std over seeds, a percentile bootstrap
interval of the mean paired difference and an exact sign-flip (paired permutation) test.

    >>> s = paired([3, 4, 5, 6, 7], [1, 1, 2, 2, 3])
    >>> s["mean_diff"], s["p_sign_flip"]
    (3.0, 0.0625)
"""

import itertools
import statistics

import numpy as np


def mean_std(values: list[float], digits: int = 2) -> str:
    """``"m ± s"`` over seeds (sample std; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def paired(a: list[float], b: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Paired comparison of ``a`` and ``b`` (same seeds, same order): the mean of a − b, its sample std,
    a 95 % percentile bootstrap interval of the mean difference and the two-sided p-value of the
    exact sign-flip test (all 2^n sign patterns; with n = 5 the smallest possible p is 0.0625)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    observed = abs(d.mean())
    flips = [abs((d * np.array(signs)).mean()) for signs in itertools.product((1, -1), repeat=n)]
    p = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    return {"n": n, "mean_diff": float(d.mean()), "std_diff": float(d.std(ddof=1)) if n > 1 else 0.0,
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], "p_sign_flip": float(p)}


def describe(s: dict[str, float], digits: int = 2) -> str:
    """One line: ``Δ = m (95 % CI [lo, hi]), sign-flip p = …, n = …``."""
    lo, hi = s["ci95"]
    return (f"Δ = {s['mean_diff']:+.{digits}f} (95 % bootstrap CI [{lo:+.{digits}f}, {hi:+.{digits}f}]), "
            f"sign-flip p = {s['p_sign_flip']:.3f}, n = {s['n']}")
