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

Every array is checked against the manifest (present, N rows, the recorded width and dtype, the
file as long as its header says) when a record is loaded and before a run resumes: loading a
damaged record fails naming the file, and re-running the command that made it repairs it (the
damaged files are written again by a new pass over the data). Records split into per-rank shards
are checked as each shard's file is read.

The batch size is not part of a record's identity: a run may resume with another
``--batch-size`` (after running out of memory, say). Batch composition changes only which
floating-point kernels run, so such a record agrees with a one-pass record to float32 rounding
(tested: |Δ| ≤ 1e-5 · max|value|, identical predictions); the manifest lists every batch size used
(``batch_sizes``).

Under ``torchrun`` (:mod:`inspectnet.core.distributed`) each rank computes its share of whole
batches and writes its rows at their global positions of the same files, with its own
``progress-rank-R-of-P.json``; with ``shards=True`` each rank writes its rows into its own folder
``shards/rank-R-of-P/`` instead (same files, its rows only), which
:func:`~inspectnet.probe.recorder.merge_shards` (``inspectnet merge``) joins into one record and
:class:`ProbeRecord` joins in memory. Rank 0 marks the record complete once every rank is done; each
rank resumes its own share.
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.core.distributed import shard_batches
from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import read_json
from inspectnet.core.streaming import row_blocks
from inspectnet.models.layers import PRE_LOGITS
from inspectnet.probe.npy import npy_header

MANIFEST = "manifest.json"



PROGRESS = "progress.json"



SHARDS = "shards"



FEATURES, LOGITS, LABELS = "features", "logits", "labels"



@dataclasses.dataclass(frozen=True)
class ProbeRecord:
    """A finished probe record, its arrays memory-mapped read-only.

    Examples:
        >>> rec = ProbeRecord.load("runs/probe")            # doctest: +SKIP
        >>> rec.activations("layer4").shape, rec.features.shape, rec.accuracy()   # doctest: +SKIP
    """

    root: Path
    manifest: dict[str, Any]
    _joined: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, root: str | Path) -> "ProbeRecord":
        """Open the finished record in ``root``, checking that it is complete and intact.

        Args:
            root: the record's folder.

        Returns:
            The record.

        Raises:
            InspectnetError: the folder is no probe record, is incomplete (an interrupted run), or has damaged arrays.
        """
        root = Path(root)
        manifest = read_json(root / MANIFEST, what="probe record manifest")
        if manifest.get("format") != "inspectnet-probe-record":
            raise InspectnetError(f"{root} is not an inspectnet probe record")
        if not manifest.get("complete"):
            raise InspectnetError(f"probe record {root} is incomplete (interrupted?); re-run the same "
                                  f"`inspectnet probe` command to finish it")
        problems = [] if SHARDS in manifest else list(damage(root, manifest).values())  # shards: when read
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise InspectnetError(f"probe record {root} is damaged: {problems[0]}{more}; re-run the "
                                  f"`inspectnet probe` command that made it to repair it")
        return cls(root, manifest)

    def _array(self, rel: str) -> np.ndarray:
        if SHARDS not in self.manifest:
            return np.load(self.root / f"{rel}.npy", mmap_mode="r")
        if rel not in self._joined:  # per-rank shards: joined in memory (merge_shards writes one file)
            self._joined[rel] = _join_shards(self.root, self.manifest, rel)
        return self._joined[rel]

    @property
    def layers(self) -> list[str]:
        """The recorded layers, in recording order."""
        return [entry["name"] for entry in self.manifest["layers"]]

    def activations(self, layer: str) -> np.ndarray:
        """The reduced activations of ``layer``.

        Args:
            layer: a recorded layer (``pre_logits`` gives the features).

        Returns:
            The (N, K) memory-mapped array.

        Raises:
            InspectnetError: the record has no such layer.
        """
        if layer == PRE_LOGITS:
            return self.features
        if layer not in self.layers:
            raise InspectnetError(f"record {self.root} has no layer {layer!r}; it has {', '.join(self.layers)}")
        return self._array(f"layers/{layer}")

    @property
    def features(self) -> np.ndarray:
        """The (N, D) penultimate features (the classifier's input), memory-mapped."""
        return self._array(FEATURES)

    @property
    def logits(self) -> np.ndarray:
        """The (N, C) logits, memory-mapped."""
        return self._array(LOGITS)

    @property
    def labels(self) -> np.ndarray:
        """The (N,) labels in the model's label space (-1 = unlabelled), memory-mapped."""
        return self._array(LABELS)

    @property
    def predictions(self) -> np.ndarray:
        """Top-1 class per sample, read block by block (never the whole (N, C) logits in memory)."""
        logits = self.logits
        return np.concatenate([logits[rows].argmax(axis=1) for rows in row_blocks(len(logits))])

    @property
    def class_names(self) -> list[str]:
        """The model's class names, which the labels and logits index."""
        return list(self.manifest["class_names"])

    @property
    def fingerprint(self) -> str:
        """Identity of what was recorded (model weights + data + layers), for cache keys."""
        ident = self.manifest["identity"]
        return f"{ident['weights_fingerprint']}:{ident['data']}:{ident['num_samples']}"

    def __len__(self) -> int:
        return int(self.manifest["num_samples"])

    def accuracy(self) -> float:
        """Top-1 accuracy of the recorded logits on the labelled samples.

        Returns:
            The fraction of labelled samples whose top logit is their label.

        Raises:
            InspectnetError: the record has no labelled sample.
        """
        labels = np.asarray(self.labels)
        mask = labels >= 0
        if not mask.any():
            raise InspectnetError(f"record {self.root} has no labels")
        return float((self.predictions[mask] == labels[mask]).mean())



