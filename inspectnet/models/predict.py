"""Top-k predictions with class names and probabilities."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inspectnet.core.devices import resolve_device
from inspectnet.core.errors import InspectnetError
from inspectnet.data import FilesDataset, ImageDataset
from inspectnet.models.layers import model_state
from inspectnet.models.zoo import ZooModel


def predict(zm: ZooModel, images: Sequence[str | Path] | ImageDataset, *, topk: int = 5,
            batch_size: int = 32, device: str = "auto") -> list[dict[str, Any]]:
    """The top classes and their probabilities for image files or a dataset.

    Args:
        zm: the model.
        images: image files, or a dataset (its transform is replaced by the model's).
        topk: classes per image.
        batch_size: images per forward pass.
        device: where to run the model (``"auto"``: CUDA when present).

    Returns:
        ``[{"image", "top": [{"index", "label", "prob"}, ...]}, ...]``, classes by falling probability.

    Raises:
        InspectnetError: ``topk`` is below 1.

    Examples:
        >>> from inspectnet import load_model, load_data
        >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
        >>> out = predict(zm, load_data("digits", zm.transform()), topk=2)  # doctest: +SKIP
    """
    if topk < 1:
        raise InspectnetError(f"--topk must be at least 1, got {topk}")
    ds = images if isinstance(images, ImageDataset) else FilesDataset(images)
    ds = ds.with_transform(zm.transform())
    k = min(topk, zm.num_classes)
    dev = resolve_device(device)
    results = []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
    with model_state(zm.model, device=dev, training=False), torch.inference_mode():
        index = 0
        for x, _ in loader:
            probs = zm.model(x.to(dev)).float().softmax(dim=1).cpu()
            top = probs.topk(k, dim=1)
            for values, indices in zip(top.values, top.indices):
                results.append({"image": ds.name(index), "top": [
                    {"index": int(i), "label": zm.class_names[int(i)], "prob": float(v)}
                    for v, i in zip(values, indices)]})
                index += 1
    return results
