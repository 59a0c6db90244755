"""What an image folder holds, as an identity that changes when its contents change.

A folder's index is its sorted file list with each file's size, modification time and a content
hash. The hash is read only for files that are new or whose size or time differ from a stored
index (or from files already hashed in this process), so indexing a folder that did not change
costs one ``stat`` per file. The folder's identity (:attr:`FolderIndex.digest`) covers paths and
contents only: a file touched without being changed keeps the identity; a file replaced under the
same name, added or removed changes it.

>>> import tempfile; from PIL import Image
>>> root = Path(tempfile.mkdtemp()); (root / "a").mkdir()
>>> Image.new("L", (4, 4)).save(root / "a" / "x.png")
>>> first = index_folder(root); len(first.files)
1
>>> Image.new("L", (4, 4), 9).save(root / "a" / "x.png")
>>> index_folder(root, first).first_change(first)
'a/x.png changed'
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError

INDEX_FILE = "data_index.json"
# (path, size, mtime_ns) → content hash of files hashed in this process: the audit and the probe
# record it runs index the same folder, and must not read every file twice
_HASHED: dict[tuple[str, int, int], str] = {}


@dataclasses.dataclass
class FolderIndex:
    """A folder's files as ``[relative path, size, mtime_ns, content hash]`` rows, sorted by path."""

    root: str
    files: list[list[Any]]
    indexed_at: str

    @property
    def digest(self) -> str:
        """The folder's content identity: a hash of every relative path and its content hash."""
        h = hashlib.sha256()
        for rel, _size, _mtime, content in self.files:
            h.update(f"{rel}\0{content}\n".encode())
        return h.hexdigest()[:32]

    def first_change(self, before: FolderIndex) -> str | None:
        """The first file (in path order) added, removed or changed since ``before``; None if none.

        Args:
            before: the index the folder had earlier.

        Returns:
            e.g. ``"cat/1.png changed"``, ``"cat/9.png was added"``, or None.

        Examples:
            See the module docstring.
        """
        now = {row[0]: row[3] for row in self.files}
        then = {row[0]: row[3] for row in before.files}
        for rel in sorted(now.keys() | then.keys()):
            if rel not in then:
                return f"{rel} was added"
            if rel not in now:
                return f"{rel} was removed"
            if now[rel] != then[rel]:
                return f"{rel} changed"
        return None

    def to_json(self) -> dict[str, Any]:
        """The index as a JSON-ready dict (see :func:`index_from_json`).

        Returns:
            ``{"root", "indexed_at", "digest", "files"}``.
        """
        return {"root": self.root, "indexed_at": self.indexed_at, "digest": self.digest, "files": self.files}


def index_from_json(doc: Any) -> FolderIndex | None:
    """A :class:`FolderIndex` from :meth:`FolderIndex.to_json`'s dict; None for anything else.

    Args:
        doc: what a stored index file held.

    Returns:
        The index, or None when ``doc`` is not one (a damaged store only costs hashing again).

    Examples:
        >>> index_from_json({"root": "r", "indexed_at": "t", "files": [["a", 1, 2, "h"]]}).files
        [['a', 1, 2, 'h']]
    """
    try:
        return FolderIndex(str(doc["root"]), [[str(r), int(s), int(m), str(c)] for r, s, m, c in doc["files"]],
                           str(doc["indexed_at"]))
    except (KeyError, TypeError, ValueError):
        return None


def image_folder_files(root: str | Path) -> list[Path]:
    """The files of an image folder as :class:`~inspectnet.data.datasets.FolderDataset` reads them.

    Every non-hidden file below each non-hidden class sub-folder, nested folders included, sorted.

    Args:
        root: the image folder (``ROOT/CLASS/IMAGE``).

    Returns:
        The files, class by class in name order.

    Examples:
        >>> image_folder_files("/nonexistent")
        []
    """
    root = Path(root)
    if not root.is_dir():
        return []
    files: list[Path] = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files += sorted(p for p in (root / cls).rglob("*") if not p.is_dir() and not p.name.startswith("."))
    return files


def index_folder(root: str | Path, previous: FolderIndex | None = None, *,
                 files: list[Path] | None = None) -> FolderIndex:
    """Index ``root`` (its image-folder files unless ``files`` are given), hashing only what changed.

    Args:
        root: the folder.
        previous: a stored index of the same folder; files whose size and modification time match
            it keep its hash unread.
        files: the files to index (default :func:`image_folder_files`).

    Returns:
        The folder's :class:`FolderIndex`.

    Examples:
        See the module docstring.
    """
    root = Path(root)
    known = {row[0]: row for row in previous.files} if previous is not None else {}
    rows = []
    for path in image_folder_files(root) if files is None else files:
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except OSError:  # a broken link: listed with no content (the data loader names it)
            rows.append([rel, -1, 0, "unreadable"])
            continue
        old = known.get(rel)
        if old is not None and old[1] == st.st_size and old[2] == st.st_mtime_ns:
            content = old[3]
        else:
            content = _content_hash(path, st)
        rows.append([rel, st.st_size, st.st_mtime_ns, content])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return FolderIndex(str(root), rows, now)


def data_folder(spec: str | None) -> Path | None:
    """The folder a data spec names, or None for a built-in source (whose contents are fixed).

    Args:
        spec: a data spec, or None.

    Returns:
        The folder's path, or None.

    Examples:
        >>> data_folder("digits:test") is None
        True
    """
    return Path(spec) if spec is not None and Path(spec).is_dir() else None


def _content_hash(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.blake2b(digest_size=16)
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise InspectnetError(f"cannot read {path} to index the data: {exc.strerror or exc}") from None
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]
