"""The probe record: one streaming pass over a dataset, written to disk, read back memory-mapped.

Layout of a record folder::

    manifest.json        identity (model, weights fingerprint, data, layers, reducer) + shapes
    progress.json        samples written so far (rewritten atomically after each batch)
    features.npy         (N, d)  penultimate features f(x) = the classifier's input
    logits.npy           (N, C)
    labels.npy           (N,)    int64, -1 = unlabelled
    layers/NAME.npy      (N, K)  reduced activation of each probed layer

Arrays are preallocated ``.npy`` files written batch by batch with plain file writes, so memory
does not grow with the dataset. A re-run with the same arguments resumes after the last sample
written; a folder holding a different record is refused. ``complete`` in the manifest is set
only after the last batch is on disk.
"""

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectnet.core.devices import resolve_device
from inspectnet.core.errors import InspectnetError
from inspectnet.core.progress import progress
from inspectnet.core.results import SCHEMA_VERSION, library_versions
from inspectnet.core.storage import atomic_write_json, read_json
from inspectnet.core.streaming import row_blocks
from inspectnet.data import ImageDataset
from inspectnet.models.layers import PRE_LOGITS, model_state, resolve_layers
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe, get_reducer

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FEATURES, LOGITS, LABELS = "features", "logits", "labels"


@dataclasses.dataclass(frozen=True)
class ProbeRecord:
    """A finished probe record, its arrays memory-mapped read-only.

    >>> rec = ProbeRecord.load("runs/probe")            # doctest: +SKIP
    >>> rec.activations("layer4").shape, rec.features.shape, rec.accuracy()   # doctest: +SKIP
    """

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path) -> "ProbeRecord":
        root = Path(root)
        manifest = read_json(root / MANIFEST, what="probe record manifest")
        if manifest.get("format") != "inspectnet-probe-record":
            raise InspectnetError(f"{root} is not an inspectnet probe record")
        if not manifest.get("complete"):
            raise InspectnetError(f"probe record {root} is incomplete (interrupted?); re-run the same "
                                  f"`inspectnet probe` command to finish it")
        return cls(root, manifest)

    def _array(self, rel: str) -> np.ndarray:
        return np.load(self.root / f"{rel}.npy", mmap_mode="r")

    @property
    def layers(self) -> list[str]:
        return [entry["name"] for entry in self.manifest["layers"]]

    def activations(self, layer: str) -> np.ndarray:
        """(N, K) reduced activations of ``layer`` (``pre_logits`` gives the features)."""
        if layer == PRE_LOGITS:
            return self.features
        if layer not in self.layers:
            raise InspectnetError(f"record {self.root} has no layer {layer!r}; it has {', '.join(self.layers)}")
        return self._array(f"layers/{layer}")

    @property
    def features(self) -> np.ndarray:
        return self._array(FEATURES)

    @property
    def logits(self) -> np.ndarray:
        return self._array(LOGITS)

    @property
    def labels(self) -> np.ndarray:
        return self._array(LABELS)

    @property
    def predictions(self) -> np.ndarray:
        """Top-1 class per sample, read block by block (never the whole (N, C) logits in memory)."""
        logits = self.logits
        return np.concatenate([logits[rows].argmax(axis=1) for rows in row_blocks(len(logits))])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def fingerprint(self) -> str:
        """Identity of what was recorded (model weights + data + layers), for cache keys."""
        ident = self.manifest["identity"]
        return f"{ident['weights_fingerprint']}:{ident['data']}:{ident['num_samples']}"

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def accuracy(self) -> float:
        """Top-1 accuracy of the recorded logits on the labelled samples."""
        labels = np.asarray(self.labels)
        mask = labels >= 0
        if not mask.any():
            raise InspectnetError(f"record {self.root} has no labels")
        return float((self.predictions[mask] == labels[mask]).mean())


