"""Frozen result objects with ``to_dict`` / ``save`` / ``load`` and the manifest that describes them."""

import dataclasses
import platform
from pathlib import Path
from typing import Any, Self

from inspectnet.core.storage import atomic_write_json, read_json
from inspectnet.core.version import __version__

SCHEMA_VERSION = 1


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of the libraries whose behaviour a result depends on (and of ``extra`` ones, if installed).

    Read from package metadata, never by importing a library: importing scikit-learn only to read
    its version took seconds of every probe.

    Args:
        extra: further distribution names to report when they are installed.

    Returns:
        ``{name: version}``, with ``inspectnet`` and ``python`` always present.

    Examples:
        >>> sorted(library_versions())[:3]
        ['inspectnet', 'numpy', 'python']
    """
    from importlib import metadata

    out = {"inspectnet": __version__, "python": platform.python_version()}
    for name in (*_LIBRARIES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


_LIBRARIES = ("torch", "torchvision", "timm", "numpy", "scikit-learn")


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of every result: a frozen dataclass that round-trips through JSON.

    Subclasses hold JSON-friendly fields (numbers, strings, lists, dicts).

    Examples:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Acc(Result):
        ...     accuracy: float
        >>> Acc.from_dict(Acc(0.5).to_dict())
        Acc(accuracy=0.5)
    """

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (nested dataclasses become dicts too).

        Returns:
            ``{field name: value}``.
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The result whose fields ``data`` holds; other keys (``schema_version``, ``kind``, ...) are passed over.

        Args:
            data: a dict as :meth:`to_dict` or a saved file gives it.

        Returns:
            A new result of this class.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Write ``{"schema_version", "kind", "versions", **fields}`` as JSON, atomically.

        Args:
            path: the output file (parent folders are created).

        Returns:
            ``path`` as a ``Path``.
        """
        doc = {"schema_version": SCHEMA_VERSION, "kind": type(self).__name__,
               "versions": library_versions(), **self.to_dict()}
        return atomic_write_json(path, doc)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a result that :meth:`save` wrote.

        Args:
            path: the JSON file.

        Returns:
            A new result of this class.

        Examples:
            >>> import tempfile
            >>> @dataclasses.dataclass(frozen=True)
            ... class Acc(Result):
            ...     accuracy: float
            >>> Acc.load(Acc(0.25).save(Path(tempfile.mkdtemp()) / "acc.json"))
            Acc(accuracy=0.25)
        """
        return cls.from_dict(read_json(path, what=f"{cls.__name__} file"))
