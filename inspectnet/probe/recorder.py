"""Writing a probe record: the streaming pass (:func:`run_probe`), its resumable parts, the merge of shards.

Per-rank shards are joined by :func:`merge_shards`. The layout is described in
:mod:`inspectnet.probe.record`.
"""

import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectnet.core.devices import resolve_device
from inspectnet.core.distributed import GroupWatch, shard_batches, share_from_main, watch_group, world
from inspectnet.core.errors import InspectnetError
from inspectnet.core.progress import progress
from inspectnet.core.results import SCHEMA_VERSION, library_versions
from inspectnet.core.storage import atomic_write_json, output_dir, read_json
from inspectnet.data import ImageDataset
from inspectnet.data.index import INDEX_FILE, FolderIndex, index_folder, index_from_json
from inspectnet.data.loading import check_workers, data_loader
from inspectnet.models.layers import PRE_LOGITS, fast_input, model_state, resolve_layers
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe, get_reducer
from inspectnet.probe.npy import NpyWriter, write_rows
from inspectnet.probe.record import (
    FEATURES,
    LABELS,
    LOGITS,
    MANIFEST,
    PROGRESS,
    SHARDS,
    ProbeRecord,
    damage,
    shard_array,
    shard_rows,
)


def _identity(zm: ZooModel, dataset: ImageDataset, layers: list[str], reducer: str, n: int,
              index: FolderIndex | None) -> dict[str, Any]:
    mapping = dataset.label_mapping
    return {"model": zm.spec, "modifications": zm.modifications, "weights_fingerprint": zm.fingerprint(),
            "data": dataset.spec, "data_content": index.digest if index is not None else None,
            "num_samples": n, "layers": layers, "reducer": reducer,
            "input_size": list(zm.data_config["input_size"]),
            "label_mapping": mapping.identity() if mapping is not None else None}


def _stored_index(out: Path) -> FolderIndex | None:
    path = out / INDEX_FILE
    return index_from_json(read_json(path, what="data index")) if path.is_file() else None


def _data_index(out: Path, dataset: ImageDataset) -> FolderIndex | None:
    """The content index of the folder ``dataset`` reads (None for built-in data).

    Only the files that changed since the index stored in the record are hashed.
    """
    folder = dataset.source_folder()
    return index_folder(folder, _stored_index(out)) if folder is not None else None


def _changed_data(out: Path, index: FolderIndex | None) -> str:
    """Why the data no longer matches the record in ``out``: the first changed file, when known."""
    before = _stored_index(out)
    change = index.first_change(before) if index is not None and before is not None else None
    since = f" since {before.indexed_at}" if before is not None else ""
    return (f"--out {out} holds a probe record of other contents of data {index.root if index else '?'}: "
            f"{change or 'its files changed'}{since}; probe into a new folder or delete this one")



