"""Writing results to disk so that an interrupted run never leaves a file that looks complete."""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename (all or nothing).

    Args:
        path: the output file (parent folders are created).
        data: the bytes.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InspectnetError: the file cannot be written (no permission, a full disk, ``path`` is a folder).

    Examples:
        >>> p = atomic_write_bytes(Path(tempfile.mkdtemp()) / "a.bin", b"xy"); p.read_bytes()
        b'xy'
    """
    path = Path(path)
    output_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".part")
    except OSError as exc:
        raise InspectnetError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # disk full, or ``path`` is a folder
        Path(tmp).unlink(missing_ok=True)
        raise InspectnetError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output_dir(path: str | Path) -> Path:
    """Refuse an output folder path that is a file or lies under one, before any work is done.

    Args:
        path: the output folder (it need not exist).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InspectnetError: ``path`` or one of its parents is a file.

    Examples:
        >>> check_output_dir(__file__)
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: output ... is a file; expected a folder (choose another --out)
    """
    path = Path(path)
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                raise InspectnetError(f"output {path}{'' if place == path else f' lies under {place}, which'} "
                                      f"is a file; expected a folder (choose another --out)")
            break
    return path


def check_apart(out: str | Path, inputs: dict[str, str | None]) -> None:
    """Refuse an output inside an input folder, or an input folder inside the output, before anything is written.

    An audit written into its image folder would make every later read of that folder meet
    ``README.md`` as an image; an input inside the output would be removed or indexed with it.

    Args:
        out: the output folder or file (``--out``).
        inputs: {option name: data spec}; specs that are no existing folder (built-in data) are passed over.

    Raises:
        InspectnetError: ``out`` lies inside an input folder, or holds one.

    Examples:
        >>> root = Path(tempfile.mkdtemp())
        >>> check_apart(root / "audit", {"DATA": str(root)})
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: --out ... lies inside the data folder DATA ...
    """
    target = Path(out).resolve()
    for name, spec in inputs.items():
        if spec is None or not Path(spec).is_dir():
            continue
        folder = Path(spec).resolve()
        if target == folder or folder in target.parents:
            raise InspectnetError(f"--out {out} lies inside the data folder {name} {spec}; choose an output outside "
                                  f"it (a later read of the data would take the outputs for images)")
        if target in folder.parents:
            raise InspectnetError(f"--out {out} holds the data folder {name} {spec}; choose an output that does "
                                  f"not contain the data")


def output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents) unless it exists; a file there is refused.

    Args:
        path: the output folder.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InspectnetError: ``path`` or a parent is a file, or the folder cannot be created.

    Examples:
        >>> output_dir(Path(tempfile.mkdtemp()) / "a" / "b").is_dir()
        True
    """
    path = check_output_dir(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, or no permission
        raise InspectnetError(f"cannot create the output folder {path}: {exc.strerror or exc}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8).

    Args:
        path: the output file (parent folders are created).
        text: the text.

    Returns:
        ``path`` as a ``Path``.

    Examples:
        >>> atomic_write_text(Path(tempfile.mkdtemp()) / "a.txt", "hé").read_text(encoding="utf-8")
        'hé'
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    r"""Write ``obj`` as indented strict JSON (NaN and infinities as ``null``, see :func:`strict_json`), atomically.

    Args:
        path: the output file (parent folders are created).
        obj: anything :func:`strict_json` accepts.

    Returns:
        ``path`` as a ``Path``.

    Examples:
        >>> atomic_write_json(Path(tempfile.mkdtemp()) / "a.json", {"auc": float("nan")}).read_text()
        '{\n  "auc": null\n}\n'
    """
    return atomic_write_text(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every value JSON can hold.

    NaN and infinities become None (``null``), numpy scalars and arrays plain numbers and lists, paths
    strings. Python's ``json`` would write bare ``NaN``, which strict readers (browsers, ``jq``, other
    languages) refuse.

    Args:
        obj: dicts, lists, tuples, numbers, strings, numpy values, paths.

    Returns:
        The same structure, strict-JSON ready.

    Examples:
        >>> import numpy as np
        >>> strict_json({"auc": float("nan"), "x": [np.float32(1.5), float("inf")], "n": np.int64(3)})
        {'auc': None, 'x': [1.5, None], 'n': 3}
    """
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return strict_json(_json_default(obj))


def read_json(path: str | Path, *, what: str = "file") -> Any:
    """Read a JSON file, failing with a message that names the file and the problem.

    Args:
        path: the file.
        what: how the message names the file (e.g. ``"probe manifest"``).

    Returns:
        The parsed JSON value.

    Raises:
        InspectnetError: the file does not exist or is not valid UTF-8 JSON.

    Examples:
        >>> read_json(Path(tempfile.mkdtemp()) / "none.json", what="manifest")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: manifest ... does not exist
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InspectnetError(f"{what} {path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InspectnetError(f"{what} {path} is not valid JSON: {exc}") from exc


def prepare_output_file(path: str | Path, *, force: bool = False) -> Path:
    """Check an output file path: its folder is created, an existing file is refused unless ``force``.

    Args:
        path: the output file.
        force: allow overwriting an existing file.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        InspectnetError: ``path`` is a folder, or exists and ``force`` is False.

    Examples:
        >>> prepare_output_file(Path(tempfile.mkdtemp()) / "sub" / "x.onnx").parent.is_dir()
        True
    """
    path = Path(path)
    if path.is_dir():
        raise InspectnetError(f"output {path} is a folder; expected a file path")
    if path.exists() and not force:
        raise InspectnetError(f"output {path} already exists; pass --force to overwrite it")
    output_dir(path.parent)
    return path


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
