"""The one way image files are opened: data folders, concept masks and torch-free ``inspectnet run``.

Readability is decided by a full decode (``Image.verify`` does not decode JPEG data, so a
truncated JPEG would pass it and fail later), bounded by a pixel limit checked before any pixel
is decoded (a small PNG may declare 30000×30000 pixels). The limit is :data:`DEFAULT_MAX_PIXELS`
unless the environment variable ``INSPECTNET_MAX_PIXELS`` raises or lowers it.

Images with more than 8 bits per sample (16-bit grey PNGs and TIFFs open as ``I;16`` or ``I``)
are scaled to 8 bits by :func:`to_8bit`; Pillow's own ``convert("L")`` clips them instead, which
turns almost every pixel of a 16-bit photo white.

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
from PIL import Image, UnidentifiedImageError

from inspectnet.core.errors import InspectnetError

MAX_PIXELS_ENV = "INSPECTNET_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own warning threshold (about 9459 × 9459)
# modes whose samples are wider than 8 bits; "I" is read as 16-bit (how PNG and TIFF produce it)
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def max_pixels() -> int:
    """The pixel limit for one image: ``INSPECTNET_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`."""
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
    """Decode ``path`` fully, with samples wider than 8 bits scaled to 8 bits (see the module docstring)."""
    return to_8bit(decode_image(path))


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` itself, or, for 16-bit grey modes, an ``L`` image scaled by 255/65535 (not clipped).

    >>> to_8bit(Image.new("I;16", (1, 1), 65535)).getpixel((0, 0))
    255
    """
    if image.mode not in _WIDE_MODES:
        return image
    wide = np.asarray(image).astype(np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
