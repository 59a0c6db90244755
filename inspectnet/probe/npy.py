"""Preallocated ``.npy`` files written block by block, and their headers read without loading them."""

import os
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read the header of a ``.npy`` file.

    Args:
        path: the file.

    Returns:
        ``(shape, dtype, data offset in bytes)``.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.npy"; np.save(path, np.zeros((2, 3), np.float32))
        >>> npy_header(path)[:2]
        ((2, 3), dtype('float32'))
    """
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fh)
        return tuple(shape), np.dtype(dtype), fh.tell()



class NpyWriter:
    """A preallocated ``.npy`` file filled by row blocks with ordinary writes (no resident memory).

    Args:
        path: the file; created zero-filled unless it exists.
        shape: the array's shape (rows first).
        dtype: the array's dtype.

    Raises:
        InspectnetError: the file exists with another shape or dtype.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.npy"
        >>> w = NpyWriter(path, (3, 2), np.float32); w.write(1, np.ones((1, 2))); w.close()
        >>> np.load(path).tolist()
        [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        if not path.exists():
            preallocate(path, shape, self.dtype)
        got_shape, got_dtype, self.offset = npy_header(path)
        if tuple(got_shape) != shape or got_dtype != self.dtype:
            raise InspectnetError(f"{path} has shape {got_shape} {got_dtype}, expected {shape} {self.dtype}; "
                                  f"the folder holds a different record")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fh = open(path, "r+b")

    def write(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` at rows ``start``, ``start + 1``, ... (flushed at once).

        Args:
            start: the first row.
            block: the rows (converted to the file's dtype).
        """
        self.fh.seek(self.offset + start * self.row_bytes)
        self.fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.fh.flush()

    def close(self) -> None:
        """Flush the file to disk (fsync) and close it."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()



def preallocate(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Create a zero-filled ``.npy`` at ``path`` unless another process created it first (link is atomic).

    Args:
        path: the file (parent folders are created).
        shape: the array's shape.
        dtype: the array's dtype.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
    del arr
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # a rank sharing this folder created the same file
    finally:
        tmp.unlink()



def write_rows(writer: NpyWriter, rows: np.ndarray, block: np.ndarray) -> None:
    """Write ``block``'s rows at positions ``rows`` (one write per run of consecutive positions).

    Args:
        writer: the open file.
        rows: the ascending row position of each row of ``block``.
        block: the rows.
    """
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run, values in zip(np.split(rows, breaks), np.split(block, breaks)):
        writer.write(int(run[0]), values)
