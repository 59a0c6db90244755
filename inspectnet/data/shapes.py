"""The synthetic shapes/colours dataset of Concept Group Learning (paper §4.1).

64×64 images on black with two shapes from {square, circle, triangle}, each coloured from
{red, green, blue}. Every image has exact pixel masks for 15 concepts in three categories:
colour (3), shape (3) and colour-shape (9). Labels: the paper's binary task "a square is present"
(``task="square"``) or the 45-class task: the unordered pair of (colour, shape) items.
Generation is deterministic from a seed.
"""

import itertools

import numpy as np

COLOURS = ("red", "green", "blue")
SHAPES = ("square", "circle", "triangle")
_RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
ITEMS = tuple((c, s) for c in COLOURS for s in SHAPES)
PAIRS = tuple(itertools.combinations_with_replacement(range(len(ITEMS)), 2))  # 45 classes
CONCEPTS = (*COLOURS, *SHAPES, *(f"{c}-{s}" for c, s in ITEMS))
CATEGORIES = {**{c: "colour" for c in COLOURS}, **{s: "shape" for s in SHAPES},
              **{f"{c}-{s}": "colour-shape" for c, s in ITEMS}}
SIZE = 64


def _shape_mask(shape: str, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if shape == "square":
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    # upright isosceles triangle with apex at the top of its r-box
    top, bottom = cy - r, cy + r
    rel = (yy - top) / max(2 * r, 1)
    return (yy >= top) & (yy <= bottom) & (np.abs(xx - cx) <= rel * r)


def make_item(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int]]:
    """One generated image with its concept masks and the two items it shows.

    Args:
        rng: the random generator (the item is a function of its state).

    Returns:
        ``(image (H, W, 3) uint8, {concept: (H, W) bool mask} for the 15 concepts, (item a, item b) sorted)``.
    """
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    occupied = np.zeros((SIZE, SIZE), bool)
    masks = {c: np.zeros((SIZE, SIZE), bool) for c in CONCEPTS}
    items = rng.integers(0, len(ITEMS), size=2)
    for item in items:
        colour, shape = ITEMS[item]
        for _ in range(50):  # place without overlap; sizes leave room for two shapes
            r = int(rng.integers(6, 12))
            cy, cx = (int(v) for v in rng.integers(r, SIZE - r, size=2))
            m = _shape_mask(shape, cy, cx, r)
            if not (m & occupied).any():
                break
        m &= ~occupied
        occupied |= m
        img[m] = _RGB[colour]
        for concept in (colour, shape, f"{colour}-{shape}"):
            masks[concept] |= m
    a, b = sorted(int(i) for i in items)
    return img, masks, (a, b)


def generate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` generated images with their concept masks and item pairs.

    Args:
        n: the number of images.
        seed: the random seed (the same seed gives the same images).

    Returns:
        ``(images (n, 64, 64, 3) uint8, masks (n, 15, 64, 64) bool, item pairs (n, 2))``.

    Examples:
        >>> images, masks, pairs = generate(2); images.shape, masks.shape, pairs.shape
        ((2, 64, 64, 3), (2, 15, 64, 64), (2, 2))
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    masks = np.zeros((n, len(CONCEPTS), SIZE, SIZE), bool)
    pairs = np.zeros((n, 2), np.int64)
    for i in range(n):
        img, m, p = make_item(rng)
        images[i] = img
        masks[i] = np.stack([m[c] for c in CONCEPTS])
        pairs[i] = p
    return images, masks, pairs


def labels_for(pairs: np.ndarray, task: str) -> tuple[np.ndarray, list[str]]:
    """Labels and class names for ``task``: ``square`` (binary) or ``pairs`` (45 classes).

    Args:
        pairs: the (n, 2) item pairs of :func:`generate`.
        task: ``"square"`` or ``"pairs"``.

    Returns:
        ``(labels (n,), class names)``.

    Raises:
        ValueError: ``task`` is unknown.

    Examples:
        >>> labels, names = labels_for(np.array([[0, 1]]), "pairs"); labels.tolist(), names[1], len(names)
        ([1], 'red square + red circle', 45)
    """
    if task == "square":
        square = np.array([s == "square" for _, s in ITEMS])
        return square[pairs].any(axis=1).astype(np.int64), ["no square", "square"]
    if task == "pairs":
        index = {p: i for i, p in enumerate(PAIRS)}
        names = [f"{ITEMS[a][0]} {ITEMS[a][1]} + {ITEMS[b][0]} {ITEMS[b][1]}" for a, b in PAIRS]
        return np.array([index[(int(a), int(b))] for a, b in pairs], np.int64), names
    raise ValueError(f"shapes task {task!r} is unknown; expected 'square' or 'pairs'")
