"""Concept datasets: images with one pixel mask per concept, and each concept's category.

Two sources:

* the synthetic ``shapes`` data (``shapes[:train|:test][?n=..&seed=..]``, 64×64, 15 concepts in the
  categories colour / shape / colour-shape, exact masks), and
* a folder of user data::

      ROOT/concepts.json          {"concepts": {"red": "colour", "square": "shape"}}   (name -> category)
      ROOT/images/NAME.png        any Pillow-readable image
      ROOT/masks/NAME/CONCEPT.png one binary mask per concept (non-zero = concept); a missing file = absent
    or, instead of masks/,
      ROOT/segmentations/NAME.png an index-coloured segmentation; concepts.json then also holds
                                  "legend": {"#ff0000": ["red"], "#000000": []}  (RGB PNGs) or
                                  {"0": [], "3": ["red", "square"]}           (palette / grey PNGs)

  ``concepts`` may also be a plain list of names (category ``concept``). A mask whose size differs
  from its image is refused, or with ``resize_masks=True`` resized (nearest neighbour) with a
  warning. A segmentation colour missing from the legend is refused, naming file and colour.

>>> ds = load_concepts("shapes?n=8"); len(ds), ds.concepts[:4], ds.masks(0).shape
(8, ['red', 'green', 'blue', 'square'], (15, 64, 64))
"""

import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.core.images import decode_image, open_image

DEFAULT_CATEGORY = "concept"
CONFIG = "concepts.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MASKED_SOURCES = ("shapes",)  # built-in data sources that come with concept masks


