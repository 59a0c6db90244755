"""The per-epoch Hoyer sparsity that fine-tuning plugins log, measured as the card measures it."""

import numpy as np
import torch

from inspectnet.analysis.sparsity import hoyer
from inspectnet.probe.hooks import absmean


class HoyerLog:
    """Per-epoch Hoyer sparsity of a layer's units, measured exactly as the card measures it.

    ``add(output)`` reduces a layer output to per-unit activations (spatial mean of |F|, the probe
    record's ``absmean`` reducer) and keeps each sample's Hoyer sparsity over its units
    (:func:`inspectnet.analysis.sparsity.hoyer`). ``pop()`` returns their mean and starts over; a
    sample whose units are all zero has no Hoyer sparsity (0/0), so it is left out of the mean and
    counted in ``hoyer_excluded``, as :func:`~inspectnet.analysis.sparsity.sparsity_metrics` does.

    Examples:
        >>> log = HoyerLog(); log.add(torch.tensor([[0.0, 0, 3, 0], [1, 1, 1, 1], [0, 0, 0, 0]]))
        >>> log.pop()
        {'hoyer': 0.5, 'hoyer_excluded': 1}
        >>> log.pop()
        {}
    """

    def __init__(self) -> None:
        self._values: list[np.ndarray] = []

    def add(self, output: torch.Tensor) -> None:
        """Record the samples of one batch.

        Args:
            output: (B, C, H, W) maps, (B, T, C) tokens or (B, C) units.
        """
        self._values.append(hoyer(absmean(output.detach()).double().cpu().numpy(), axis=1))

    def pop(self) -> dict[str, float]:
        """The mean Hoyer sparseness since the last pop, and how many samples were all zero.

        Returns:
            ``{"hoyer": mean over defined samples, "hoyer_excluded": all-zero samples}``; ``{}`` when nothing
            was added, and no ``hoyer`` key when no sample was defined.
        """
        if not self._values:
            return {}
        values, self._values = np.concatenate(self._values), []
        undefined = np.isnan(values)
        out = {"hoyer": float(values[~undefined].mean())} if not undefined.all() else {}
        return {**out, "hoyer_excluded": int(undefined.sum())}
