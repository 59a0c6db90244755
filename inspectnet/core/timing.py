"""Latency measurement: the median wall time of repeated calls, after a warm-up call."""

import statistics
import time
from collections.abc import Callable
from typing import Any

from inspectnet.core.errors import InspectnetError


def median_seconds(fn: Callable[[], Any], *, min_reps: int = 3, max_reps: int = 30, budget_s: float = 1.5) -> float:
    """Median wall time of ``fn()`` in seconds, after one untimed warm-up call.

    At least ``min_reps`` and at most ``max_reps`` timed calls; between the two, calls stop once
    ``budget_s`` seconds have passed (so a slow engine is not timed for minutes). The median
    rather than the mean: one preempted call on a shared machine must not move the figure.
    ``min_reps == max_reps`` gives a fixed number of calls.

    Args:
        fn: the call to time.
        min_reps: the fewest timed calls.
        max_reps: the most timed calls.
        budget_s: seconds after which no further call starts once ``min_reps`` are done.

    Returns:
        The median of the timed calls, in seconds.

    Raises:
        InspectnetError: unless ``1 <= min_reps <= max_reps``.

    Examples:
        >>> 0.0 <= median_seconds(lambda: sum(range(100)), min_reps=5, max_reps=5) < 1.0
        True
    """
    if not 1 <= min_reps <= max_reps:
        raise InspectnetError(f"timing repetitions must satisfy 1 <= min_reps <= max_reps, got {min_reps} "
                              f"and {max_reps}")
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
