"""The one way image files are opened: data folders, concept masks and torch-free ``inspectnet run``.

Readability is decided by a full decode (``Image.verify`` does not decode JPEG data, so a
truncated JPEG would pass it and fail later), bounded by a pixel limit checked before any pixel
is decoded (a small PNG may declare 30000×30000 pixels). The limit is :data:`DEFAULT_MAX_PIXELS`
unless the environment variable ``INSPECTNET_MAX_PIXELS`` raises or lowers it.

Pictures are read as a viewer shows them (:func:`to_8bit`, applied by :func:`open_image`): the
EXIF orientation is applied (a phone photo stored sideways is seen upright); samples wider than 8
bits (16-bit grey PNGs and TIFFs open as ``I;16`` or ``I``) are scaled to 8 bits (Pillow's own
``convert("L")`` clips them, which turns almost every pixel of a 16-bit photo white); float images
(mode ``F``, e.g. float TIFFs) are scaled from [0, 1] (or kept in [0, 255]) and refused with their
range otherwise; other modes (CMYK, YCbCr, bilevel, palette, with alpha) become RGB or grey. An
alpha channel or transparent palette colour is dropped, keeping the stored colours: the loaders of
timm and torchvision, which pretrained models were trained and evaluated with, do the same. An
animated image is read as its first frame.

>>> import tempfile, numpy as np
>>> path = Path(tempfile.mkdtemp()) / "grey16.png"
>>> Image.fromarray(np.full((2, 2), 128 * 257, np.uint16)).save(path)   # 16-bit grey, half white
>>> im = open_image(path); im.mode, int(np.asarray(im)[0, 0])
('L', 128)
"""

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inspectnet.core.errors import InspectnetError

MAX_PIXELS_ENV = "INSPECTNET_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (about 9459 × 9459)
# modes whose samples are wider than 8 bits; "I" is read as 16-bit (how PNG and TIFF produce it)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION = 0x0112  # the EXIF tag


def max_pixels() -> int:
    """The pixel limit for one image: ``INSPECTNET_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Returns:
        The largest number of pixels an image may declare.

    Raises:
        InspectnetError: ``INSPECTNET_MAX_PIXELS`` is set to something other than a positive integer.

    Examples:
        >>> max_pixels() == int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
        True
    """
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InspectnetError(f"{MAX_PIXELS_ENV}={raw!r} is not a positive number of pixels")
    return value


def decode_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully in its own mode (the file is closed on return), or fail naming it.

    Use :func:`open_image` for pictures; this raw form keeps label values of masks and
    segmentations exactly.

    Args:
        path: the image file.

    Returns:
        The decoded image, in the mode the file stores.

    Raises:
        InspectnetError: the file is missing, declares more pixels than :func:`max_pixels`, or cannot be
            decoded (the message names the file and the reason).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "depth.png"
        >>> Image.new("I;16", (1, 1), 1000).save(path)
        >>> decode_image(path).getpixel((0, 0)), open_image(path).getpixel((0, 0))
        (1000, 4)
    """
    path = Path(path)
    if not path.is_file():
        raise InspectnetError(f"image {path} does not exist or is not a file")
    limit = max_pixels()
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # Pillow's own check would refuse at twice its default before the size is known; ours
            # below names the size and obeys INSPECTNET_MAX_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            with Image.open(path) as im:
                width, height = im.size
                if width * height > limit:
                    raise _too_large(path, width, height, limit)
                im.load()
                return im
    except InspectnetError:
        raise
    except UnidentifiedImageError:
        raise InspectnetError(f"image {path} cannot be decoded: not an image format Pillow knows") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspectnetError(f"image {path} cannot be decoded: {reason}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _too_large(path: Path, width: int, height: int, limit: int) -> InspectnetError:
    return InspectnetError(f"image {path} declares {width}×{height} = {width * height:,} pixels, above the limit "
                           f"of {limit:,} (a decompression bomb?); set {MAX_PIXELS_ENV} to raise the limit")


def open_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return it as it is shown: an ``L`` or ``RGB`` image (see the module docstring).

    Args:
        path: the image file.

    Returns:
        The picture, upright, in 8-bit grey or RGB.

    Raises:
        InspectnetError: the file cannot be decoded (see :func:`decode_image`), or it is a float image
            whose samples are neither in [0, 1] nor in [0, 255].

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "rgba.png"
        >>> Image.new("RGBA", (1, 1), (1, 2, 3, 0)).save(path)
        >>> im = open_image(path); im.mode, im.getpixel((0, 0))
        ('RGB', (1, 2, 3))
    """
    try:
        return to_8bit(decode_image(path))
    except _FloatRange as exc:
        raise InspectnetError(f"image {path} cannot be read: {exc}") from None


class _FloatRange(ValueError):
    """A float image whose samples are neither in [0, 1] nor in [0, 255] (or not finite)."""


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` as it is shown, in 8-bit grey (``L``) or ``RGB`` (see the module docstring).

    Args:
        image: any decoded PIL image.

    Returns:
        ``image`` itself when it is already upright ``L`` or ``RGB``, else the converted picture.

    Examples:
        >>> to_8bit(Image.new("I;16", (1, 1), 65535)).getpixel((0, 0))
        255
        >>> to_8bit(Image.new("F", (1, 1), 0.5)).getpixel((0, 0))
        128
        >>> to_8bit(Image.new("LA", (1, 1), (7, 0))).getpixel((0, 0))   # alpha dropped, as timm's loader does
        7
    """
    if image.getexif().get(_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_MODES:
        wide = np.asarray(image).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    if image.mode == "F":
        return _float_to_8bit(np.asarray(image, dtype=np.float64))
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("L" if image.mode in ("1", "LA", "La") else "RGB")


def _float_to_8bit(values: np.ndarray) -> Image.Image:
    """Float samples in [0, 1] are scaled by 255, those in [0, 255] kept; anything else is refused."""
    if not np.isfinite(values).all():
        raise _FloatRange("its float samples include NaN or infinity")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low < 0.0 or high > 255.0:
        raise _FloatRange(f"its float samples span [{low:g}, {high:g}]; expected [0, 1] or [0, 255]")
    scale = 255.0 if high <= 1.0 else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
