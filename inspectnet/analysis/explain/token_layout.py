"""How a token transformer turns its token states into logits, read from its modules.

The families are timm's ViT, DeiT-distilled and BEiT, and torchvision's ViT; each block is recomputed
with its attention probabilities and value vectors exposed.

:func:`read_layout` refuses, with the property named, every architecture whose blocks or head are not
covered: class-attention layers (CaiT), windowed channels-last attention (Swin), post-norm or parallel
blocks, rotary or gated attention, attention pooling, heads other than a linear layer.
:func:`attention_step` recomputes one block from its own weights; :func:`block_mismatch` measures how
far that recomputation is from the block's real output, so a block read wrongly is never explained.

>>> import timm
>>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
>>> lay = read_layout(m, "head")
>>> lay.family, lay.prefix_tokens, [(r.head, r.token) for r in lay.readouts]
('vit', 1, [('head', 0)])
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from inspectnet.core.errors import InspectnetError
from inspectnet.models.heads import ChannelGather, DecomposedLinear

# architectures refused by class name, with the property that prevents the decomposition
_REFUSED = {
    "Cait": "reads its class token through class-attention layers (CaiT), a second attention stack this "
            "decomposition does not cover",
    "SwinTransformer": "attends within shifted windows over a channels-last map (Swin) and has no class token",
    "SwinTransformerV2": "attends within shifted windows over a channels-last map (Swin) and has no class token",
    "Eva": "rotates queries and keys with rotary position embeddings (EVA) that are not recomputed here",
    "Levit": "attends on a shrinking convolutional grid with attention biases per stage (LeViT)",
}


@dataclasses.dataclass(frozen=True)
class Readout:
    """One linear head (``head``) reading the token states.

    It reads the token at ``token``, or (None) the mean of tokens from ``start`` on; its logits are scaled by
    ``factor`` (½ for each of DeiT's two heads).
    """

    head: str
    token: int | None
    start: int = 0
    factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Where a token transformer keeps what its logits are computed from.

    Family (``vit``, ``beit`` or ``torchvision``), leading non-patch tokens (class, distillation,
    registers), the heads' readouts, the LayerNorms on every token (``token_norm``) and after pooling
    (``pooled_norm``), where the blocks are (``blocks``) and the token width.
    """

    family: str
    prefix_tokens: int
    readouts: tuple[Readout, ...]
    token_norm: str | None
    pooled_norm: str | None
    blocks: str = "blocks"
    width: int = 0


def read_layout(model: nn.Module, head_name: str) -> TokenLayout:
    """Read ``model``'s token layout, or raise :class:`InspectnetError` naming the property that prevents it.

    Args:
        model: a timm VisionTransformer, VisionTransformerDistilled or Beit, or a torchvision VisionTransformer.
        head_name: dotted name of its classifier (the linear head).

    Returns:
        The :class:`TokenLayout`.

    Raises:
        InspectnetError: an architecture, pooling, final norm, block or head that the decomposition does not cover.

    Examples:
        >>> read_layout(timm.create_model("beit_base_patch16_224", img_size=32, depth=1), "head").readouts
        ... # doctest: +SKIP
        (Readout(head='head', token=None, start=1, factor=1.0),)
    """
    name = type(model).__name__
    if name in _REFUSED:
        raise InspectnetError(_REFUSED[name])
    if type(model).__module__.startswith("torchvision."):
        layout = _torchvision_layout(model, head_name)
    else:
        layout = _timm_layout(model, head_name)
    for i, blk in enumerate(model.get_submodule(layout.blocks)):
        _check_block(layout.family, blk, i)
    for r in layout.readouts:
        head_weights(model.get_submodule(r.head), layout.width)
    return layout


def _timm_layout(model: nn.Module, head_name: str) -> TokenLayout:
    from timm.models.beit import Beit
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Beit):
        family = "beit"
    elif isinstance(model, VisionTransformer):
        family = "vit"
        if getattr(model, "attn_pool", None) is not None:
            raise InspectnetError("pools its tokens with attention (MAP/PRR head): the pooling weights depend on "
                                  "every token jointly")
    else:
        raise InspectnetError(f"is a {type(model).__module__}.{type(model).__name__}, not a ViT, DeiT or BEiT "
                              f"token transformer (no plain pre-norm attention blocks reading patch tokens)")
    return TokenLayout(family=family, prefix_tokens=int(model.num_prefix_tokens), readouts=_readouts(model, head_name),
                       token_norm=_layer_norm(model, "norm"), pooled_norm=_layer_norm(model, "fc_norm"),
                       width=int(model.embed_dim))