class ConceptDataset:
    """Images, per-concept boolean masks at image resolution, concept names and categories.

    ``image(i)`` is an RGB PIL image, ``masks(i)`` a ``(num_concepts, H, W)`` bool array aligned
    with it, ``categories[concept]`` the concept's category.
    """

    spec: str
    concepts: list[str]
    categories: dict[str, str]

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, index: int) -> Image.Image:
        """The RGB picture of item ``index`` (subclasses read it).

        Args:
            index: the item.

        Returns:
            The RGB PIL image.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def masks(self, index: int) -> np.ndarray:
        """The concept masks of item ``index``, aligned with its image (subclasses read them).

        Args:
            index: the item.

        Returns:
            A ``(num_concepts, H, W)`` bool array, in the order of ``concepts``.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A human-readable identifier of item ``index``.

        Args:
            index: the item.

        Returns:
            ``spec#index`` (the file path for folders).
        """
        return f"{self.spec}#{index}"

    @property
    def category_names(self) -> list[str]:
        """Categories in first-seen order of the concepts."""
        return list(dict.fromkeys(self.categories[c] for c in self.concepts))


class ArrayConcepts(ConceptDataset):
    """Concepts held in memory: uint8 images (N, H, W, 3) and bool masks (N, C, H, W).

    Args:
        spec: the data spec the arrays came from (names the data in messages).
        images: the (N, H, W, 3) uint8 images.
        masks: the (N, C, H, W) bool masks, one per concept.
        concepts: the C concept names.
        categories: concept -> category.

    Raises:
        InspectnetError: the masks do not fit the images (count or size).

    Examples:
        >>> ds = ArrayConcepts("toy", np.zeros((1, 2, 2, 3), np.uint8), np.ones((1, 1, 2, 2), bool), ["red"],
        ...                    {"red": "colour"})
        >>> len(ds), ds.masks(0).shape, ds.category_names
        (1, (1, 2, 2), ['colour'])
    """

    def __init__(self, spec: str, images: np.ndarray, masks: np.ndarray, concepts: list[str],
                 categories: dict[str, str]):
        if masks.shape[0] != images.shape[0] or masks.shape[1] != len(concepts):
            raise InspectnetError(f"concept data {spec!r}: masks {masks.shape} do not fit {len(images)} images "
                                  f"and {len(concepts)} concepts")
        if masks.shape[2:] != images.shape[1:3]:
            raise InspectnetError(f"concept data {spec!r}: mask size {masks.shape[2:]} differs from image "
                                  f"size {images.shape[1:3]}")
        self.spec, self.images, self._masks = spec, images, masks
        self.concepts, self.categories = list(concepts), {c: categories[c] for c in concepts}

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> Image.Image:
        """The RGB picture of item ``index``.

        Args:
            index: the item.

        Returns:
            The RGB PIL image.
        """
        return Image.fromarray(self.images[index]).convert("RGB")

    def masks(self, index: int) -> np.ndarray:
        """The concept masks of item ``index``.

        Args:
            index: the item.

        Returns:
            A ``(num_concepts, H, W)`` bool array.
        """
        return np.asarray(self._masks[index], dtype=bool)


class FolderConcepts(ConceptDataset):
    """A concept folder (see the module docstring for the layout).

    Args:
        root: the folder (``concepts.json``, ``images/`` and ``masks/`` or ``segmentations/``).
        resize_masks: resize masks of another size than their image (nearest neighbour) instead of refusing them.

    Raises:
        InspectnetError: the folder has no valid ``concepts.json``, no images, or neither masks nor
            segmentations, or an image lacks its annotation.

    Examples:
        >>> ds = FolderConcepts("my_concepts")   # doctest: +SKIP
        >>> ds.concepts, ds.masks(0).shape       # doctest: +SKIP
    """

    def __init__(self, root: str | Path, *, resize_masks: bool = False):
        self.root = Path(root)
        self.spec = str(self.root)
        self.resize_masks = resize_masks
        config = _read_config(self.root / CONFIG)
        self.concepts, self.categories = _parse_concepts(config, self.root / CONFIG)
        self.images = sorted(p for p in (self.root / "images").glob("*")
                             if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not (self.root / "images").is_dir() or not self.images:
            raise InspectnetError(f"concept folder {self.root} has no images/ folder with images")
        self.mode = "segmentation" if (self.root / "segmentations").is_dir() else "masks"
        if self.mode == "masks" and not (self.root / "masks").is_dir():
            raise InspectnetError(f"concept folder {self.root} has neither masks/ nor segmentations/")
        self.legend = _parse_legend(config, self.concepts, self.root / CONFIG) if self.mode == "segmentation" else {}
        for img in self.images:
            self._check_annotation(img)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        """The image file of item ``index``.

        Args:
            index: the item.

        Returns:
            The file path as text.
        """
        return str(self.images[index])

    def image(self, index: int) -> Image.Image:
        """The RGB picture of item ``index``, read from its file.

        Args:
            index: the item.

        Returns:
            The RGB PIL image.
        """
        return open_image(self.images[index]).convert("RGB")

    def _check_annotation(self, img: Path) -> None:
        if self.mode == "segmentation":
            seg = self.root / "segmentations" / f"{img.stem}.png"
            if not seg.is_file():
                raise InspectnetError(f"image {img} has no segmentation {seg}")
            return
        folder = self.root / "masks" / img.stem
        if not folder.is_dir():
            raise InspectnetError(f"image {img} has no mask folder {folder}; expected masks/{img.stem}/CONCEPT.png")
        for f in folder.iterdir():
            if f.stem not in self.categories and not f.name.startswith("."):
                raise InspectnetError(f"mask {f} names concept {f.stem!r}, which {CONFIG} does not list "
                                      f"({', '.join(self.concepts)})")

    def masks(self, index: int) -> np.ndarray:
        """The concept masks of item ``index``, read from its mask files or its segmentation.

        Args:
            index: the item.

        Returns:
            A ``(num_concepts, H, W)`` bool array at the image's size; concepts without a mask file are all False.
        """
        img_path = self.images[index]
        size = open_image(img_path).size  # (W, H)
        if self.mode == "segmentation":
            return self._segmentation_masks(img_path, size)
        out = np.zeros((len(self.concepts), size[1], size[0]), bool)
        for c, concept in enumerate(self.concepts):
            f = self.root / "masks" / img_path.stem / f"{concept}.png"
            if f.is_file():
                # raw decode: Pillow's clipping conversion keeps every non-zero value of a 16-bit mask non-zero
                out[c] = np.asarray(self._fit(decode_image(f), size, f).convert("L")) > 0
        return out

    def _segmentation_masks(self, img_path: Path, size: tuple[int, int]) -> np.ndarray:
        f = self.root / "segmentations" / f"{img_path.stem}.png"
        seg = self._fit(decode_image(f), size, f)  # raw: label values stay exact
        keys, inverse = _pixel_keys(seg)
        out = np.zeros((len(self.concepts), size[1] * size[0]), bool)
        for k, key in enumerate(keys):
            if key not in self.legend:
                raise InspectnetError(f"segmentation {f} has colour {key!r}, which the legend in {CONFIG} does not "
                                      f"list; add it (map it to [] for background)")
            for c in self.legend[key]:
                out[c] |= inverse == k
        return out.reshape(len(self.concepts), size[1], size[0])

    def _fit(self, mask: Image.Image, size: tuple[int, int], path: Path) -> Image.Image:
        if mask.size == size:
            return mask
        if not self.resize_masks:
            raise InspectnetError(f"mask {path} is {mask.size[0]}×{mask.size[1]} but its image is {size[0]}×{size[1]}; "
                                  f"fix it, or pass --resize-masks to resize masks (nearest neighbour)")
        warnings.warn(f"mask {path} resized from {mask.size[0]}×{mask.size[1]} to its image's {size[0]}×{size[1]}",
                      stacklevel=3)
        return mask.resize(size, Image.NEAREST)


def _pixel_keys(seg: Image.Image) -> tuple[list[str], np.ndarray]:
    """Distinct legend keys of a segmentation and each pixel's position among them.

    Keys are ``#rrggbb`` for colour, the index for palette/grey.
    """
    if seg.mode in ("P", "L", "I", "I;16"):
        flat = np.asarray(seg).reshape(-1).astype(np.int64)
        values, inverse = np.unique(flat, return_inverse=True)
        return [str(int(v)) for v in values], inverse.reshape(-1)
    rgb = np.asarray(seg.convert("RGB")).reshape(-1, 3).astype(np.int64)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    values, inverse = np.unique(packed, return_inverse=True)
    return [f"#{int(v):06x}" for v in values], inverse.reshape(-1)


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise InspectnetError(f"concept folder {path.parent} has no {CONFIG}; expected "
                              f'{{"concepts": {{"NAME": "CATEGORY", ...}}}}')
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InspectnetError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InspectnetError(f"{path} must hold a JSON object")
    return config


def _parse_concepts(config: dict, path: Path) -> tuple[list[str], dict[str, str]]:
    raw = config.get("concepts")
    if isinstance(raw, list):
        raw = {str(c): DEFAULT_CATEGORY for c in raw}
    if not isinstance(raw, dict) or not raw:
        raise InspectnetError(f'{path}: "concepts" must be a non-empty object name -> category (or a list of names)')
    for name, cat in raw.items():
        if not name or "/" in name or not isinstance(cat, str):
            raise InspectnetError(f"{path}: concept {name!r} -> {cat!r} is not a valid name and category")
    return list(raw), {str(k): str(v) for k, v in raw.items()}


def _parse_legend(config: dict, concepts: list[str], path: Path) -> dict[str, list[int]]:
    raw = config.get("legend")
    if not isinstance(raw, dict) or not raw:
        raise InspectnetError(f'{path}: a segmentations/ folder needs a "legend" object colour -> concepts')
    index = {c: i for i, c in enumerate(concepts)}
    legend: dict[str, list[int]] = {}
    for key, names in raw.items():
        names = [names] if isinstance(names, str) else names
        unknown = [n for n in names if n not in index]
        if unknown:
            raise InspectnetError(f"{path}: legend entry {key!r} names unknown concept(s) {', '.join(unknown)}")
        legend[_legend_key(key, path)] = [index[n] for n in names]
    return legend


def _legend_key(key: str, path: Path) -> str:
    key = key.strip().lower()
    if key.startswith("#") and len(key) == 7:
        try:
            int(key[1:], 16)
            return key
        except ValueError:
            pass
    if key.isdigit():
        return str(int(key))
    raise InspectnetError(f"{path}: legend key {key!r} is neither #rrggbb nor a palette index")


def check_concepts_spec(spec: str) -> None:
    """Refuse, without reading any image, concept data that cannot be.

    That is a folder without a valid ``concepts.json``, or a spec that is not a built-in source with
    masks (``shapes``).

    Args:
        spec: a concept folder or a built-in source spec.

    Raises:
        InspectnetError: the spec names no usable concept data.

    Examples:
        >>> check_concepts_spec("digits")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: concept data 'digits' is neither a concept folder ...
    """
    if Path(spec).is_dir():
        _parse_concepts(_read_config(Path(spec) / CONFIG), Path(spec) / CONFIG)
        return
    from inspectnet.data import parse_data_spec

    if parse_data_spec(spec)[0] not in MASKED_SOURCES:
        raise InspectnetError(f"concept data {spec!r} is neither a concept folder (ROOT/concepts.json, images/, "
                              f"masks/ or segmentations/) nor a built-in source with masks "
                              f"({', '.join(MASKED_SOURCES)})")


def load_concepts(spec: str, *, resize_masks: bool = False) -> ConceptDataset:
    """Concept data from a concept folder path, or a built-in source with masks.

    Args:
        spec: a concept folder, or ``shapes[:train|:test][?n=..&seed=..]``.
        resize_masks: for folders, resize masks of another size than their image instead of refusing them.

    Returns:
        The concept dataset.

    Raises:
        InspectnetError: the built-in source has no concept masks.

    Examples:
        >>> ds = load_concepts("shapes?n=4"); len(ds), ds.masks(0).shape[0] == len(ds.concepts)
        (4, True)
    """
    if Path(spec).is_dir():
        return FolderConcepts(spec, resize_masks=resize_masks)
    from inspectnet.data import load_data

    ds = load_data(spec)
    if getattr(ds, "masks", None) is None:  # every labelled array source has the field; shapes fills it
        raise InspectnetError(f"data {spec!r} has no concept masks; use shapes[...] or a concept folder "
                              f"(ROOT/concepts.json, images/, masks/ or segmentations/)")
    images = np.asarray(ds.images)
    if images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=3)
    return ArrayConcepts(spec, images, ds.masks, list(ds.concepts), dict(ds.categories))
