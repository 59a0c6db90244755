"""The audit folder: its state file, which files each stage wrote, and their removal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_json, output_dir, read_json
from inspectnet.data.index import INDEX_FILE, data_folder, index_folder, index_from_json
from inspectnet.models.zoo import ModelAbout
from inspectnet.pipelines.audit.stage import Stage

AUDIT_FILE = "audit.json"
AUDIT_FORMAT = "inspectnet-audit"
CARD_FILES = ("card.json", "README.md", "card.html")


def open_folder(out: Path, about: ModelAbout) -> dict[str, Any]:
    """The folder's audit state; refuses another model's audit and folders that hold anything else.

    A new audit writes ``audit.json`` into an empty folder before anything else, so a folder without
    it was not made by an audit (not even an interrupted one) and is never adopted.

    Args:
        out: the audit folder.
        about: what identifies the model.

    Returns:
        The state: the stored one, or a new one written into the new folder.

    Raises:
        InspectnetError: ``out`` is a file, holds another model's audit or a damaged state, or is not empty
            and holds no audit.
    """
    if out.exists() and not out.is_dir():
        raise InspectnetError(f"--out {out} is a file; expected a folder for the audit")
    path = out / AUDIT_FILE
    if path.exists():
        state = read_json(path, what="audit state")
        if state.get("format") != AUDIT_FORMAT:
            raise InspectnetError(f"{path} is not an inspectnet audit state file")
        if state.get("model_fingerprint") != about.fingerprint():
            raise InspectnetError(
                f"--out {out} holds the audit of another model ({state.get('model')}, weights "
                f"{str(state.get('model_fingerprint'))[:16]}), not of {about.spec} (weights {about.fingerprint()}); "
                f"choose another folder or delete it")
        return state
    if out.exists() and any(out.iterdir()):
        raise InspectnetError(f"--out {out} is not empty and holds no audit ({AUDIT_FILE}); choose an empty or "
                              f"new folder")
    state = {"format": AUDIT_FORMAT, "model": about.spec, "model_fingerprint": about.fingerprint(), "stages": {}}
    output_dir(out)
    atomic_write_json(path, state)
    return state


def files_under(out: Path, folder: str) -> list[str]:
    """Every file (and link) below ``out/folder``, as paths relative to ``out``.

    Args:
        out: the audit folder.
        folder: a folder inside it.

    Returns:
        The paths, sorted; empty when the folder does not exist.
    """
    root = out / folder
    return sorted(str(p.relative_to(out)) for p in root.rglob("*") if not p.is_dir()) if root.is_dir() else []


def remove_stage_files(out: Path, stage: Stage, previous: dict[str, Any]) -> None:
    """Remove what the stage's previous run wrote, and nothing else (see the module docstring).

    Args:
        out: the audit folder.
        stage: the stage.
        previous: the audit state of the stage's previous run.
    """
    if "files" in previous:
        ours = previous["files"]
    else:  # a run that was killed: whatever appeared in its folder after it started
        foreign = set(previous.get("foreign", files_under(out, stage.name)))
        ours = [f for f in files_under(out, stage.name) if f not in foreign]
    for rel in ours:
        path = out / rel
        path.unlink(missing_ok=True)
        for parent in path.parents:  # folders it leaves empty, up to and including the stage's own
            if parent == out or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()



def index_data(out: Path, state: dict[str, Any], specs: list[str | None]) -> tuple[dict[str, str], str | None]:
    """The content identities of the audit's data folders, and what changed since the last audit.

    The folders' indexes are kept in ``out/data_index.json`` (only files whose size or time changed
    are hashed again). A changed folder also forgets the class names remembered for it. Image
    folders are indexed as they are read (class sub-folders); a concept folder (with
    ``concepts.json``) by all its files.

    Args:
        out: the audit folder (opened by :func:`open_folder`).
        state: its audit state.
        specs: the data specs the audit reads (built-in sources and None are passed over).

    Returns:
        ({spec: content digest}, a note such as ``"the data changed since 2026-12-07T07:40:00Z
        (imgs: cat/1.png changed)"``, or None when nothing changed).

    Examples:
        >>> index_data(Path("/tmp"), {}, ["digits"])
        ({}, None)
    """
    path = out / INDEX_FILE
    stored = read_json(path, what="data index") if path.is_file() else {}
    stored = stored if isinstance(stored, dict) else {}
    digests: dict[str, str] = {}
    changes, since = [], None
    for spec in dict.fromkeys(s for s in specs if s is not None):
        folder = data_folder(spec)
        if folder is None:
            continue
        before = index_from_json(stored.get(spec))
        files = (sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
                 if (folder / "concepts.json").is_file() else None)
        now = index_folder(folder, before, files=files)
        digests[spec] = now.digest
        if before is not None and before.digest != now.digest:
            changes.append(f"{spec}: {now.first_change(before)}")
            since = since or before.indexed_at
            state.get("data_class_names", {}).pop(spec, None)
        stored[spec] = now.to_json()
    if digests:
        atomic_write_json(path, stored)
    return digests, (f"the data changed since {since} ({'; '.join(changes)})" if changes else None)
