"""Batches from a dataset, with worker processes whose failures read like any other bad input.

A ``torch.utils.data.DataLoader`` with ``num_workers > 0`` re-raises a worker's exception in the
main process with the worker's whole traceback folded into the message, and a worker killed by
the system surfaces as a ``RuntimeError``. :func:`data_loader` gives the same batches, turning
both into one-line :class:`InspectnetError` messages: the worker's own message (e.g. the image
that cannot be decoded), or what happened to the worker and how to find the bad sample.

>>> from inspectnet.data import load_data
>>> loader = data_loader(load_data("digits:test", lambda im: 0), batch_size=100)
>>> [len(y) for _, y in loader]
[100, 100, 100, 59]
"""

from collections.abc import Iterator
from typing import Any

import torch

from inspectnet.core.errors import InspectnetError

_WORKER_MARK = "DataLoader worker"


def check_workers(num_workers: int) -> int:
    """``num_workers`` if it is a valid worker count (0 = load in this process), else a one-line error.

    Args:
        num_workers: data loader processes.

    Returns:
        ``num_workers``.

    Raises:
        InspectnetError: ``num_workers`` is negative.

    Examples:
        >>> check_workers(-1)
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: --workers must be 0 or more data loader processes (0 loads in the main ...
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise InspectnetError(f"--workers must be 0 or more data loader processes (0 loads in the main process), "
                              f"got {num_workers!r}")
    return num_workers


class _Loader(torch.utils.data.DataLoader):
    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:
                if self.num_workers == 0 or _WORKER_MARK not in str(exc):
                    raise
                raise _from_worker(exc) from None
            yield batch


def data_loader(dataset: torch.utils.data.Dataset, *, batch_size: int = 1, num_workers: int = 0,
                **kwargs: Any) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``dataset`` whose worker failures are one-line errors.

    Args:
        dataset: the dataset.
        batch_size: samples per batch.
        num_workers: data loader processes (0 loads in this process).
        **kwargs: further keyword arguments of ``torch.utils.data.DataLoader``.

    Returns:
        The loader.

    Examples:
        >>> [b.tolist() for b in data_loader(torch.arange(5), batch_size=2)]
        [[0, 1], [2, 3], [4]]
    """
    return _Loader(dataset, batch_size=batch_size, num_workers=check_workers(num_workers), **kwargs)


def _from_worker(exc: Exception) -> InspectnetError:
    """The one-line error for a worker failure: the worker's own message when it raised one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    last = lines[-1] if lines else name
    if "Original Traceback" in str(exc) and ": " in last:
        kind, _, message = last.partition(": ")
        if kind.rsplit(".", 1)[-1] == "InspectnetError":
            return InspectnetError(message)
        return InspectnetError(f"a data loader worker failed with {kind.rsplit('.', 1)[-1]}: {message} "
                               f"(re-run with --workers 0 to see it in the main process)")
    return InspectnetError(f"a data loader worker failed: {lines[0] if lines else name} (re-run with --workers 0 "
                           f"to load in the main process)")