def run_probe(zm: ZooModel, dataset: ImageDataset, layers: list[str] | str, out: str | Path, *,
              batch_size: int = 32, limit: int | None = None, device: str = "auto", reducer: str = "absmean",
              num_workers: int = 0, show_progress: bool | None = None, shards: bool = False,
              shard_order: str = "contiguous") -> ProbeRecord:
    """Stream ``dataset`` through ``zm`` once and write a :class:`ProbeRecord` to ``out``.

    Re-running with the same arguments after an interruption resumes after the last batch written.
    Labels are recorded in the model's label space: ``dataset`` is mapped onto ``zm.class_names``
    (:meth:`~inspectnet.data.datasets.ImageDataset.aligned_to`) unless it already is, and the mapping
    is part of the record's identity (a folder probed with another mapping is refused).
    Under ``torchrun`` the ranks share the batches (``shard_order`` ``contiguous`` or ``strided``) and
    write into ``out`` (or, with ``shards``, into per-rank folders under ``out/shards``); every rank
    returns the record.

    Args:
        zm: the model.
        dataset: the data (its transform should be ``zm.transform()``).
        layers: layer specs (see :func:`~inspectnet.models.layers.resolve_layers`).
        out: the record's folder.
        batch_size: samples per forward pass.
        limit: probe only the first ``limit`` samples.
        device: where to run the model (``"auto"``: CUDA when present).
        reducer: how each layer's maps become one value per channel (see :data:`~inspectnet.probe.hooks.REDUCERS`).
        num_workers: data loader processes.
        show_progress: show a progress bar (None: when stderr is a terminal).
        shards: under ``torchrun``, write per-rank shard folders instead of one shared set of arrays.
        shard_order: ``"contiguous"`` or ``"strided"`` (see :func:`~inspectnet.core.distributed.shard_batches`).

    Returns:
        The record.

    Raises:
        InspectnetError: ``batch_size`` or ``limit`` is below 1, the data has no samples, or ``out`` holds
            another record.

    Examples:
        >>> import tempfile
        >>> from inspectnet.models.zoo import load_model; from inspectnet.data import load_data
        >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16, seed=0)
        >>> rec = run_probe(zm, load_data("digits", zm.transform()), "layer3,layer4", tempfile.mkdtemp(), limit=8,
        ...                 show_progress=False)
        >>> rec.layers, rec.activations("layer4").shape, len(rec)
        (['layer3', 'layer4'], (8, 512), 8)
    """
    if batch_size < 1:
        raise InspectnetError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise InspectnetError(f"--limit must be at least 1, got {limit}")
    check_workers(num_workers)
    out = Path(out)
    get_reducer(reducer)  # fail on a bad reducer before touching the output folder
    dataset = dataset.aligned_to(zm.class_names)
    names = [n for n in resolve_layers(zm.model, layers, head_name=zm.head_name) if n != PRE_LOGITS]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InspectnetError(f"data {dataset.spec!r} has no samples to probe")
    index = _data_index(out, dataset) if world()[1] == 0 else None
    index = share_from_main(index)
    identity = _identity(zm, dataset, names, reducer, n, index)
    size, rank = world()
    plan = {"world": size, "order": shard_order, "batch_size": batch_size, "shards": shards}
    shard_batches(n, batch_size, size, rank, shard_order)  # a bad order fails before the folder is touched
    with watch_group("the probe pass") as watch:
        part = _open_part(out, identity, plan, rank, index)
        if part is not None:
            _probe_part(zm, dataset, names, reducer, identity, part, device=device, num_workers=num_workers,
                        show_progress=show_progress, watch=watch)
        watch.barrier()
        manifest = _finish(out, dataset, plan) if rank == 0 else None
        manifest = share_from_main(manifest)
        if manifest is not None and not _is_complete(out):  # a rank that shares no filesystem with rank 0
            atomic_write_json(out / MANIFEST, manifest)
    return ProbeRecord.load(out)



@dataclasses.dataclass
class _Part:
    """What one rank writes: its remaining batches, where their rows go, and its progress file."""

    root: Path               # the record folder
    rank: int
    plan: dict[str, Any]
    folder: Path             # where this rank's arrays are: the record folder, or its shard folder
    progress: Path
    rows: int                # rows of the arrays in ``folder`` (all samples, or this shard's)
    batches: list[range]     # the global batches still to compute, in order
    positions: list[int]     # row of ``folder``'s arrays where each of those batches starts
    done: int                # samples of this rank's share already written



def _part_paths(out: Path, plan: dict[str, Any], rank: int) -> tuple[Path, Path]:
    """(folder its arrays go to, progress file) of ``rank`` under ``plan``."""
    if plan["shards"]:
        folder = out / SHARDS / f"rank-{rank}-of-{plan['world']}"
        return folder, folder / PROGRESS
    return out, out / (PROGRESS if plan["world"] == 1 else f"progress-rank-{rank}-of-{plan['world']}.json")