def _torchvision_layout(model: nn.Module, head_name: str) -> TokenLayout:
    from torchvision.models import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise InspectnetError(f"is a {type(model).__module__}.{type(model).__name__}, not a ViT, DeiT or BEiT "
                              f"token transformer (no plain pre-norm attention blocks reading patch tokens)")
    if len(model.heads) != 1:
        raise InspectnetError("has a hidden tanh layer (pre_logits) between its class token and its classifier")
    return TokenLayout(family="torchvision", prefix_tokens=1, readouts=(Readout(head_name, 0),),
                       token_norm=_layer_norm(model, "encoder.ln"), pooled_norm=None, blocks="encoder.layers",
                       width=int(model.hidden_dim))


def _readouts(model: nn.Module, head_name: str) -> tuple[Readout, ...]:
    pool = model.global_pool
    if getattr(model, "head_dist", None) is not None:  # DeiT-distilled: both heads averaged at eval
        return Readout(head_name, 0, factor=0.5), Readout("head_dist", 1, factor=0.5)
    if pool == "token":
        return (Readout(head_name, 0),)
    if pool == "avg":
        start = 0 if getattr(model, "pool_include_prefix", False) else int(model.num_prefix_tokens)
        return (Readout(head_name, None, start=start),)
    raise InspectnetError(f"pools its tokens with {pool!r} pooling; the decomposition covers a class-token "
                          f"head ('token') and mean pooling ('avg')")


def _layer_norm(model: nn.Module, name: str) -> str | None:
    """``name`` when that module is a LayerNorm over the features; None when absent or an Identity."""
    module = dict(model.named_modules()).get(name, nn.Identity())
    if isinstance(module, nn.Identity):
        return None
    if not (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1):
        raise InspectnetError(f"normalises its final tokens with {type(module).__name__} ({name}), not a "
                              f"LayerNorm over the features, so the final state is not affine in the residual terms")
    return name


def _check_block(family: str, blk: nn.Module, index: int) -> None:
    from timm.layers.attention import Attention
    from timm.models.beit import Attention as BeitAttention
    from timm.models.beit import Block as BeitBlock
    from timm.models.vision_transformer import Block

    where = f"block {index} ({type(blk).__name__})"
    if family == "torchvision":
        _check_torchvision_block(blk, where)
        return
    if family == "beit":
        if type(blk) is not BeitBlock or type(blk.attn) is not BeitAttention:
            raise InspectnetError(f"{where} is not a BEiT pre-norm attention block")
        return
    if type(blk) is not Block:
        kind = {"ResPostBlock": "normalises the residual branch after attention (post-norm blocks)",
                "ParallelScalingBlock": "runs attention and the MLP in parallel from one projection",
                "ParallelThingsBlock": "runs several attention branches in parallel"}
        raise InspectnetError(f"{where} " + kind.get(type(blk).__name__, "is not a pre-norm attention block"))
    attn = blk.attn
    if type(attn) is not Attention:
        raise InspectnetError(f"{where} uses {type(attn).__name__} (e.g. rotary embeddings), not plain attention")
    if attn.gate is not None or not isinstance(attn.norm, nn.Identity):
        raise InspectnetError(f"{where} gates or normalises the attention output before its projection")
    if attn.proj.in_features != attn.num_heads * attn.head_dim:
        raise InspectnetError(f"{where} projects {attn.proj.in_features} features, not its heads' values")


def _check_torchvision_block(blk: nn.Module, where: str) -> None:
    from torchvision.models.vision_transformer import EncoderBlock

    mha = getattr(blk, "self_attention", None)
    if type(blk) is not EncoderBlock or not isinstance(mha, nn.MultiheadAttention):
        raise InspectnetError(f"{where} is not a torchvision pre-norm encoder block")
    if not (mha._qkv_same_embed_dim and mha.batch_first) or mha.bias_k is not None or mha.add_zero_attn:
        raise InspectnetError(f"{where} adds key/value biases or zero attention, or has separate q/k/v widths")


