"""The training-hook protocol: what the training loop calls, and what every fine-tuning plugin implements.

One signature per hook. The loop calls, per run: ``parameter_groups`` (which parameters get weight
decay), ``identity`` (what keys resumption), ``load_state_dict`` when it resumes; per epoch
``epoch_begin(epoch, model)`` after ``model.train()``, per step ``loss(x, y, logits)``, then
``epoch_end(epoch)``; and ``state_dict`` with each checkpoint. The default adds nothing.
"""

from typing import Any

import torch
from torch import nn


class TrainHooks:
    """Extension points of the training loop; the default adds nothing.

    ``loss`` returns extra loss terms for a batch (name -> scalar tensor), ``epoch_end`` returns
    metrics to log, ``state_dict``/``load_state_dict`` carry state through checkpoints, and
    ``parameter_groups`` may change which parameters get weight decay.

    Examples:
        >>> TrainHooks().loss(torch.zeros(1), torch.zeros(1), torch.zeros(1, 2))
        {}
    """

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra loss terms for the batch just forwarded.

        Args:
            x: the batch's inputs.
            y: its labels.
            logits: the model's logits on it.

        Returns:
            Term name -> float32 scalar (none here).
        """
        return {}

    def epoch_begin(self, epoch: int, model: nn.Module) -> None:
        """Called after ``model.train()`` at the start of each epoch (e.g. to reset per-epoch statistics).

        Args:
            epoch: the epoch (from 0).
            model: the model.
        """

    def epoch_end(self, epoch: int) -> dict[str, float]:
        """Metrics to log for the epoch.

        Args:
            epoch: the epoch (from 0).

        Returns:
            Metric name -> value (none here).
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values to save in checkpoints (weights_only-loadable).

        Returns:
            The state (empty here).
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Args:
            state: the saved state.
        """

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trainable parameter, with ``weight_decay``.

        Args:
            model: the model.
            weight_decay: the weight decay.

        Returns:
            One group.
        """
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def identity(self) -> dict[str, Any]:
        """What else keys resumption (plugin specs, freezing); a checkpoint of other hooks is refused.

        Returns:
            The identity (empty here).
        """
        return {}
