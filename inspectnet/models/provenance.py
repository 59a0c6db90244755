"""How a saved model folder was made: the inspectnet commands, earliest first, in ``made_by.json``.

``train`` and ``finetune`` record their command line in the folder they write (a fine-tuned
model's list starts with its starting model's), so a model card can say how to remake the model,
not only how to re-run its audit.

>>> argv = ["inspectnet", "train", "resnet18", "mnist5k:train", "--out", "runs/mnist_r18"]
>>> record_command("runs/mnist_r18", argv)   # doctest: +SKIP
>>> made_by("runs/mnist_r18")                # doctest: +SKIP
['inspectnet train resnet18 mnist5k:train --out runs/mnist_r18']
"""

import shlex
from pathlib import Path

from inspectnet.core.storage import atomic_write_json, read_json

MADE_BY = "made_by.json"


def made_by(spec: str | Path) -> list[str]:
    """The commands that made the model folder ``spec``.

    Args:
        spec: a model spec or folder.

    Returns:
        The commands, oldest first; empty for a zoo model or a folder without a record.

    Examples:
        >>> made_by("resnet18")
        []
    """
    path = Path(spec) / MADE_BY
    if not path.is_file():
        return []
    commands = read_json(path, what="model provenance").get("commands", [])
    return [str(c) for c in commands] if isinstance(commands, list) else []


def record_command(out: str | Path, argv: list[str], *, start: str | Path | None = None) -> Path:
    """Write ``out/made_by.json``: the commands that made ``start`` (the starting model), then ``argv``.

    Re-running the same command (a resumed run) records it once.

    Args:
        out: the model folder written.
        argv: the command that wrote it.
        start: the model it started from (its commands come first).

    Returns:
        The path of ``made_by.json``.

    Examples:
        >>> import tempfile
        >>> out = record_command(tempfile.mkdtemp(), ["inspectnet", "train", "resnet18", "digits"])
        >>> made_by(out.parent)
        ['inspectnet train resnet18 digits']
    """
    command = shlex.join(argv)
    commands = made_by(start) if start is not None else []
    commands = [c for c in commands if c != command] + [command]
    return atomic_write_json(Path(out) / MADE_BY, {"commands": commands})