def expected_arrays(manifest: dict[str, Any]) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
    """Every array a record's manifest promises.

    Args:
        manifest: the record's manifest.

    Returns:
        Relative name -> (shape, dtype); a None in a shape means any width.
    """
    n = int(manifest["num_samples"])
    arrays = {FEATURES: ((n, int(manifest["features_dim"])), np.dtype(np.float32)),
              LOGITS: ((n, None), np.dtype(np.float32)), LABELS: ((n,), np.dtype(np.int64))}
    arrays.update({f"layers/{e['name']}": ((n, *e["shape"]), np.dtype(np.float32)) for e in manifest["layers"]})
    return arrays



def damage(root: str | Path, manifest: dict[str, Any]) -> dict[str, str]:
    """What is wrong with each damaged array of a record (missing, another shape or dtype, truncated).

    Args:
        root: the record's folder.
        manifest: its manifest.

    Returns:
        The problem, keyed by the file name relative to ``root``; empty when every array is intact.
    """
    problems = {}
    for rel, (shape, dtype) in expected_arrays(manifest).items():
        name = f"{rel}.npy"
        path = Path(root) / name
        if not path.is_file():
            problems[name] = f"{name} is missing"
            continue
        try:
            got, got_dtype, offset = npy_header(path)
        except (OSError, ValueError, SyntaxError):
            problems[name] = f"{name} has no valid .npy header"
            continue
        size = offset + int(np.prod(got, dtype=np.int64)) * got_dtype.itemsize
        if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)) \
                or got_dtype != dtype:
            want = tuple("*" if w is None else w for w in shape)
            problems[name] = f"{name} holds {got} {got_dtype}, expected {want} {dtype}"
        elif path.stat().st_size < size:
            problems[name] = f"{name} is truncated ({path.stat().st_size} of {size} bytes)"
    return problems



def shard_rows(manifest: dict[str, Any], rank: int) -> np.ndarray:
    """Global sample positions of the rows in ``rank``'s shard, in order.

    Args:
        manifest: the record's manifest (its shard plan).
        rank: the rank.

    Returns:
        The positions.
    """
    plan = manifest[SHARDS]
    batches = shard_batches(manifest["num_samples"], plan["batch_size"], plan["world"], rank, plan["order"])
    return np.concatenate([np.arange(b.start, b.stop) for b in batches]) if batches else np.zeros(0, np.int64)



def shard_array(root: Path, manifest: dict[str, Any], rank: int, rel: str) -> np.ndarray:
    """One array of ``rank``'s shard folder, memory-mapped read-only.

    Args:
        root: the record's folder.
        manifest: its manifest.
        rank: the rank whose shard is read.
        rel: the array's name relative to the shard (e.g. ``layers/layer4``).

    Returns:
        The array.

    Raises:
        InspectnetError: the shard lacks the array.
    """
    folder = root / manifest[SHARDS]["folders"][rank]
    path = folder / f"{rel}.npy"
    if not path.is_file():
        raise InspectnetError(f"probe record {root} is split into per-rank shards and shard {folder.name} has no "
                              f"{rel}.npy; copy every rank's {SHARDS}/ folder here, or re-run the probe")
    return np.load(path, mmap_mode="r")



def _join_shards(root: Path, manifest: dict[str, Any], rel: str) -> np.ndarray:
    """One array of a sharded record, its rows put back at their global positions (in memory)."""
    parts = [(shard_rows(manifest, r), shard_array(root, manifest, r, rel))
             for r in range(manifest[SHARDS]["world"])]
    first = next(a for _, a in parts)
    joined = np.empty((manifest["num_samples"], *first.shape[1:]), dtype=first.dtype)
    for rows, arr in parts:
        joined[rows] = arr
    return joined
