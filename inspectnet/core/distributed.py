"""torch.distributed for the data passes: which process this is, its share of the data, and a failed peer named.

Under ``torchrun --nproc-per-node P [--nnodes N ...] -m inspectnet probe|audit|dissect|finetune ...``
every process runs the same command; :func:`init_from_env` joins the process group that torchrun
describes in the environment (gloo on CPU, nccl on CUDA). Without torchrun, :func:`world` is
``(1, 0)`` and everything below is a no-op.

Data passes share their samples out by whole batches (:func:`shard_batches`): global batch b holds
samples ``[b·B, (b+1)·B)`` exactly as in one process, so every sample is computed in the same batch
as without torchrun (bit for bit on CPU) and no sample is padded or duplicated. Ranks get
contiguous runs of batches (``contiguous``) or every P-th batch (``strided``).

A pass runs inside :func:`watch_group`. A process that fails there announces it in the group's
key-value store; the others see it at their next batch (or when torchrun stops them with SIGTERM)
and stop with one line naming the failed rank. What each rank wrote before is kept, so re-running the
command resumes.
"""

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from inspectnet.core.errors import InspectnetError

ORDERS = ("contiguous", "strided")
_FAILED = "inspectnet/failed"


class RankFailed(InspectnetError):
    """Another process of the group failed (or was stopped); this one stops too, keeping its work."""


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (no-op when run directly)."""
    import torch.distributed as dist

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if launched:
        # torchrun stops the others with SIGTERM when one process fails, wherever they are (still
        # loading data, between passes): each must still say which rank failed, not die silently
        signal.signal(signal.SIGTERM, _stop_naming_the_peer("the command"))
    if launched and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if world()[0] > 1:
        _store().set(f"inspectnet/pid/{world()[1]}", f"{socket.gethostname()}:{os.getpid()}")


def world() -> tuple[int, int]:
    """The size of an initialised process group and this process's rank in it.

    Returns:
        ``(world size, rank)``; ``(1, 0)`` without a process group.

    Examples:
        >>> world()
        (1, 0)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def shard_batches(n: int, batch_size: int, world_size: int, rank: int, order: str = "contiguous") -> list[range]:
    """The global batches (sample ranges) that ``rank`` of ``world_size`` processes computes.

    Args:
        n: the number of samples.
        batch_size: samples per global batch.
        world_size: the number of processes.
        rank: this process's rank, ``0 <= rank < world_size``.
        order: ``"contiguous"`` (a run of consecutive batches per rank) or ``"strided"`` (every
            ``world_size``-th batch).

    Returns:
        The sample ranges of this rank's batches, in order.

    Raises:
        InspectnetError: ``order`` is not one of :data:`ORDERS`.

    Examples:
        >>> shard_batches(10, 3, 2, 0), shard_batches(10, 3, 2, 1)
        ([range(0, 3), range(3, 6)], [range(6, 9), range(9, 10)])
        >>> shard_batches(10, 3, 2, 1, "strided")
        [range(3, 6), range(9, 10)]
    """
    if order not in ORDERS:
        raise InspectnetError(f"--shard-order {order!r} is unknown; expected {' or '.join(ORDERS)}")
    batches = [range(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if order == "strided":
        return batches[rank::world_size]
    per, extra = divmod(len(batches), world_size)
    start = rank * per + min(rank, extra)
    return batches[start:start + per + (rank < extra)]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce ``t`` over the ranks in place; a no-op in one process.

    Args:
        t: the tensor (same shape on every rank).
        op: ``"sum"``, ``"min"`` or ``"max"``.

    Returns:
        ``t`` itself, now holding the reduction.

    Examples:
        >>> all_reduce(torch.tensor([1.0, 2.0])).tolist()
        [1.0, 2.0]
    """
    import torch.distributed as dist

    if world()[0] > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return t


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t``, in rank order.

    Args:
        t: the tensor (same shape on every rank).

    Returns:
        One tensor per rank; ``[t]`` in one process.

    Examples:
        >>> all_gather(torch.tensor([3]))
        [tensor([3])]
    """
    import torch.distributed as dist

    if world()[0] == 1:
        return [t]
    parts = [torch.empty_like(t) for _ in range(world()[0])]
    dist.all_gather(parts, t.contiguous())
    return parts


def share_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank.

    Args:
        value: any picklable object (only rank 0's is used).

    Returns:
        Rank 0's value; ``value`` itself in one process.

    Examples:
        >>> share_from_main({"n": 1})
        {'n': 1}
    """
    import torch.distributed as dist

    if world()[0] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def watch_group(what: str) -> Iterator["GroupWatch"]:
    """Run one pass of ``what`` with failures announced and peers' failures seen.

    Inside, call ``watch.check()`` once per batch and ``watch.barrier()`` at the end. A failure of this
    process is announced to the others; SIGTERM (torchrun stopping the group after a failure) stops
    this process with a :class:`RankFailed` naming the failed rank.

    Args:
        what: the pass, as messages name it (e.g. ``"the probe pass"``).

    Yields:
        The :class:`GroupWatch` of the pass.

    Raises:
        RankFailed: another rank failed (the error that broke this rank's collective step is its cause).

    Examples:
        >>> with watch_group("the probe pass") as watch:
        ...     watch.check()
        ...     watch.barrier()
        >>> watch.size
        1
    """
    watch = GroupWatch(what)
    if watch.size == 1:
        yield watch
        return
    previous = signal.signal(signal.SIGTERM, _stop_naming_the_peer(what))
    try:
        yield watch
    except RankFailed:
        raise
    except BaseException as exc:
        # a collective broke because a peer is gone: the peer is the cause
        if watch.peer_failed():
            raise watch.peer_failure() from exc
        watch.announce(exc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


class GroupWatch:
    """The failure watch of one pass over the process group (see :func:`watch_group`).

    Args:
        what: the pass, as messages name it (e.g. ``"the probe pass"``).
    """

    def __init__(self, what: str):
        self.what = what
        self.size, self.rank = world()
        self._store = _store() if self.size > 1 else None

    def check(self) -> None:
        """Stop when another rank announced a failure.

        Raises:
            RankFailed: another rank announced a failure.
        """
        if self._store is not None and self._store.check([_FAILED]):
            raise self.peer_failure()

    def barrier(self) -> None:
        """Wait for every rank; a rank that died on the way is named instead of hanging or a gloo error.

        Raises:
            RankFailed: another rank failed before or during the barrier.
        """
        import torch.distributed as dist

        if self.size == 1:
            return
        self.check()
        try:
            dist.barrier()
        except RuntimeError as exc:
            raise self.peer_failure() from exc
        self.check()

    def peer_failed(self) -> bool:
        """Whether another rank announced a failure or is found dead on this host.

        Returns:
            True when a peer failed (or the group's store is gone with the launcher).
        """
        with contextlib.suppress(Exception):
            return bool(self._store.check([_FAILED])) or bool(_dead_ranks(self.size))
        return True  # the store itself is gone: the launcher has stopped the group

    def announce(self, exc: BaseException) -> None:
        """Tell the other ranks that this one failed, and why.

        Args:
            exc: the error this rank stops with.
        """
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        with contextlib.suppress(Exception):  # the store may be gone with the launcher
            _store().set(_FAILED, f"rank {self.rank} of {self.size} failed during {self.what} ({detail})")

    def peer_failure(self) -> RankFailed:
        """The error this rank stops with: who failed (announced, or found dead on this host).

        Returns:
            A :class:`RankFailed` naming the failed rank and telling how to resume.
        """
        cause = None
        with contextlib.suppress(Exception):
            if _store().check([_FAILED]):
                cause = _store().get(_FAILED).decode()
        if cause is None:
            dead = _dead_ranks(self.size)
            cause = (f"rank {', '.join(map(str, dead))} of {self.size} ended during {self.what}" if dead else
                     f"another process of the group ended during {self.what} (torchrun stopped this one)")
        return RankFailed(f"{cause}; rank {self.rank} stopped too, keeping what it wrote: re-run the same "
                          f"command to resume")


def _stop_naming_the_peer(what: str) -> Callable[[int, object], None]:
    """A SIGTERM handler: torchrun stops the surviving processes after one failed; stop with its name."""

    def handler(_signum: int, _frame: object) -> None:
        raise GroupWatch(what).peer_failure()

    return handler


def _store():
    import torch.distributed.distributed_c10d as c10d

    return c10d._get_default_store()


def _dead_ranks(size: int) -> list[int]:
    """Ranks whose process (registered by :func:`init_from_env`) no longer runs on this host."""
    host, dead = socket.gethostname(), []
    for r in range(size):
        key = f"inspectnet/pid/{r}"
        with contextlib.suppress(Exception):
            if _store().check([key]):
                where, _, pid = _store().get(key).decode().rpartition(":")
                if where == host and not _alive(int(pid)):
                    dead.append(r)
    return dead


def _alive(pid: int) -> bool:
    if not Path("/proc/self/stat").exists():  # not Linux: existence is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except (FileNotFoundError, IndexError):
        return False
