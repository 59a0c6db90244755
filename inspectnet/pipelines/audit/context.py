"""What the stages of one audit share while it runs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from inspectnet.data import ImageDataset, load_data
from inspectnet.data.subsets import spread_subset
from inspectnet.models.zoo import ModelAbout, ModelRef, ZooModel
from inspectnet.pipelines.audit.config import AuditConfig
from inspectnet.probe.record import ProbeRecord


@dataclasses.dataclass
class AuditContext:
    """What the stages share while one audit runs."""

    ref: ModelRef
    about: ModelAbout
    out: Path
    config: AuditConfig
    results: dict[str, Any]
    num_workers: int = 0
    shard_order: str = "contiguous"
    index_order: bool = False
    data_content: dict[str, str] = dataclasses.field(default_factory=dict)  # {data spec: content digest}
    _datasets: dict[str, ImageDataset] = dataclasses.field(default_factory=dict)
    _zm: ZooModel | None = None

    @property
    def zm(self) -> ZooModel:
        """The model, loaded on first use, with the class names the audit settled on.

        A new :class:`ZooModel` around the same module: the caller's object keeps its own class
        names (the stages restore the module's mode and device themselves).
        """
        names = list(self.about.class_names)
        if self._zm is None or self._zm.class_names != names:
            self._zm = dataclasses.replace(self.ref.load(), class_names=names)
        return self._zm

    def raw_dataset(self, spec: str) -> ImageDataset:
        """``spec`` loaded with the model's transform, its labels the data's own (loaded once).

        Args:
            spec: a data spec.

        Returns:
            The dataset.
        """
        if spec not in self._datasets:
            self._datasets[spec] = load_data(spec, self.zm.transform())
        return self._datasets[spec]

    def dataset(self, spec: str, limit: int | None = None) -> ImageDataset:
        """``spec`` with its classes mapped onto the model's; with ``limit``, an evenly spread subset of that size.

        Args:
            spec: a data spec.
            limit: the subset's size, or None for all.

        Returns:
            The dataset.
        """
        return spread_subset(self.aligned(spec), limit)

    def aligned(self, spec: str) -> ImageDataset:
        """``spec`` whole, its classes mapped onto the model's.

        Args:
            spec: a data spec.

        Returns:
            The dataset.
        """
        return self.raw_dataset(spec).aligned_to(self.zm.class_names, class_map=self.config.class_map,
                                                 strict=spec == self.config.data)

    def eval_dataset(self) -> ImageDataset:
        """The evaluation data as probed: ``eval_data`` (or ``data``, in-sample) at its limit.

        Returns:
            The dataset.
        """
        cfg = self.config
        return self.dataset(cfg.eval_data or cfg.data, cfg.eval_limit if cfg.eval_data else cfg.limit)

    def records(self) -> tuple[ProbeRecord, ProbeRecord]:
        """The probe records of the audit; in-sample audits evaluate on the train record itself.

        Returns:
            ``(train record, eval record)``.
        """
        train = ProbeRecord.load(self.out / "probe" / "train")
        return train, (ProbeRecord.load(self.out / "probe" / "eval") if self.config.eval_data else train)

    @property
    def layer(self) -> str:
        """The analysed layer, as the probe stage resolved it."""
        return self.results["probe"]["result"]["analysed_layer"]

    def classes_present(self, split: str) -> list[int]:
        """The model classes with labelled samples in the ``train`` or ``eval`` record.

        Args:
            split: ``"train"`` or ``"eval"``.

        Returns:
            The class indices.
        """
        return self.results["probe"]["result"][split]["classes_present"]

    def rel(self, path: str | Path) -> str:
        """A path relative to the audit folder (card.json stays valid when the folder moves).

        Args:
            path: a path inside the audit folder.

        Returns:
            The relative path as text.
        """
        return str(Path(path).resolve().relative_to(self.out.resolve()))


def describe_error(exc: BaseException) -> str:
    """One line naming an error: its type and message.

    Args:
        exc: the error.

    Returns:
        ``"Type: message"``.

    Examples:
        >>> describe_error(ValueError("bad"))
        'ValueError: bad'
    """
    return f"{type(exc).__name__}: {exc}"

