"""Where the positions of a layer's output are: channels-first maps, channels-last maps or tokens.

A layer output is read in one of four layouts:

* ``NCHW`` — channels-first maps (B, C, H, W), as convolutions give them;
* ``NHWC`` — channels-last maps (B, H, W, C), as Swin's stages give them;
* ``NLC`` — tokens (B, N, C), as ViT blocks give them: the first ``prefix_tokens`` (class,
  distillation and register tokens) are not grid positions and are excluded; the rest are the
  patches of an (h, w) grid in row-major order;
* ``NC`` — one vector per image, without positions.

:func:`layer_layout` decides from what the model declares (timm's ``num_prefix_tokens``, its
``patch_embed.grid_size``, ``output_fmt``; torchvision ViT's class token) and checks it against the
output's shape and the input's height and width; an output that cannot be put on a grid is refused
in one line naming its layout. :meth:`Layout.maps` then gives (B, C, h, w) maps (or (B, C)) with the
units on axis 1, which is what every reducer, dissection and receptive field reads.

>>> import timm
>>> vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=3)
>>> lay = layer_layout(vit, "blocks.0", torch.zeros(2, 17, 192), input_shape=(2, 3, 64, 64))
>>> lay.kind, lay.grid, lay.prefix_tokens, lay.excluded
('NLC', (4, 4), 1, '1 class token')
>>> tuple(lay.maps(torch.zeros(2, 17, 192)).shape)
(2, 192, 4, 4)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError

LAYOUTS = ("NCHW", "NHWC", "NLC", "NC")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one layer's output holds its units and positions (see the module docstring).

    ``grid`` is the (h, w) of the positions (None for ``NC``); ``prefix_tokens`` the leading tokens
    of an ``NLC`` output that are left out, and ``excluded`` says which they are, in words.
    """

    kind: str
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0
    excluded: str = ""

    def maps(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (an output in this layout) as (B, C, h, w) maps, or (B, C) for ``NC``.

        Args:
            t: the layer's output.

        Returns:
            The units on axis 1 and the grid on axes 2 and 3; prefix tokens dropped.

        Examples:
            >>> Layout("NHWC", (2, 3)).maps(torch.zeros(1, 2, 3, 5)).shape
            torch.Size([1, 5, 2, 3])
        """
        if self.kind == "NC":
            return t
        if self.kind == "NCHW":
            return t
        if self.kind == "NHWC":
            return t.permute(0, 3, 1, 2)
        h, w = self.grid
        patches = t[:, self.prefix_tokens:]
        return patches.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    def output_of(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) ``maps`` back in this layout, the inverse of :meth:`maps`; prefix tokens get zeros.

        What a change made on the maps is in the layer's own output (to subtract a component from it).

        Args:
            maps: (B, C, h, w) maps on this layout's grid (or (B, C) for ``NC``).

        Returns:
            The tensor in the layer's output layout.

        Examples:
            >>> out = Layout("NLC", (2, 2), 1).output_of(torch.arange(8.).reshape(1, 2, 2, 2))
            >>> out.shape, out[0, 0].tolist(), out[0, 1].tolist()
            (torch.Size([1, 5, 2]), [0.0, 0.0], [0.0, 4.0])
        """
        if self.kind in ("NC", "NCHW"):
            return maps
        if self.kind == "NHWC":
            return maps.permute(0, 2, 3, 1)
        tokens = maps.flatten(2).transpose(1, 2)
        prefix = tokens.new_zeros(tokens.shape[0], self.prefix_tokens, tokens.shape[2])
        return torch.cat([prefix, tokens], 1)

    def to_dict(self) -> dict[str, Any]:
        """The layout as JSON-ready values (``grid`` as a list, ``excluded`` words).

        Returns:
            ``{"kind", "grid", "prefix_tokens", "excluded"}``.
        """
        return {"kind": self.kind, "grid": list(self.grid) if self.grid else None,
                "prefix_tokens": self.prefix_tokens, "excluded": self.excluded}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Layout:
        """The layout that :meth:`to_dict` wrote.

        Args:
            d: the dict of :meth:`to_dict`.

        Returns:
            The layout.

        Examples:
            >>> Layout.from_dict(Layout("NHWC", (2, 2)).to_dict())
            Layout(kind='NHWC', grid=(2, 2), prefix_tokens=0, excluded='')
        """
        grid = d.get("grid")
        return cls(d["kind"], tuple(grid) if grid else None, int(d.get("prefix_tokens", 0)), d.get("excluded", ""))

    def describe(self) -> str:
        """One line for reports, e.g. ``tokens on a 4×4 grid (1 class token excluded)``.

        Returns:
            The line.

        Examples:
            >>> Layout("NLC", (4, 4), 2, "1 class token, 1 distillation token").describe()
            'tokens on a 4×4 grid (1 class token, 1 distillation token excluded)'
        """
        if self.kind == "NC":
            return "one vector per image (no positions)"
        what = {"NCHW": "channels-first maps", "NHWC": "channels-last maps", "NLC": "tokens"}[self.kind]
        text = f"{what} on a {self.grid[0]}×{self.grid[1]} grid"
        if self.kind == "NLC":
            text += f" ({self.excluded} excluded)" if self.prefix_tokens else " (no prefix tokens)"
        return text


def prefix_tokens(model: nn.Module | None) -> tuple[int, str]:
    """(count, words) of the leading non-patch tokens that ``model`` declares.

    timm models declare ``num_prefix_tokens`` (class token, DeiT's distillation token, register
    tokens); torchvision's ViT has one class token. Anything else declares none.

    Args:
        model: the network (or None).

    Returns:
        The number of prefix tokens and which they are, e.g. ``(5, "1 class token, 4 register tokens")``.

    Examples:
        >>> prefix_tokens(nn.Linear(2, 2))
        (0, '')
    """
    if model is None:
        return 0, ""
    declared = getattr(model, "num_prefix_tokens", None)
    if declared is None:
        has_class = isinstance(getattr(model, "class_token", None), torch.Tensor)  # torchvision's ViT
        return (1, "1 class token") if has_class else (0, "")
    parts = [(1 if getattr(model, "cls_token", None) is not None else 0, "class token"),
             (1 if getattr(model, "dist_token", None) is not None else 0, "distillation token"),
             (int(getattr(model, "num_reg_tokens", 0) or 0), "register token")]
    named = sum(k for k, _ in parts)
    if named != int(declared):  # a family that names its prefix tokens otherwise
        parts = [(int(declared), "prefix token")]
    return int(declared), ", ".join(f"{k} {w}{'s' if k > 1 else ''}" for k, w in parts if k)


def patch_grid(model: nn.Module | None) -> tuple[int, int] | None:
    """The (h, w) patch grid the model declares at its configured input size, else None.

    That is timm's ``patch_embed.grid_size``, or torchvision ViT's ``image_size // patch_size``.

    Args:
        model: the network (or None).

    Returns:
        The grid, or None.

    Examples:
        >>> patch_grid(nn.Linear(2, 2)) is None
        True
    """
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is not None:
        return int(grid[0]), int(grid[1])
    size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return size // patch, size // patch
    return None


def layer_layout(model: nn.Module | None, layer: str, out: torch.Tensor, *,
                 input_shape: Sequence[int] | None = None) -> Layout:
    """The :class:`Layout` of ``out``, the output of ``model``'s module ``layer`` on an input of ``input_shape``.

    Args:
        model: the network whose module gave ``out`` (declares prefix tokens, patch grid, output format).
        layer: the module's dotted name (its own ``output_fmt`` or a ``…2d`` type settles channels-first).
        out: the output tensor.
        input_shape: (B, C, H, W) of the network's input, when known; it checks that the batch is on
            axis 0 and that the grid has the input's proportions.

    Returns:
        The layout.

    Raises:
        InspectnetError: the output's first axis is not the batch, or the output has no grid (the message
            names the shape and the layouts expected).

    Examples:
        >>> layer_layout(None, "conv", torch.zeros(2, 8, 16, 16), input_shape=(2, 3, 64, 64)).kind
        'NCHW'
    """
    shape = tuple(out.shape)
    batch, hw = (None, None) if input_shape is None else (int(input_shape[0]), tuple(int(s) for s in input_shape[-2:]))
    if batch is not None and shape[0] != batch:
        raise InspectnetError(f"layer {layer!r} gives outputs of shape {shape} whose first axis is not the batch of "
                              f"{batch} images (windows or heads folded into it); choose the block's output")
    if out.dim() == 2:
        return Layout("NC")
    if out.dim() == 3:
        return _token_layout(model, layer, shape, hw)
    if out.dim() == 4:
        return _map_layout(model, layer, shape, hw)
    raise InspectnetError(f"layer {layer!r} gives {out.dim()}-D outputs of shape {shape}; expected (B, C), "
                          f"(B, N, C) tokens, (B, C, H, W) or (B, H, W, C) maps")


def _fits(h: int, w: int, hw: tuple[int, int] | None) -> bool:
    """Whether an (h, w) grid can be positions of an input of ``hw``.

    It must be no larger, and its proportions those of the input within one cell (strided and padded
    grids round their sides).
    """
    if hw is None:
        return True
    big_h, big_w = hw
    return 1 <= h <= big_h and 1 <= w <= big_w and abs(h * big_w - w * big_h) <= max(big_h, big_w)


def _declared_format(model: nn.Module | None, layer: str) -> str:
    """The 4-D format a module declares.

    Its own ``output_fmt``, channels-first for ``…2d`` modules (convolutions, batch norms, pools), else
    the model's ``output_fmt`` (timm's Swin says NHWC).
    """
    module = None
    if model is not None and layer:
        try:
            module = model.get_submodule(layer)
        except AttributeError:
            module = None
    own = getattr(module, "output_fmt", None)
    if own is not None:
        return str(getattr(own, "value", own))
    if module is not None and type(module).__name__.endswith("2d"):
        return "NCHW"
    whole = getattr(model, "output_fmt", None)
    return str(getattr(whole, "value", whole)) if whole is not None else "NCHW"


def _map_layout(model: nn.Module | None, layer: str, shape: tuple[int, ...], hw) -> Layout:
    grids = {"NCHW": (shape[2], shape[3]), "NHWC": (shape[1], shape[2])}
    fitting = [k for k, (h, w) in grids.items() if _fits(h, w, hw)]
    declared = _declared_format(model, layer)
    if declared in fitting:
        return Layout(declared, grids[declared])
    if len(fitting) == 1:  # the shape rules the declared format out (ConvNeXt's channels-last norms)
        return Layout(fitting[0], grids[fitting[0]])
    raise InspectnetError(f"layer {layer!r} gives 4-D outputs of shape {shape} that are neither channels-first "
                          f"(B, C, H, W) nor channels-last (B, H, W, C) maps of the {hw[0]}×{hw[1]} input")


def _token_layout(model: nn.Module | None, layer: str, shape: tuple[int, ...], hw) -> Layout:
    n = shape[1]
    count, words = prefix_tokens(model)
    declared = patch_grid(model)
    for p in dict.fromkeys((count, 0)):  # the declared prefix first; patch embeddings have none yet
        cells = n - p
        if cells < 1:
            continue
        grid = declared if declared and declared[0] * declared[1] == cells else _grid_of(cells, hw)
        if grid is not None:
            return Layout("NLC", grid, p, words if p else "")
    known = f"patch grid {declared[0]}×{declared[1]}" if declared else "no declared patch grid"
    size = f"the {hw[0]}×{hw[1]} input" if hw else "an input of unknown size"
    raise InspectnetError(f"layer {layer!r} gives {n} tokens (B, N, C) that form no grid of {size} after "
                          f"{count} prefix tokens ({known}); cannot map them to positions")


def _grid_of(cells: int, hw: tuple[int, int] | None) -> tuple[int, int] | None:
    """The one (h, w) with h·w = ``cells`` in the input's proportions (a square without an input size).

    None when there is no grid, or two are equally close (ambiguous).
    """
    if hw is None:
        side = int(cells ** 0.5 + 0.5)
        return (side, side) if side * side == cells else None
    big_h, big_w = hw
    options = sorted((abs(h * big_w - (cells // h) * big_h), h) for h in range(1, cells + 1) if cells % h == 0)
    best = [h for err, h in options if err == options[0][0]]
    if len(best) != 1 or not _fits(best[0], cells // best[0], hw):
        return None
    return best[0], cells // best[0]
