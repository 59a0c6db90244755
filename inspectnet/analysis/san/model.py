"""Sparsely Activated Networks as a model (Bizopoulos & Koutsouris).

q kernels w_i (m×m, initialised from N(0, 0.1) as in the paper); s_i = x ⋆ w_i; α_i = φ(ReLU(s_i));
x̂ = Σ_i α_i * w_i (the adjoint convolution); trained with Adam on the L1 reconstruction loss. Per sample:
CR = n / (W + (dim(x) + 1)·A) with n = entries of x, W = q·m² weights, A = non-zero activations;
L̃ = ‖x̂ − x‖₁ / ‖x‖₁; φ̄ = ½(CR⁻¹ + L̃), averaged over the validation samples. The kernel size
with the lowest validation φ̄ is selected per activation. The hyperparameter of each φ follows
the kernel size as in the paper: peaks minimum distance mpd = m, max-pool window = m, and
max-activations keeps k = ⌊n/m⌋^dim per map (n = side of the map), so the sparse activations are
compared at about equal activation counts; ``k`` > 0 overrides that.

>>> x = torch.rand(8, 1, 12, 12)
>>> r = san_select(x[:6], x[6:], ["identity", "peaks"], [3], kernels=2, epochs=1)
>>> [row["activation"] for row in r.rows]
['identity', 'peaks']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inspectnet.analysis.san.activations import ACTIVATIONS, get_activation
from inspectnet.core.errors import InspectnetError
from inspectnet.core.results import Result
from inspectnet.core.tables import markdown_table

if TYPE_CHECKING:
    from inspectnet.data import ImageDataset
    from inspectnet.models.zoo import ZooModel


class SAN(nn.Module):
    """``q`` kernels of size ``m`` and a sparse activation φ; ``forward(x)`` returns (x̂, α).

    Args:
        kernels: q, the number of kernels.
        size: m, the odd kernel size.
        activation: φ's name (see :func:`~inspectnet.analysis.san.activations.get_activation`).
        k: max-activations' k (0: the paper's).
        in_chans: channels of the input.

    Raises:
        InspectnetError: ``size`` is not odd and positive.

    Examples:
        >>> x_hat, alpha = SAN(2, 3, "identity")(torch.zeros(1, 1, 8, 8)); x_hat.shape, alpha.shape
        (torch.Size([1, 1, 8, 8]), torch.Size([1, 2, 8, 8]))
    """

    def __init__(self, kernels: int, size: int, activation: str, *, k: int = 0, in_chans: int = 1):
        super().__init__()
        if size % 2 == 0 or size < 1:
            raise InspectnetError(f"SAN kernel size {size} must be odd and positive (same-size reconstruction)")
        self.size, self.activation = size, activation
        self.weight = nn.Parameter(0.1 * torch.randn(kernels, in_chans, size, size))  # paper §IV: N(0, 0.1)
        self.phi = get_activation(activation, k=k, m=size, d=size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x`` into sparse codes and reconstruct it.

        Args:
            x: (B, C, H, W) inputs.

        Returns:
            ``(x̂ (B, C, H, W), α (B, q, H, W))``.
        """
        s = F.conv2d(x, self.weight, padding=self.size // 2)
        alpha = self.phi(torch.relu(s))
        return F.conv_transpose2d(alpha, self.weight, padding=self.size // 2), alpha


def san_metrics(model: SAN, x: torch.Tensor) -> dict[str, float]:
    """Mean φ̄, CR⁻¹ and L̃ of ``model`` on samples ``x``.

    Args:
        model: the SAN.
        x: (B, C, H, W) samples.

    Returns:
        ``{"phi_bar", "cr_inv", "l_tilde", "activations_per_sample"}``, means over the samples.
    """
    with torch.no_grad():
        x_hat, alpha = model(x)
    n = x[0].numel()
    weights = model.weight.numel()
    dim = x.dim() - 2  # spatial dimensions of one sample (2 for images)
    A = (alpha != 0).flatten(1).sum(1).double()
    cr_inv = (weights + (dim + 1) * A) / n
    l1 = (x_hat - x).abs().flatten(1).sum(1).double()
    ref = x.abs().flatten(1).sum(1).double().clamp_min(1e-12)
    l_tilde = l1 / ref
    phi = 0.5 * (cr_inv + l_tilde)
    return {"phi_bar": float(phi.mean()), "cr_inv": float(cr_inv.mean()), "l_tilde": float(l_tilde.mean()),
            "activations_per_sample": float(A.mean())}


def train_san(x: torch.Tensor, activation: str, size: int, *, kernels: int = 2, epochs: int = 5,
              lr: float = 0.01, batch_size: int = 64, k: int = 0, seed: int = 0) -> SAN:
    """Fit a SAN on ``x`` with Adam on the L1 reconstruction loss.

    Args:
        x: (B, C, H, W) samples.
        activation: φ's name.
        size: the kernel size.
        kernels: the number of kernels.
        epochs: passes over ``x``.
        lr: Adam's learning rate.
        batch_size: samples per step.
        k: max-activations' k (0: the paper's).
        seed: seeds the initialisation and the order.

    Returns:
        The trained SAN.
    """
    torch.manual_seed(seed)
    model = SAN(kernels, size, activation, k=k, in_chans=x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            x_hat, _ = model(x[idx])
            loss = (x_hat - x[idx]).abs().flatten(1).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


@dataclasses.dataclass(frozen=True)
class SANResult(Result):
    """Validation φ̄ / CR⁻¹ / L̃ per (activation, kernel size) and the selected size per activation."""

    rows: list[dict[str, Any]]
    selected: dict[str, int]
    kernels: int
    train_samples: int
    val_samples: int

    def table(self) -> str:
        """The paper's Table III layout: one row per activation at its selected kernel size.

        Returns:
            The Markdown table.
        """
        return markdown_table(["activation", "kernel size", "φ̄", "CR⁻¹", "L̃"],
                              [[r["activation"], r["size"], r["phi_bar"], r["cr_inv"], r["l_tilde"]] for r in self.rows
                               if self.selected.get(r["activation"]) == r["size"]])


def san_select(x_train: torch.Tensor, x_val: torch.Tensor, activations: Sequence[str] = ACTIVATIONS,
               sizes: Sequence[int] = (3, 5, 7), *, kernels: int = 2, epochs: int = 5, k: int = 0,
               seed: int = 0, lr: float = 0.01) -> SANResult:
    """Train one SAN per (activation, kernel size); select each activation's size by lowest φ̄.

    Args:
        x_train: (B, C, H, W) training samples.
        x_val: validation samples (φ̄ is measured on them).
        activations: φ's names.
        sizes: the kernel sizes.
        kernels: the number of kernels.
        epochs: training passes.
        k: max-activations' k (0: the paper's).
        seed: seeds each training.
        lr: Adam's learning rate.

    Returns:
        Every trained configuration's metrics and each activation's selection.

    Raises:
        InspectnetError: an activation is unknown, or a sample set is empty.
    """
    bad = [a for a in activations if a not in ACTIVATIONS]
    if bad:
        raise InspectnetError(f"--activation {bad[0]!r} is unknown; expected one of {', '.join(ACTIVATIONS)}")
    if len(x_train) == 0 or len(x_val) == 0:
        raise InspectnetError("SAN needs at least one training and one validation sample")
    rows, models = [], {}
    for act in activations:
        for m in sizes:
            model = train_san(x_train, act, m, kernels=kernels, epochs=epochs, k=k, seed=seed, lr=lr)
            rows.append({"activation": act, "size": m, **san_metrics(model, x_val)})
            models[act, m] = model
    selected = {a: min((r for r in rows if r["activation"] == a), key=lambda r: r["phi_bar"])["size"]
                for a in activations}
    result = SANResult(rows=rows, selected=selected, kernels=kernels, train_samples=len(x_train),
                       val_samples=len(x_val))
    object.__setattr__(result, "_models", {a: models[a, m] for a, m in selected.items()})
    return result


def kernel_panels(result: SANResult) -> list[tuple[str, int, list[np.ndarray]]]:
    """What the kernel picture shows: per selected activation, its size and each kernel averaged over channels.

    Args:
        result: the selection.

    Returns:
        ``[(activation, kernel size, [(m, m) arrays, one per kernel])]``.
    """
    models = getattr(result, "_models", {})
    return [(act, model.size, [k.mean(0).numpy() for k in model.weight.detach()]) for act, model in models.items()]


def save_kernel_picture(result: SANResult, path: str | Path) -> Path:
    """Grid of the selected models' kernels (one row per activation).

    Args:
        result: the selection.
        path: the PNG to write.

    Returns:
        ``path`` as a ``Path``.
    """
    from inspectnet.core.figures import new_figure, save_figure

    panels = kernel_panels(result)
    fig = new_figure(figsize=(1.4 * result.kernels, 1.5 * len(panels)))
    axes = fig.subplots(len(panels), result.kernels, squeeze=False)
    for r, (act, size, kernels) in enumerate(panels):
        for c, kernel in enumerate(kernels):
            ax = axes[r][c]
            ax.imshow(kernel, cmap="coolwarm")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{act}\nm={size}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def images_tensor(dataset: ImageDataset, limit: int | None = None) -> torch.Tensor:
    """Grey images of an :class:`~inspectnet.data.ImageDataset` as (N, 1, H, W) floats in [0, 1].

    Args:
        dataset: the data.
        limit: the first ``limit`` images only.

    Returns:
        The tensor.

    Raises:
        InspectnetError: the images differ in size.

    Examples:
        >>> from inspectnet.data import load_data
        >>> images_tensor(load_data("digits"), limit=3).shape
        torch.Size([3, 1, 8, 8])
    """
    n = len(dataset) if limit is None else min(limit, len(dataset))
    arrays = [np.asarray(dataset.image(i).convert("L"), dtype=np.float32) / 255.0 for i in range(n)]
    if len({a.shape for a in arrays}) > 1:
        raise InspectnetError(f"data {dataset.spec!r}: images differ in size; SAN needs equal sizes")
    return torch.from_numpy(np.stack(arrays))[:, None]


def layer_maps(zm: ZooModel, dataset: ImageDataset, layer: str, *, limit: int | None = None,
               channels: int = 8) -> torch.Tensor:
    """A probed layer's activation maps as SAN inputs.

    Each of the first ``channels`` maps of every image is one single-channel sample, scaled to max
    |value| 1 per map.

    Args:
        zm: the model.
        dataset: the data (its transform should be ``zm.transform()``).
        layer: the layer.
        limit: the first ``limit`` images only.
        channels: maps taken per image.

    Returns:
        The (N·channels, 1, H, W) samples.

    Raises:
        InspectnetError: the layer's outputs are not (B, C, H, W) maps.
    """
    from inspectnet.models.layers import eval_mode
    from inspectnet.probe.hooks import Probe

    n = len(dataset) if limit is None else min(limit, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=64)
    maps = []
    with eval_mode(zm.model), torch.inference_mode(), Probe(zm.model, [layer], reducer="full",
                                                            head_name=zm.head_name) as probe:
        name = probe.layers[0]
        for x, _ in loader:
            zm.model(x)
            out = probe.outputs[name]
            if out.dim() != 4:
                raise InspectnetError(f"layer {layer!r} gives {out.dim()}-D outputs; SAN needs (B, C, H, W) maps")
            maps.append(out[:, :channels].reshape(-1, 1, *out.shape[2:]))
    x = torch.cat(maps)
    return x / x.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