def _open_part(out: Path, identity: dict[str, Any], plan: dict[str, Any], rank: int,
               index: FolderIndex | None = None) -> _Part | None:
    """This rank's share of the pass after what is already written; None when the record is complete.

    A folder holding another record, something else, or a record being written under another plan
    (number of processes, shard order, batch size, shards or not) is refused.
    """
    if out.exists() and not out.is_dir():
        raise InspectnetError(f"--out {out} is a file; expected a folder for the probe record")
    states = [read_json(p, what="probe progress file")
              for p in sorted([*out.glob("progress*.json"), *out.glob(f"{SHARDS}/*/{PROGRESS}")])]
    if (out / MANIFEST).is_file():
        states.append(read_json(out / MANIFEST, what="probe record manifest"))
    if not states and out.exists() and any(not _ours(p) for p in out.iterdir()):
        raise InspectnetError(f"--out {out} is not empty and holds no probe record; choose an empty folder")
    for state in states:
        if state.get("identity") != identity:
            diff = [k for k in identity if state.get("identity", {}).get(k) != identity[k]]
            if "data_content" in diff and set(diff) <= {"data_content", "num_samples"}:
                raise InspectnetError(_changed_data(out, index))
            raise InspectnetError(f"--out {out} holds a different probe record (differs in: {', '.join(diff)}); "
                                  f"choose another folder or delete it")
    if index is not None and rank == 0:  # the files' times as now: the next run hashes only what changes
        output_dir(out)
        atomic_write_json(out / INDEX_FILE, index.to_json())
    if plan["world"] == 1 and not plan["shards"]:
        _repair(out, identity, plan)
    if _is_complete(out):
        return None
    for state in states:
        other = state.get("plan", {"world": 1, "shards": False})
        if "done" in state and _plan_key(other) != _plan_key(plan):
            raise InspectnetError(
                f"--out {out} holds a probe record being written {_describe(other)}; resume it the same way "
                f"(not {_describe(plan)}) or delete the folder")
    folder, progress = _part_paths(out, plan, rank)
    done = int(read_json(progress, what="probe progress file")["done"]) if progress.exists() else 0
    if not progress.exists():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(progress, {"identity": identity, "plan": plan, "done": 0})
    n, size, bs = identity["num_samples"], plan["world"], plan["batch_size"]
    share = shard_batches(n, bs, size, rank, plan["order"])
    rows = sum(len(b) for b in share) if plan["shards"] else n
    if size == 1:  # one process resumes the prefix it wrote, whatever batch size wrote it
        share = [range(s, min(s + bs, n)) for s in range(done, n, bs)]
    skip, local = (0 if size == 1 else done), done
    batches, positions = [], []
    for b in share:
        if skip >= len(b):
            skip -= len(b)
            continue
        b, skip = b[skip:], 0
        batches.append(b)
        positions.append(local if plan["shards"] else b.start)
        local += len(b)
    return _Part(out, rank, plan, folder, progress, rows, batches, positions, done)



def _repair(out: Path, identity: dict[str, Any], plan: dict[str, Any]) -> None:
    """Before one process resumes or returns ``out`` (whose identity matched), check its arrays.

    Rows already written are trusted only when every array is intact. A missing or truncated file (or
    a lost manifest) sends the run back to the first sample, the damaged files removed to be written
    again.
    """
    progress_path = out / PROGRESS
    done = int(read_json(progress_path, what="probe progress file")["done"]) if progress_path.is_file() else 0
    if done == 0 and not _is_complete(out):
        return
    manifest = read_json(out / MANIFEST, what="probe record manifest") if (out / MANIFEST).is_file() else None
    if manifest is not None and SHARDS in manifest:
        return  # its arrays are in the shard folders, each named when it is read
    problems = damage(out, manifest) if manifest is not None else {MANIFEST: f"{MANIFEST} is missing"}
    if not problems:
        return
    sys.stderr.write(f"probe record {out} is damaged ({'; '.join(problems.values())}); probing all "
                     f"{identity['num_samples']} samples again to repair it\n")
    if manifest is not None:
        for name in problems:  # only arrays this record lists: the files inspectnet wrote
            (out / name).unlink(missing_ok=True)
        atomic_write_json(out / MANIFEST, {**manifest, "complete": False})
    atomic_write_json(progress_path, {"identity": identity, "plan": plan, "done": 0})