def head_weights(head: nn.Module, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of a classifier over the full ``width`` features: (W (C, width), b (C,)).

    Args:
        head: the classifier module.
        width: the token width D.

    Returns:
        W and b (zeros when the head has no bias).

    Raises:
        InspectnetError: a head other than a dense Linear, a decomposed head (its masked weights are read) or its
            export form (a gather, then a Linear: W is scattered back onto the full width), or another width.

    Examples:
        >>> head_weights(nn.Linear(4, 2), 4)[0].shape
        torch.Size([2, 4])
    """
    if isinstance(head, nn.Sequential) and len(head) == 2 and isinstance(head[0], ChannelGather) \
            and isinstance(head[1], nn.Linear):
        lin = head[1]
        # a one-hot selection matrix, so the export form needs no scatter operator
        pick = (head[0].index[:, None] == torch.arange(width, device=lin.weight.device)[None]).to(lin.weight.dtype)
        w, b = lin.weight @ pick, lin.bias
    elif isinstance(head, DecomposedLinear):
        w, b = head.effective_weight(), head.bias
    elif isinstance(head, nn.Linear):
        w, b = head.weight, head.bias
    else:
        raise InspectnetError(f"has a {type(head).__name__} classifier, not a linear layer")
    if w.shape[1] != width:
        raise InspectnetError(f"has a classifier reading {w.shape[1]} features, not the token width {width}")
    return w, (b if b is not None else w.new_zeros(w.shape[0]))


@dataclasses.dataclass
class AttentionStep:
    """One block's attention, recomputed: probabilities, value vectors and the output projection's bias.

    Probabilities (B, H, N, N), per-head values through the output projection and layer scale (B, H, N, D), bias (D,).
    """

    probs: torch.Tensor
    values: torch.Tensor
    bias: torch.Tensor

    def output(self) -> torch.Tensor:
        """The block's attention output for every token.

        Returns:
            (B, N, D) Σ_h Σ_j probs·values + bias.
        """
        return torch.einsum("bhij,bhjd->bid", self.probs, self.values) + self.bias


def layer_scales(family: str, blk: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The per-channel layer scales of a block's attention and MLP branches (None where there is none).

    Args:
        family: ``vit``, ``beit`` or ``torchvision``.
        blk: the block.

    Returns:
        (attention branch scale, MLP branch scale), each (D,) or None.

    Examples:
        >>> layer_scales("torchvision", nn.Identity())
        (None, None)
    """
    if family == "beit":
        return blk.gamma_1, blk.gamma_2
    if family == "torchvision":
        return None, None
    return tuple(getattr(ls, "gamma", None) for ls in (blk.ls1, blk.ls2))


@dataclasses.dataclass
class _Projections:
    """Where a block keeps its attention weights: the joint q/k/v projection, heads, output projection."""

    norm: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor | None
    heads: int
    scale: float
    out: nn.Linear
    q_norm: nn.Module = dataclasses.field(default_factory=nn.Identity)
    k_norm: nn.Module = dataclasses.field(default_factory=nn.Identity)


def _projections(family: str, blk: nn.Module) -> _Projections:
    if family == "torchvision":
        mha = blk.self_attention
        return _Projections(blk.ln_1, mha.in_proj_weight, mha.in_proj_bias, mha.num_heads, mha.head_dim ** -0.5,
                            mha.out_proj)
    attn = blk.attn
    if family == "beit":
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)) if attn.q_bias is not None else None
        return _Projections(blk.norm1, attn.qkv.weight, bias, attn.num_heads, attn.scale, attn.proj)
    return _Projections(blk.norm1, attn.qkv.weight, attn.qkv.bias, attn.num_heads, attn.scale, attn.proj,
                        attn.q_norm, attn.k_norm)


