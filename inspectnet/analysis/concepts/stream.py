"""Streaming a layer's spatial maps over a dataset, batch by batch, with the model's logits.

The images are fed as dissection feeds them (resized whole, no crop), so a map cell lines up with
the same region of the image and of its concept masks. Memory does not grow with the number of
images: the maps of a small data set (up to ``cache_bytes``) are replayed, a larger one streams
through the model again on each pass, each batch's maps dropped with it.

:class:`Source` gives one view of the data kinds a discovery can run on: labelled image data
(``load_data`` specs: its labels give class purity; ``shapes`` also carries its concept masks) and
concept data (``load_concepts``: images with masks, no labels).
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from inspectnet.analysis.dissect.dissection import dissection_transform, spatial_maps
from inspectnet.analysis.explain.evidence import ClassEvidence, PooledHead, reads_weights_of, sums_to_logits
from inspectnet.core.errors import InspectnetError
from inspectnet.data.concepts import ConceptDataset
from inspectnet.data.datasets import ImageDataset
from inspectnet.models.layers import PRE_LOGITS, fast_input, resolve_layers
from inspectnet.models.zoo import ZooModel, weights_fingerprint
from inspectnet.probe.hooks import Probe

# maps of a data set up to this size are kept after the first pass and replayed by the next ones (one
# forward pass in all); a larger data set streams through the model on every pass, memory bounded
CACHE_BYTES = 256 << 20


@dataclasses.dataclass
class Source:
    """Images by index, with labels (or None) and concept masks (or None).

    Attributes:
        spec: the data's spec string.
        size: the number of images.
        image: the image of an index.
        labels: the (size,) class indices, or None for unlabelled data.
        class_names: the name of each class index.
        masks: the (concepts, H, W) bool masks of an index, or None without concept masks.
        concepts: the labelled concepts' names.
        categories: the category of each labelled concept.
    """

    spec: str
    size: int
    image: Callable[[int], Image.Image]
    labels: np.ndarray | None = None
    class_names: list[str] = dataclasses.field(default_factory=list)
    masks: Callable[[int], np.ndarray] | None = None
    concepts: list[str] = dataclasses.field(default_factory=list)
    categories: dict[str, str] = dataclasses.field(default_factory=dict)


def as_source(data: ImageDataset | ConceptDataset, limit: int | None = None) -> Source:
    """A :class:`Source` over the first ``limit`` items of image data or concept data.

    Args:
        data: an :class:`ImageDataset` (``load_data``) or a :class:`ConceptDataset` (``load_concepts``).
        limit: use only the first ``limit`` images.

    Returns:
        The source.

    Raises:
        InspectnetError: ``limit`` < 1, no images, or data that is neither image data nor concept data.

    Examples:
        >>> from inspectnet.data import load_data
        >>> s = as_source(load_data("shapes?n=8"), limit=4)
        >>> s.size, s.masks(0).shape, s.class_names
        (4, (15, 64, 64), ['no square', 'square'])
    """
    if limit is not None and limit < 1:
        raise InspectnetError(f"--limit must be at least 1, got {limit}")
    n = len(data) if limit is None else min(limit, len(data))
    if n == 0:
        raise InspectnetError(f"data {getattr(data, 'spec', '')!r} has no images")
    if isinstance(data, ConceptDataset):
        return Source(data.spec, n, data.image, masks=data.masks, concepts=list(data.concepts),
                      categories=dict(data.categories))
    if not isinstance(data, ImageDataset):
        raise InspectnetError(f"cannot discover concepts on a {type(data).__name__}; expected image data "
                              f"(load_data) or concept data (load_concepts)")
    labels = np.asarray(data.labels[:n]) if data.labelled else None
    src = Source(data.spec, n, data.image, labels=labels, class_names=list(data.class_names))
    masks = getattr(data, "masks", None)
    if isinstance(masks, np.ndarray):  # shapes data carries its concept masks as an array
        src.masks, src.concepts, src.categories = (lambda i: masks[i]), list(data.concepts), dict(data.categories)
    return src


@dataclasses.dataclass
class Batch:
    """One batch of a :class:`MapStream`.

    Attributes:
        index: the (B,) dataset indices.
        maps: the layer's (B, C, h, w) float32 maps.
        logits: the model's (B, classes) logits.
    """

    index: torch.Tensor
    maps: torch.Tensor
    logits: torch.Tensor


class MapStream:
    """The maps of ``layer`` for every image of ``source``, in batches.

    Args:
        model: a :class:`ZooModel`, or a plain module with ``data_config``.
        source: the images.
        layer: a layer name or alias (``last_stage``, ...).
        data_config: input_size, mean, std for a plain module (a ZooModel brings its own).
        batch_size: images per forward pass.
        device: ``cpu`` or ``cuda``.
        cache_bytes: the most bytes of maps kept for replaying later passes (0: never).

    Raises:
        InspectnetError: ``batch_size`` < 1, a plain module without ``data_config``, a model that is not a
            module, or a ``layer`` that does not name one layer with spatial maps.

    Examples:
        >>> from inspectnet.data import load_data
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=2, input_size=32)
        >>> stream = MapStream(zm, as_source(load_data("shapes?n=3")), "layer4", batch_size=2)
        >>> [tuple(b.maps.shape) for b in stream.batches()]
        [(2, 512, 1, 1), (1, 512, 1, 1)]
    """

    def __init__(self, model: ZooModel | nn.Module, source: Source, layer: str, *,
                 data_config: dict[str, Any] | None = None, batch_size: int = 32, device: str = "cpu",
                 cache_bytes: int = CACHE_BYTES):
        if batch_size < 1:
            raise InspectnetError(f"--batch-size must be at least 1, got {batch_size}")
        self.zoo = model if isinstance(model, ZooModel) else None
        if self.zoo is not None:
            self.net, cfg, self.name = model.model, data_config or model.data_config, model.spec
        elif isinstance(model, nn.Module):
            if data_config is None:
                raise InspectnetError("discovering concepts in a plain module needs data_config (input_size, mean, std)")
            self.net, cfg, self.name = model, data_config, type(model).__name__
        else:
            raise InspectnetError(f"cannot discover concepts in a {type(model).__name__}; expected a ZooModel or "
                                  f"nn.Module")
        names = resolve_layers(self.net, layer, head_name=getattr(model, "head_name", None))
        if len(names) != 1 or names[0] == PRE_LOGITS:
            raise InspectnetError(f"--layer {layer!r} must name one layer with spatial maps, got {names}")
        self.layer, self.source, self.batch_size = names[0], source, batch_size
        self.cache_bytes, self._cache, self._cached_all = cache_bytes, None, False
        self.class_names = list(model.class_names) if self.zoo is not None else []
        self.data_config, self.transform = cfg, dissection_transform(cfg)
        self.device = torch.device(device)
        self.net.to(self.device).eval()

    def fingerprint(self) -> str:
        """The weight fingerprint of the model.

        Returns:
            The zoo model's fingerprint, or that of a plain module's weights.
        """
        return self.zoo.fingerprint() if self.zoo is not None else weights_fingerprint(self.net)

    def inputs(self, index: list[int]) -> torch.Tensor:
        """The model inputs of the given images, transformed as dissection feeds them.

        Args:
            index: dataset indices of the images.

        Returns:
            The (B, C, H, W) inputs on the stream's device.
        """
        return torch.stack([self.transform(self.source.image(i)) for i in index]).to(self.device)

    def batches(self) -> Iterator[Batch]:
        """Every batch of the source, in order.

        The first pass keeps its batches while they fit in ``cache_bytes``; if the whole source fit, later
        passes replay them instead of running the model.

        Yields:
            One :class:`Batch` per ``batch_size`` images.
        """
        if self._cache is not None and self._cached_all:
            yield from self._cache
            return
        cache, size = [], 0
        for batch in self._forward_batches():
            if cache is not None:
                size += batch.maps.numel() * batch.maps.element_size() + batch.logits.numel() * 4
                if size <= self.cache_bytes:
                    cache.append(batch)
                else:
                    cache = None
            yield batch
        self._cache, self._cached_all = cache, cache is not None

    def _forward_batches(self) -> Iterator[Batch]:
        with Probe(self.net, [self.layer], reducer="full") as probe:
            for s in range(0, self.source.size, self.batch_size):
                index = list(range(s, min(s + self.batch_size, self.source.size)))
                # no_grad per batch, never around the yield: the consumer trains autoencoders with gradients
                with torch.no_grad():
                    logits = self.net(fast_input(self.inputs(index)))  # as the probe pass feeds it
                    maps = spatial_maps(probe.outputs[self.layer], self.layer).float()  # the probe gives maps
                yield Batch(torch.tensor(index), maps.cpu(), logits.float().cpu())

    def pooled_evidence(self, batch: Batch) -> ClassEvidence | None:
        """The exact class-evidence module when ``layer``'s map is the one the head averages, else None.

        Checked on a real batch of the stream, so no extra forward pass: the head applied to the spatial
        mean of the layer's maps must give the model's own logits, every class, to float tolerance. Heads
        with a LayerNorm after the pooling fail it and are not split by concept (the norm is not additive
        over parts).

        Args:
            batch: a batch of this stream (its maps and the model's logits on the same images).

        Returns:
            The :class:`~inspectnet.analysis.explain.evidence.ClassEvidence` on grids, or None.
        """
        if self.zoo is None or not reads_weights_of(self.net.get_submodule(self.zoo.head_name)):
            return None
        # the evidence is computed on grids directly (token models included); a norm or a non-linearity
        # between the pooling and the head, or a head that reads a class token, fails the check below
        module = ClassEvidence(self.net, PooledHead(self.zoo.head_name))
        with torch.no_grad():
            offset = module.offset()
            if len(offset) != batch.logits.shape[1]:  # something after the head changes the logits' width
                return None
            # a 1×1 grid of the spatial mean: by linearity its evidence is the sum of the full grid's
            mean = batch.maps.mean((2, 3), keepdim=True).to(offset.device)
            try:
                total = module.maps_for(mean, torch.arange(len(offset), device=offset.device)).flatten(1)
            except RuntimeError:  # the head cannot read this layer's channels at all
                return None
            total = total.cpu() + offset.cpu()  # under no_grad: the offset may be the bias parameter itself
        if sums_to_logits(total, batch.logits) is not None:
            return None
        return module