def _plan_key(plan: dict[str, Any]) -> tuple:
    """What must not change while a record is being written (one process may change its batch size)."""
    if plan.get("world", 1) == 1:
        return 1, bool(plan.get("shards"))
    return plan["world"], bool(plan.get("shards")), plan["order"], plan["batch_size"]



def _describe(plan: dict[str, Any]) -> str:
    if plan.get("world", 1) == 1:
        return "by one process" + (" into a shard folder" if plan.get("shards") else "")
    return (f"by {plan['world']} processes ({plan['order']} shares of batch size {plan['batch_size']}"
            + (", per-rank shard folders)" if plan.get("shards") else ")"))



def _ours(path: Path) -> bool:
    """Whether ``path`` is a file or folder a probe record (any rank's) writes."""
    return (path.name in (MANIFEST, SHARDS, "layers", INDEX_FILE) or path.suffix == ".npy"
            or (path.name.startswith("progress") and path.suffix == ".json") or path.name.endswith(".part"))



def _is_complete(out: Path) -> bool:
    return (out / MANIFEST).is_file() and bool(read_json(out / MANIFEST).get("complete"))



def _probe_part(zm: ZooModel, dataset: ImageDataset, names: list[str], reducer: str, identity: dict[str, Any],
                part: _Part, *, device: str, num_workers: int, show_progress: bool | None,
                watch: GroupWatch) -> None:
    """Compute this rank's remaining batches and write their rows, saving progress after each batch."""
    if not part.batches:
        return
    dev = resolve_device(device)
    loader = data_loader(dataset, batch_sampler=[list(b) for b in part.batches], num_workers=num_workers)
    writers: dict[str, NpyWriter] = {}
    done = part.done
    try:
        with model_state(zm.model, device=dev, training=False), torch.inference_mode(), Probe(
                zm.model, [*names, PRE_LOGITS], reducer=reducer, head_name=zm.head_name) as hooks:
            for (x, y), pos in zip(progress(loader, total=len(loader), desc="probe", enabled=show_progress),
                                   part.positions):
                watch.check()
                logits = zm.model(fast_input(x.to(dev, non_blocking=True)))
                block = {FEATURES: hooks.outputs[PRE_LOGITS], LOGITS: logits, LABELS: y}
                block.update({f"layers/{k}": hooks.outputs[k] for k in names})
                if not writers:
                    writers = open_writers(part.folder, block, part.rows)
                    if part.rank == 0:
                        _write_manifest(part.root, zm, dataset, identity, block, part.plan["batch_size"],
                                        complete=False, layouts={k: hooks.layouts[k].to_dict() for k in names})
                for key, value in block.items():
                    writers[key].write(pos, value.float().cpu().numpy() if key != LABELS else value.numpy())
                done += len(y)
                atomic_write_json(part.progress, {"identity": identity, "plan": part.plan, "done": done})
    finally:
        for w in writers.values():
            w.close()



def _finish(out: Path, dataset: ImageDataset, plan: dict[str, Any]) -> dict[str, Any]:
    """Rank 0, once every rank is done: the manifest marked complete (with the shard plan, if sharded)."""
    manifest = read_json(out / MANIFEST, what="probe record manifest")
    if manifest.get("complete"):
        return manifest
    n = manifest["num_samples"]
    if plan["world"] > 1 or plan["shards"]:
        for r in range(plan["world"]):
            _, progress_path = _part_paths(out, plan, r)
            expected = sum(len(b) for b in shard_batches(n, plan["batch_size"], plan["world"], r, plan["order"]))
            if progress_path.exists() and read_json(progress_path)["done"] != expected:
                raise InspectnetError(f"rank {r} reported the end of its share of {out}, but its progress file "
                                      f"counts {read_json(progress_path)['done']} of {expected} samples")
    manifest.update(complete=True, skipped_files=dataset.skipped)
    if plan["shards"]:
        manifest[SHARDS] = {"world": plan["world"], "order": plan["order"], "batch_size": plan["batch_size"],
                            "folders": [_part_paths(Path("."), plan, r)[0].as_posix() for r in range(plan["world"])]}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest



def merge_shards(root: str | Path) -> ProbeRecord:
    """Join a record's per-rank shard folders into one memory-mapped record in ``root`` (then delete them).

    Args:
        root: the record's folder.

    Returns:
        The merged record.

    Raises:
        InspectnetError: the record has no shards (or a shard is missing an array).

    Examples:
        >>> rec = merge_shards("runs/rec")       # doctest: +SKIP
    """
    root = Path(root)
    rec = ProbeRecord.load(root)
    if SHARDS not in rec.manifest:
        raise InspectnetError(f"probe record {root} has no per-rank shards to merge (it is one record already)")
    manifest = dict(rec.manifest)
    keys = [FEATURES, LOGITS, LABELS, *(f"layers/{name}" for name in rec.layers)]
    for rel in keys:
        writer = None
        for r in range(manifest[SHARDS]["world"]):
            arr, rows = shard_array(root, manifest, r, rel), shard_rows(manifest, r)
            writer = writer or NpyWriter(root / f"{rel}.npy", (len(rec), *arr.shape[1:]), arr.dtype)
            for start in range(0, len(rows), 4096):  # rows of one shard are runs of whole batches
                write_rows(writer, rows[start:start + 4096], np.asarray(arr[start:start + 4096]))
        writer.close()
    del manifest[SHARDS]
    atomic_write_json(root / MANIFEST, manifest)  # from here on the merged files are the record
    shutil.rmtree(root / SHARDS)
    return ProbeRecord.load(root)



def open_writers(out: Path, block: dict[str, torch.Tensor], n: int) -> dict[str, NpyWriter]:
    """One :class:`~inspectnet.probe.npy.NpyWriter` per array of a batch, sized for ``n`` rows.

    Args:
        out: the record's folder.
        block: one batch's arrays by name (their trailing shape sizes the files).
        n: the number of rows of every file.

    Returns:
        The writers by array name (labels int64, the rest float32).
    """
    return {key: NpyWriter(out / f"{key}.npy", (n, *value.shape[1:]),
                            np.int64 if key == LABELS else np.float32)
            for key, value in block.items()}


def _write_manifest(out: Path, zm: ZooModel, dataset: ImageDataset, identity: dict[str, Any],
                    block: dict[str, torch.Tensor], batch_size: int, *, complete: bool,
                    layouts: dict[str, dict[str, Any]]) -> None:
    old = read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    manifest = {
        "format": "inspectnet-probe-record", "schema_version": SCHEMA_VERSION, "complete": complete,
        "identity": identity, "versions": library_versions(),
        "model": {"spec": zm.spec, "fingerprint": identity["weights_fingerprint"], "head": zm.head_name,
                  "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in zm.data_config.items()}},
        "data": {"spec": dataset.spec, "num_samples": identity["num_samples"], "dataset_size": len(dataset),
                 "label_set": dataset.label_set},
        "num_samples": identity["num_samples"],
        "class_names": zm.class_names,
        "data_class_names": dataset.label_mapping.data_classes if dataset.label_mapping else dataset.class_names,
        "label_mapping": dataset.label_mapping.describe() if dataset.label_mapping else None,
        "reducer": identity["reducer"],
        # where each layer's units were read: channels-first, channels-last or tokens (which ones excluded)
        "layers": [{"name": k.split("/", 1)[1], "shape": list(v.shape[1:]), "layout": layouts[k.split("/", 1)[1]]}
                   for k, v in block.items() if k.startswith("layers/")],
        "features_dim": int(block[FEATURES].shape[1]),
        "batch_sizes": sorted({*old.get("batch_sizes", []), batch_size}),
        "skipped_files": [],
    }
    atomic_write_json(out / MANIFEST, manifest)