def attention_step(family: str, blk: nn.Module, x: torch.Tensor, shared_bias: torch.Tensor | None) -> AttentionStep:
    """Recompute ``blk``'s attention on the residual stream ``x`` (B, N, D) from the block's own weights.

    Args:
        family: ``vit``, ``beit`` or ``torchvision``.
        blk: the block.
        x: the block's input.
        shared_bias: BEiT's relative position bias shared by all blocks, or None.

    Returns:
        The :class:`AttentionStep`.

    Examples:
        >>> step = attention_step("vit", model.blocks[0], tokens, None)    # doctest: +SKIP
    """
    pr = _projections(family, blk)
    b, n, _ = x.shape
    qkv = F.linear(pr.norm(x), pr.weight, pr.bias).reshape(b, n, 3, pr.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = pr.q_norm(q), pr.k_norm(k)
    scores = (q * pr.scale) @ k.transpose(-2, -1)
    if family == "beit" and blk.attn.relative_position_bias_table is not None:
        scores = scores + blk.attn._get_rel_pos_bias()
    if shared_bias is not None:
        scores = scores + shared_bias
    probs = scores.softmax(dim=-1)
    proj = pr.out.weight.reshape(pr.out.out_features, pr.heads, -1)  # (D, H, head_dim)
    values = torch.einsum("bhjk,dhk->bhjd", v, proj)
    bias = pr.out.bias if pr.out.bias is not None else proj.new_zeros(proj.shape[0])
    scale, _ = layer_scales(family, blk)
    if scale is not None:
        values, bias = values * scale, bias * scale
    return AttentionStep(probs, values, bias)


def mlp_step(family: str, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's MLP output written into the residual stream, layer scale included.

    Args:
        family: ``vit``, ``beit`` or ``torchvision``.
        blk: the block.
        x: the stream after the block's attention (B, N, D).

    Returns:
        (B, N, D).

    Examples:
        >>> mlp_step("vit", model.blocks[0], tokens).shape    # doctest: +SKIP
        torch.Size([2, 5, 192])
    """
    out = blk.mlp(blk.ln_2(x) if family == "torchvision" else blk.norm2(x))
    _, scale = layer_scales(family, blk)
    return out * scale if scale is not None else out


def shared_position_bias(model: nn.Module) -> torch.Tensor | None:
    """BEiT's relative position bias shared by every block.

    Args:
        model: the model.

    Returns:
        (1, H, N, N), or None when the model shares none.

    Examples:
        >>> shared_position_bias(timm.create_model("vit_tiny_patch16_224")) is None    # doctest: +SKIP
        True
    """
    rel = getattr(model, "rel_pos_bias", None)
    return rel() if isinstance(rel, nn.Module) else None


def run_blocks(layout: TokenLayout, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The real residual stream after each block, the blocks run as the model runs them.

    Args:
        layout: from :func:`read_layout`.
        model: the model.
        x: the stream before the first block (B, N, D).

    Returns:
        One (B, N, D) tensor per block.

    Examples:
        >>> run_blocks(layout, model, tokens)[-1].shape    # doctest: +SKIP
        torch.Size([2, 5, 192])
    """
    shared = shared_position_bias(model)
    out = []
    for blk in model.get_submodule(layout.blocks):
        x = blk(x, shared_rel_pos_bias=shared) if layout.family == "beit" else blk(x)
        out.append(x)
    return out


def embed(layout: TokenLayout, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The residual stream before the first block and the patch grid, computed by the model's own modules.

    Args:
        layout: from :func:`read_layout`.
        model: the model.
        images: model inputs (B, C, H, W).

    Returns:
        (tokens (B, N, D), (gh, gw)).

    Examples:
        >>> embed(layout, model, torch.zeros(1, 3, 32, 32))[1]    # doctest: +SKIP
        (2, 2)
    """
    if layout.family == "torchvision":
        grid = (images.shape[2] // model.patch_size, images.shape[3] // model.patch_size)
        tokens = model._process_input(images)
        tokens = torch.cat((model.class_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return model.encoder.dropout(tokens + model.encoder.pos_embedding), grid
    tokens = model.patch_embed(images)
    grid = tuple(int(s) for s in (tokens.shape[1:3] if tokens.dim() == 4 else model.patch_embed.grid_size))
    if layout.family == "beit":
        tokens = torch.cat((model.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        if model.pos_embed is not None:
            tokens = tokens + model.pos_embed
        return model.pos_drop(tokens), grid
    return model.norm_pre(model.patch_drop(model._pos_embed(tokens))), grid


def block_mismatch(layout: TokenLayout, model: nn.Module, images: torch.Tensor) -> float:
    """Largest relative difference between each block's real output and its recomputation (same input).

    Args:
        layout: from :func:`read_layout`.
        model: the model, in eval mode.
        images: a batch of inputs.

    Returns:
        max over blocks of max|real − recomputed| / (1 + max|real|).

    Examples:
        >>> block_mismatch(layout, model, torch.randn(2, 3, 32, 32)) < 1e-4    # doctest: +SKIP
        True
    """
    x, _ = embed(layout, model, images)
    shared = shared_position_bias(model)
    worst = 0.0
    for blk, real in zip(model.get_submodule(layout.blocks), run_blocks(layout, model, x)):
        mid = x + attention_step(layout.family, blk, x, shared).output()
        mine = mid + mlp_step(layout.family, blk, mid)
        worst = max(worst, float((real - mine).abs().max()) / (1.0 + float(real.abs().max())))
        x = real
    return worst
