"""Labelled image datasets: in-memory arrays (digits, MNIST, shapes, photos) and image folders."""

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.core.images import max_pixels, open_image
from inspectnet.data.folder_writer import write_folder
from inspectnet.data.index import image_folder_files
from inspectnet.data.labels import LabelMapping, align_classes

__all__ = ["ArrayDataset", "CropDataset", "FilesDataset", "FolderDataset", "ImageDataset", "UNLABELLED",
           "write_folder"]

UNLABELLED = -1


class ImageDataset(torch.utils.data.Dataset):
    """Images + integer labels (``-1`` = unlabelled) + class names, with a model transform.

    ``image(i)`` is the raw PIL image; ``dataset[i]`` is ``(transform(image), label)``. Labels index
    ``class_names``: the data's own classes, or, after :meth:`aligned_to`, a model's classes (then
    ``label_mapping`` says how the data's classes were matched to them).

    Args:
        transform: applied to each PIL image when an item is read (None: the PIL image itself).
    """

    spec: str = ""
    class_names: list[str]
    labels: np.ndarray
    skipped: list[str]
    label_mapping: LabelMapping | None = None
    # which of a source's labelled subsets the data holds, where it offers several (photos100: "sure" or "all")
    label_set: str | None = None

    def __init__(self, transform: Callable | None = None):
        self.transform = transform
        self.skipped = []

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        """The raw picture of sample ``index`` (subclasses read it).

        Args:
            index: the sample.

        Returns:
            The PIL image, before any transform.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A human-readable identifier of sample ``index`` (file name or ``spec#index``).

        Args:
            index: the sample.

        Returns:
            The identifier.
        """
        return f"{self.spec}#{index}"

    def object_mask(self, index: int) -> np.ndarray | None:
        """The pixels of the objects in image ``index``, or None where the data has no object masks.

        The mask is (H, W) bool at the image's resolution; only generated data knows its objects exactly.

        Args:
            index: the sample.

        Returns:
            The mask, or None.

        Examples:
            >>> from inspectnet.data import load_data
            >>> load_data("shapes?n=4").object_mask(0).shape, load_data("digits").object_mask(0)
            ((64, 64), None)
        """
        return None

    def source_folder(self) -> Path | None:
        """The image folder the samples are read from (its contents are part of a record's identity).

        Returns:
            The folder; None for built-in sources, whose contents are fixed.
        """
        return None

    def origins(self) -> list[str] | None:
        """The photo each sample was cut from, where several samples are crops of one photo.

        None where every sample is an image of its own. Two splits cut from the same photos are not independent.

        Returns:
            One photo name per sample, or None.

        >>> from inspectnet.data import load_data
        >>> sorted(set(load_data("photos:test").origins())), load_data("digits").origins()
        (['camera', 'chelsea', 'coffee', 'rocket'], None)
        """
        return None

    def nested(self) -> list[bool] | None:
        """Per sample, whether its file lies in a sub-folder of its class folder (it counts for that class).

        Returns:
            One flag per sample; None for data that is not read from class folders.
        """
        return None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.image(index)
        x = self.transform(img) if self.transform is not None else img
        return x, int(self.labels[index])

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        """The same samples with another transform (a shallow copy).

        Args:
            transform: the new transform (None: PIL images).

        Returns:
            The copy; this dataset is unchanged.
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.transform = transform
        return clone

    @property
    def labelled(self) -> bool:
        """Whether the data has classes and at least one labelled sample."""
        return bool(self.class_names) and bool((np.asarray(self.labels) >= 0).any())

    def aligned_to(self, model_classes: Sequence[str], *, class_map: dict[str, int | str] | None = None,
                   strict: bool = True) -> "ImageDataset":
        """The same samples with labels in a model's label space (:func:`~inspectnet.data.labels.align_classes`).

        Unlabelled data, and data already aligned to these classes, come back as they are.

        Args:
            model_classes: the model's class names (ImageNet names, WordNet ids or its own).
            class_map: data class -> model class (index or name), for classes no name or id matches.
            strict: refuse data classes that match no model class (see
                :func:`~inspectnet.data.labels.align_classes`).

        Returns:
            A copy whose ``labels`` index ``model_classes`` and whose ``label_mapping`` says how they were matched.

        Raises:
            InspectnetError: the data is already aligned to another model's classes.

        Examples:
            >>> ds = ArrayDataset("d", np.zeros((2, 4, 4), np.uint8), [0, 1], ["n02123045", "espresso"])
            >>> from inspectnet.data.labels import imagenet_names
            >>> ds.aligned_to(imagenet_names()).labels.tolist()
            [281, 967]
        """
        model_classes = list(model_classes)
        if not self.labelled:
            return self
        if self.label_mapping is not None:
            if self.label_mapping.model_classes == model_classes and class_map is None:
                return self
            raise InspectnetError(f"data {self.spec!r} is already mapped onto the classes of another model; "
                                  f"load it again to map it onto this one")
        mapping = align_classes(self.class_names, model_classes, class_map=class_map, strict=strict,
                                what=f"data {self.spec!r}")
        clone = self.with_transform(self.transform)
        clone.labels, clone.class_names, clone.label_mapping = mapping.apply(self.labels), model_classes, mapping
        return clone


class ArrayDataset(ImageDataset):
    """Images held as uint8 arrays: (N, H, W) grey or (N, H, W, 3) RGB, or a list of differently sized ones.

    Args:
        spec: the data spec the arrays came from (names the data in messages and records).
        images: the images.
        labels: one label per image (``-1`` = unlabelled).
        class_names: the classes the labels index.
        transform: applied to each PIL image when an item is read.
        names: one identifier per image (default: ``spec#index``).

    Raises:
        ValueError: the images are not uint8.

    Examples:
        >>> ds = ArrayDataset("toy", np.zeros((3, 2, 2), np.uint8), np.array([0, 1, 1]), ["a", "b"])
        >>> len(ds), ds[1][1], ds.name(1), ds.image(0).mode
        (3, 1, 'toy#1', 'L')
    """

    def __init__(self, spec: str, images: np.ndarray | list[np.ndarray], labels: np.ndarray,
                 class_names: Sequence[str], transform: Callable | None = None, names: Sequence[str] | None = None):
        super().__init__(transform)
        if len(images) and images[0].dtype != np.uint8:
            raise ValueError("ArrayDataset images must be uint8")
        self.spec, self.images, self.labels = spec, images, np.asarray(labels, np.int64)
        self.class_names = list(class_names)
        self._names = list(names) if names is not None else None

    # per-concept pixel masks (N, concepts, H, W) where the source generates them (shapes)
    masks: np.ndarray | None = None

    def image(self, index: int) -> Image.Image:
        """The picture of sample ``index``.

        Args:
            index: the sample.

        Returns:
            The grey or RGB PIL image.
        """
        return Image.fromarray(self.images[index])

    def name(self, index: int) -> str:
        """The identifier of sample ``index``.

        Args:
            index: the sample.

        Returns:
            Its given name, else ``spec#index``.
        """
        return self._names[index] if self._names else super().name(index)

    def object_mask(self, index: int) -> np.ndarray | None:
        # every object pixel carries at least one concept (its colour), so the union is the objects
        """The pixels of the objects in image ``index``: the union of its concept masks.

        Args:
            index: the sample.

        Returns:
            An (H, W) bool mask, or None when the data has no masks.
        """
        return None if self.masks is None else np.asarray(self.masks[index]).any(0)

    def subset(self, indices: np.ndarray, spec: str) -> "ArrayDataset":
        """The samples ``indices`` as a new dataset (labels, names, masks and label mapping kept).

        Args:
            indices: the samples to keep, in order.
            spec: the spec that names the subset.

        Returns:
            The subset.

        Examples:
            >>> ds = ArrayDataset("toy", np.zeros((3, 2, 2), np.uint8), np.array([0, 1, 1]), ["a", "b"])
            >>> ds.subset(np.array([2]), "toy[2]").labels.tolist()
            [1]
        """
        names = [self._names[i] for i in indices] if self._names else None
        images = self.images[indices] if isinstance(self.images, np.ndarray) else [self.images[i] for i in indices]
        sub = ArrayDataset(spec, images, self.labels[indices], self.class_names, self.transform, names)
        sub.label_mapping, sub.label_set = self.label_mapping, self.label_set
        sub.masks = None if self.masks is None else self.masks[indices]
        return sub


class CropDataset(ImageDataset):
    """Crops of a few images: item i is ``(image index = label, (left, top, width, height, flipped), name)``.

    The crops are cut when read, so many crops of large photos cost no memory.

    Args:
        spec: the data spec (names the data in messages and records).
        images: the source images as uint8 arrays.
        items: one ``(image index, (left, top, width, height, flipped), name)`` per crop; the image index
            is the crop's label.
        class_names: one class per source image.
        transform: applied to each PIL crop when an item is read.
    """

    def __init__(self, spec: str, images: Sequence[np.ndarray], items: Sequence[tuple[int, tuple, str]],
                 class_names: Sequence[str], transform: Callable | None = None):
        super().__init__(transform)
        self.spec, self.images, self.items = spec, list(images), list(items)
        self.labels = np.asarray([k for k, _, _ in self.items], np.int64)
        self.class_names = list(class_names)

    def image(self, index: int) -> Image.Image:
        """The crop ``index``, cut (and mirrored where the item says so) when read.

        Args:
            index: the item.

        Returns:
            The PIL crop.
        """
        k, (left, top, w, h, flipped), _ = self.items[index]
        crop = Image.fromarray(self.images[k]).crop((left, top, left + w, top + h))
        return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else crop

    def name(self, index: int) -> str:
        """The name of crop ``index``.

        Args:
            index: the item.

        Returns:
            The name its item gives.
        """
        return self.items[index][2]

    def origins(self) -> list[str] | None:
        """The photo each crop was cut from (see :meth:`ImageDataset.origins`).

        Returns:
            One photo name per sample: a crop is named STEM_INDEX after its photo (see ``sources.seeded_crops``).
        """
        return [name.rsplit("_", 1)[0] for _, _, name in self.items]


class FolderDataset(ImageDataset):
    """An image folder: one sub-folder per class, any Pillow-readable file inside.

    Every file is decoded when the folder is indexed (:func:`inspectnet.core.images.open_image`:
    a full decode within the pixel limit); an undecodable one fails naming the file and why, or,
    with ``skip_bad``, is left out and listed in ``skipped``. Any entry that is not a folder counts
    as a file, so a broken link or a link loop is reported rather than silently ignored.

    Args:
        root: the folder, ``ROOT/CLASS/IMAGE``.
        transform: applied to each PIL image when an item is read.
        skip_bad: leave undecodable files out (listed in ``skipped``) instead of failing.

    Raises:
        InspectnetError: the folder has no class sub-folders, a class folder is empty, a file cannot be
            decoded (without ``skip_bad``), or none can.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, *, skip_bad: bool = False):
        super().__init__(transform)
        root = Path(root)
        self.spec = str(root)
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.root = root
        if not classes:
            raise InspectnetError(f"image folder {root} has no class sub-folders; expected ROOT/CLASS/IMAGE")
        self.class_names = classes
        max_pixels()  # a bad INSPECTNET_MAX_PIXELS fails here, not as if every image were bad
        self.files: list[Path] = []
        labels = []
        by_class: dict[str, list[Path]] = {cls: [] for cls in classes}
        for p in image_folder_files(root):  # the same files the folder's content identity covers
            by_class[p.relative_to(root).parts[0]].append(p)
        for label, cls in enumerate(classes):
            files = by_class[cls]
            if not files:
                raise InspectnetError(f"class folder {root / cls} is empty; every class needs at least one image")
            for f in files:
                why = _unreadable(f)
                if why is None:
                    self.files.append(f)
                    labels.append(label)
                elif skip_bad:
                    self.skipped.append(str(f))
                else:
                    raise InspectnetError(f"{why}; fix or remove it, or pass --skip-bad to skip (and count) "
                                          f"undecodable files")
        if not self.files:
            raise InspectnetError(f"image folder {root}: none of its {len(self.skipped)} files can be decoded")
        self.labels = np.asarray(labels, np.int64)

    def nested(self) -> list[bool] | None:
        """Per file, whether it lies below ROOT/CLASS/SUB/...: it counts for CLASS, as torchvision's ImageFolder does.

        Returns:
            One flag per sample.
        """
        return [len(f.relative_to(self.root).parts) > 2 for f in self.files]

    def image(self, index: int) -> Image.Image:
        """The picture of sample ``index``, read from its file.

        Args:
            index: the sample.

        Returns:
            The PIL image (8-bit grey or RGB).
        """
        return open_image(self.files[index])

    def name(self, index: int) -> str:
        """The file of sample ``index``.

        Args:
            index: the sample.

        Returns:
            The file path as text.
        """
        return str(self.files[index])

    def source_folder(self) -> Path | None:
        """The image folder the samples are read from.

        Returns:
            The folder's path.
        """
        return self.root


class FilesDataset(ImageDataset):
    """Loose image files (unlabelled), e.g. the arguments of ``inspectnet predict``.

    Args:
        paths: the image files.
        transform: applied to each PIL image when an item is read.

    Raises:
        InspectnetError: a file is missing or cannot be decoded.
    """

    def __init__(self, paths: Sequence[str | Path], transform: Callable | None = None):
        super().__init__(transform)
        self.files = [Path(p) for p in paths]
        for f in self.files:
            why = _unreadable(f)
            if why is not None:
                raise InspectnetError(why)
        self.spec = "files"
        self.class_names = []
        self.labels = np.full(len(self.files), UNLABELLED, np.int64)

    image = FolderDataset.image
    name = FolderDataset.name


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded as an image (None when it can)."""
    try:
        open_image(path)
    except InspectnetError as exc:
        return str(exc)
    return None
