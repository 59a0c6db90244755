"""What ``explain_images`` is asked to draw (:class:`EvidenceConfig`).

It is free of torch so that the command line generates its options from it without importing the library.
"""

import dataclasses

from inspectnet.core.options import option, validate


@dataclasses.dataclass(frozen=True)
class EvidenceConfig:
    """Which classes' evidence maps to draw, for how many images, in batches of what size; checked when built.

    Attributes:
        classes: ``top1``, ``topK``, ``all``, or class indices/names separated by commas.
        limit: use only the first N images (None: all).
        batch_size: images per forward pass.

    Examples:
        >>> EvidenceConfig(classes="top3").classes
        'top3'
    """

    classes: str = option("top1", help="top1, topK, all, or class indices/names separated by commas (e.g. 3,7)")
    limit: int | None = option(None, help="use only the first N images", minimum=1, metavar="N")
    batch_size: int = option(32, help="images per forward pass", minimum=1)

    def __post_init__(self) -> None:
        validate(self)
