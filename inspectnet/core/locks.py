"""One writer per output: a lock file beside the output folder (or file) while a command writes it.

The lock is ``.NAME.lock`` in the output's parent folder (beside it, not inside, so that a new
output folder stays empty until the command writes into it) and holds the writer's pid, host,
command and start time. A second command into the same output is refused in one line naming the
holder; a lock left by a process that no longer runs on this host is replaced. Under ``torchrun``
rank 0 holds the lock for the group (the other ranks write only where rank 0 tells them).

>>> import tempfile
>>> out = Path(tempfile.mkdtemp()) / "out"
>>> with output_lock(out, "probe"):
...     lock_path(out).is_file()
True
>>> lock_path(out).exists()
False
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError

_HELD: dict[Path, int] = {}  # locks this process holds, with how many nested holders


def lock_path(out: str | Path) -> Path:
    """The lock file of the output ``out``: ``.NAME.lock`` beside it.

    Args:
        out: the output folder or file.

    Returns:
        The absolute path of its lock file.

    Examples:
        >>> lock_path("runs/audit").name
        '.audit.lock'
    """
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | Path | None, command: str) -> Iterator[None]:
    """Hold the lock of ``out`` while the block runs (nothing when ``out`` is None or this is not rank 0).

    Args:
        out: the output folder or file.
        command: what writes it (named to a second command that is refused).

    Yields:
        Nothing; the lock is removed when the block ends, however it ends.

    Raises:
        InspectnetError: another running command holds the lock (the message names it), or the lock
            could not be taken.

    Examples:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "out"
        >>> with output_lock(out, "probe"):
        ...     lock_path(out).is_file()
        True
    """
    if out is None or int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    path = lock_path(out)
    if path in _HELD:  # nested: the same process writes its own output
        _HELD[path] += 1
        try:
            yield
        finally:
            _HELD[path] -= 1
        return
    taken = _acquire(path, Path(out), command)
    _HELD[path] = 1
    try:
        yield
    finally:
        del _HELD[path]
        if taken:
            _release(path)


def _acquire(path: Path, out: Path, command: str) -> bool:
    """Take the lock (True), or go without one where none can be written (False).

    Without a lock the command reports the unwritable output itself.
    """
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    for _ in range(3):  # a stale lock is replaced; a race with another replacer is retried
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and _alive(holder):
                raise InspectnetError(
                    f"--out {out} is being written by another inspectnet command ({holder.get('command', '?')}, "
                    f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started', '?')}); wait "
                    f"for it to finish (or remove {path} if that process is gone)") from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        except OSError:  # a read-only or full parent folder
            return False
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
        except OSError:  # a full disk: no lock, and no empty lock file left behind
            path.unlink(missing_ok=True)
            return False
        return True
    raise InspectnetError(f"--out {out}: could not take its lock {path}; try again")


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder; None for a lock its writer died before filling (after a grace period)."""
    try:
        text = path.read_text()
        holder = json.loads(text)
        return holder if isinstance(holder, dict) else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        try:  # being written this instant, or left empty by a process killed between create and write
            age = datetime.datetime.now().timestamp() - path.stat().st_mtime
        except FileNotFoundError:
            return None
        return {"pid": "?", "host": "?", "command": "?"} if age < 5 else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run: always for another host (its processes cannot be seen)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return pid == "?"
    if pid == os.getpid():
        return False  # left by this process before (e.g. an earlier in-process command that was killed)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, under another user
    return True


def _release(path: Path) -> None:
    holder = _holder(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
