"""What a dissection is asked to do (:class:`DissectConfig`), free of torch.

The command line generates its options from it without importing the library.
"""

import dataclasses

from inspectnet.analysis.dissect import DEFAULT_IOU_THRESHOLD, DEFAULT_QUANTILE
from inspectnet.core.options import option, validate


@dataclasses.dataclass(frozen=True)
class DissectConfig:
    """The parameters of :func:`inspectnet.analysis.dissect.dissection.dissect` and of its report pages.

    They are checked when the config is built.

    Examples:
        >>> DissectConfig(passes=2).passes
        2
    """

    quantile: float = option(DEFAULT_QUANTILE, help="top fraction of each unit's activations kept", above=0, below=1)
    iou_threshold: float = option(DEFAULT_IOU_THRESHOLD, help="a unit detects its best concept if IoU ≥ this",
                                  minimum=0, maximum=1)
    passes: int = option(1, help="1: one pass over the data, IoU within one histogram bin; 2: a second pass counts "
                                 "the overlaps exactly (twice the model time, less memory for many concepts)",
                         choices=(1, 2))
    batch_size: int = option(32, help="images per forward pass", minimum=1)
    limit: int | None = option(None, help="use only the first N images", minimum=1, metavar="N")
    device: str = option("auto", help="auto (CUDA when present), cpu, cuda[:N]")
    images_per_unit: int = option(4, help="top images shown per unit in the HTML", minimum=1)
    max_units: int = option(512, help="units shown per HTML page (highest IoU first)", minimum=1)

    def __post_init__(self) -> None:
        validate(self)