class _NpyWriter:
    """A preallocated ``.npy`` file filled by row blocks with ordinary writes (no resident memory)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            arr = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
            del arr
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            got_shape, _, got_dtype = read_header(fh)
            self.offset = fh.tell()
        if tuple(got_shape) != shape or got_dtype != self.dtype:
            raise InspectnetError(f"{path} has shape {got_shape} {got_dtype}, expected {shape} {self.dtype}; "
                                  f"the folder holds a different record")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fh = open(path, "r+b")

    def write(self, start: int, block: np.ndarray) -> None:
        self.fh.seek(self.offset + start * self.row_bytes)
        self.fh.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _identity(zm: ZooModel, dataset: ImageDataset, layers: list[str], reducer: str, n: int) -> dict[str, Any]:
    mapping = dataset.label_mapping
    return {"model": zm.spec, "modifications": zm.modifications, "weights_fingerprint": zm.fingerprint(),
            "data": dataset.spec, "num_samples": n, "layers": layers, "reducer": reducer,
            "input_size": list(zm.data_config["input_size"]),
            "label_mapping": mapping.identity() if mapping is not None else None}


def run_probe(zm: ZooModel, dataset: ImageDataset, layers: list[str] | str, out: str | Path, *,
              batch_size: int = 32, limit: int | None = None, device: str = "auto", reducer: str = "absmean",
              num_workers: int = 0, show_progress: bool | None = None) -> ProbeRecord:
    """Stream ``dataset`` through ``zm`` once and write a :class:`ProbeRecord` to ``out``.

    Re-running with the same arguments after an interruption resumes after the last batch written.
    Labels are recorded in the model's label space: ``dataset`` is mapped onto ``zm.class_names``
    (:meth:`~inspectnet.data.datasets.ImageDataset.aligned_to`) unless it already is, and the mapping
    is part of the record's identity (a folder probed with another mapping is refused).

    >>> from inspectnet.models.zoo import load_model; from inspectnet.data import load_data
    >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=28)
    >>> rec = run_probe(zm, load_data("digits", zm.transform()), "layer3,layer4", "/tmp/rec", limit=64)  # doctest: +SKIP
    """
    if batch_size < 1:
        raise InspectnetError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    get_reducer(reducer)  # fail on a bad reducer before touching the output folder
    dataset = dataset.aligned_to(zm.class_names)
    names = [n for n in resolve_layers(zm.model, layers, head_name=zm.head_name) if n != PRE_LOGITS]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InspectnetError(f"data {dataset.spec!r} has no samples to probe")
    identity = _identity(zm, dataset, names, reducer, n)
    done = _resume_point(out, identity)
    if done == n and (out / MANIFEST).exists() and read_json(out / MANIFEST).get("complete"):
        return ProbeRecord.load(out)
    dev = resolve_device(device)
    subset = torch.utils.data.Subset(dataset, range(done, n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    writers: dict[str, _NpyWriter] = {}
    try:
        with model_state(zm.model, device=dev, training=False), torch.inference_mode(), Probe(
                zm.model, [*names, PRE_LOGITS], reducer=reducer, head_name=zm.head_name) as hooks:
            pos = done
            batches = progress(loader, total=len(loader), desc="probe")
            for x, y in batches:
                logits = zm.model(x.to(dev, non_blocking=True))
                block = {FEATURES: hooks.outputs[PRE_LOGITS], LOGITS: logits, LABELS: y}
                block.update({f"layers/{k}": hooks.outputs[k] for k in names})
                if not writers:
                    writers = _open_writers(out, block, n)
                    _write_manifest(out, zm, dataset, identity, block, complete=False)
                for key, value in block.items():
                    writers[key].write(pos, value.float().cpu().numpy() if key != LABELS else value.numpy())
                pos += len(y)
                for w in writers.values():
                    w.fh.flush()
                atomic_write_json(out / PROGRESS, {"identity": identity, "done": pos})
    finally:
        for w in writers.values():
            w.close()
    manifest = read_json(out / MANIFEST)
    manifest.update(complete=True, skipped_files=dataset.skipped)
    atomic_write_json(out / MANIFEST, manifest)
    return ProbeRecord.load(out)


def _resume_point(out: Path, identity: dict[str, Any]) -> int:
    """Samples already written for this identity; a folder holding something else is refused."""
    if out.exists() and not out.is_dir():
        raise InspectnetError(f"--out {out} is a file; expected a folder for the probe record")
    prog_path = out / PROGRESS
    if not prog_path.exists():
        if out.exists() and any(out.iterdir()):
            raise InspectnetError(f"--out {out} is not empty and holds no probe record; choose an empty folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(prog_path, {"identity": identity, "done": 0})
        return 0
    prog = read_json(prog_path, what="probe progress file")
    if prog.get("identity") != identity:
        diff = [k for k in identity if prog.get("identity", {}).get(k) != identity[k]]
        raise InspectnetError(f"--out {out} holds a different probe record (differs in: {', '.join(diff)}); "
                              f"choose another folder or delete it")
    return int(prog["done"])


def _open_writers(out: Path, block: dict[str, torch.Tensor], n: int) -> dict[str, _NpyWriter]:
    return {key: _NpyWriter(out / f"{key}.npy", (n, *value.shape[1:]),
                            np.int64 if key == LABELS else np.float32)
            for key, value in block.items()}


def _write_manifest(out: Path, zm: ZooModel, dataset: ImageDataset, identity: dict[str, Any],
                    block: dict[str, torch.Tensor], *, complete: bool) -> None:
    manifest = {
        "format": "inspectnet-probe-record", "schema_version": SCHEMA_VERSION, "complete": complete,
        "identity": identity, "versions": library_versions(),
        "model": {"spec": zm.spec, "fingerprint": identity["weights_fingerprint"], "head": zm.head_name,
                  "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in zm.data_config.items()}},
        "data": {"spec": dataset.spec, "num_samples": identity["num_samples"], "dataset_size": len(dataset)},
        "num_samples": identity["num_samples"],
        "class_names": zm.class_names,
        "data_class_names": dataset.label_mapping.data_classes if dataset.label_mapping else dataset.class_names,
        "label_mapping": dataset.label_mapping.describe() if dataset.label_mapping else None,
        "reducer": identity["reducer"],
        "layers": [{"name": k.split("/", 1)[1], "shape": list(v.shape[1:])}
                   for k, v in block.items() if k.startswith("layers/")],
        "features_dim": int(block[FEATURES].shape[1]),
        "skipped_files": [],
    }
    atomic_write_json(out / MANIFEST, manifest)
