"""Exact class evidence for transformer heads: per-patch-token maps plus a reported remainder.

Each logit is split into per-patch-token maps plus a reported remainder, by the residual stream's direct
effects (Gandelsman, Efros, Steinhardt, ICLR 2024, "Interpreting CLIP's image representation via text-based decomposition").

The residual stream of token i after the last block is a sum of terms written into it: the embedding
x₀[i], each block's attention output Σ_h Σ_j A^{l,h}[i, j]·u^{l,h}_j + b^l (u: the value vector of
source token j through the output projection and layer scale of head h; b: that projection's bias),
and each block's MLP output. A head reads a weighted sum of final states, Σ_i ρ_i·x_L[i] (ρ: the
class token, DeiT's class and distillation tokens, or the mean over patch tokens), through
LayerNorms. With each LayerNorm's scale 1/σ taken for the given input (a constant of that input),
LN(Σ τ) = Σ (τ − mean τ)·γ/σ + β is linear in the terms, so, projected through the head W,

    logit_c = Σ_terms R_c·τ·s + (constants from β) + b_c,     R = W·diag(γ)·(I − 11ᵀ/D)

(the norms chained when there is one per token and one after pooling). Each term goes to the token it
is computed from: an attention term to its *source* token j (the value it moves), an MLP or embedding
term to the token it is written on. Summed over layers and heads, the patch tokens' terms form the
evidence map on the patch grid; everything else is the **remainder**: terms from the class,
distillation and register tokens (their attention values, MLPs and embeddings), the projection
biases, and the LayerNorm β. Hence, exactly (to float rounding)

    evidence.sum((2, 3)) + remainder + bias == logits

These are direct effects, not total effects: a patch's value is itself computed from every token in
earlier layers. For a class-token head the MLPs and embeddings of patch tokens are not read directly
(ρ_i = 0) and only reach the logit through attention; for mean pooling they sit on the patches read.

>>> import timm
>>> from inspectnet.models.zoo import ZooModel, find_head
>>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=4).eval()
>>> zm = ZooModel(model=m, source="timm", arch="vit", num_classes=4, in_chans=3, class_names=list("abcd"),
...               data_config={"input_size": (3, 32, 32)}, head_name=find_head(m))
>>> logits, evidence, remainder = TokenEvidence(zm)(torch.randn(2, 3, 32, 32))
>>> bool(torch.allclose(evidence.sum((2, 3)) + remainder + m.head.bias, logits, atol=1e-4)), evidence.shape
(True, torch.Size([2, 4, 2, 2]))
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from inspectnet.analysis.explain.token_layout import (
    TokenLayout,
    attention_step,
    block_mismatch,
    embed,
    head_weights,
    mlp_step,
    read_layout,
    run_blocks,
    shared_position_bias,
)
from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import eval_mode

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

REMAINDER_PARTS = ("prefix_attention", "prefix_mlp", "prefix_embedding", "constant")


def token_evidence_supported(zm: ZooModel) -> str | None:
    """None when :class:`TokenEvidence` explains ``zm`` exactly, else a one-line reason naming the property.

    The reading is checked on a seeded random input: every recomputed block must equal the real block,
    the logits the model's own, and the evidence must sum to them (to float tolerance).

    Args:
        zm: the model.

    Returns:
        None, or the reason (e.g. "… reads its class token through class-attention layers (CaiT) …").

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> token_evidence_supported(load_model("resnet18", num_classes=3, input_size=32))
        'timm:resnet18 is a timm.models.resnet.ResNet, not a ViT, DeiT or BEiT token transformer (no plain pre-norm \
attention blocks reading patch tokens), so exact token evidence is refused'
    """
    try:
        module = TokenEvidence(zm)
        _check_exact(zm, module)
    except InspectnetError as exc:
        return str(exc)
    return None


def _refusal(zm: ZooModel, reason: str) -> InspectnetError:
    return InspectnetError(f"{zm.spec} {reason}, so exact token evidence is refused")


def _check_exact(zm: ZooModel, module: TokenEvidence) -> None:
    size = tuple(zm.data_config["input_size"])
    device = next(zm.model.parameters()).device
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(0)).to(device)
    with eval_mode(zm.model), torch.no_grad():
        blocks = block_mismatch(module.layout, zm.model, x)
        want = zm.model(x)
        dec = module.decompose(x)
    scale = 1.0 + float(want.abs().max())
    logits = float((dec.logits - want).abs().max()) / scale
    total = float((dec.total() - want).abs().max()) / scale
    if max(blocks, logits, total) > 1e-3:
        raise _refusal(zm, f"does not compute its tokens as read (recomputed blocks differ by {blocks:.3g}, "
                           f"logits by {logits:.3g}, evidence sums by {total:.3g}, relative)")


@dataclasses.dataclass(frozen=True)
class TokenDecomposition:
    """The decomposition of a batch's logits (B images, C classes, L layers, H heads, gh × gw patches).

    ``evidence`` (B, C, gh, gw) + ``remainder`` (B, C) + ``bias`` (C,) sums to ``logits`` (B, C);
    ``parts`` splits the remainder (each (B, C), see :data:`REMAINDER_PARTS`); ``heads`` (B, L, H, C)
    is each attention head's direct effect (all source tokens, projection bias excluded), ``mlps``
    (B, L, C) each MLP's direct effect on the tokens the head reads and ``embeddings`` (B, C) that of the
    embeddings, so ``heads.sum((1, 2)) + mlps.sum(1) + embeddings + parts["constant"] + bias == logits``.
    """

    logits: torch.Tensor
    evidence: torch.Tensor
    remainder: torch.Tensor
    bias: torch.Tensor
    parts: dict[str, torch.Tensor]
    heads: torch.Tensor
    mlps: torch.Tensor
    embeddings: torch.Tensor

    def total(self) -> torch.Tensor:
        """The logits rebuilt from their parts.

        Returns:
            (B, C) Σ evidence + remainder + bias: equal to ``logits`` up to float rounding.
        """
        return self.evidence.sum((2, 3)) + self.remainder + self.bias


class TokenEvidence(nn.Module):
    """A token transformer with its exact class evidence as second and third outputs (ONNX-exportable).

    ``forward(x) -> (logits (B, C), evidence (B, C, gh, gw), remainder (B, C))`` for every class, with
    ``evidence.sum((2, 3)) + remainder + bias == logits`` (see the module doc).

    Every block is recomputed from its own weights (the attention probabilities and value vectors are
    needed per head and token); the logits come from that recomputation through the model's own norms
    and heads. Refuses (:class:`InspectnetError`, the property named) what :func:`read_layout` refuses.

    Args:
        zm: a timm ViT (class token or mean pooling, registers), DeiT-distilled, BEiT or torchvision's ViT, in
            eval mode when used.

    Raises:
        InspectnetError: the model's layout is refused (:func:`read_layout`), with the property named.

    Examples:
        >>> import timm
        >>> from inspectnet.models.zoo import ZooModel
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
        >>> zm = ZooModel(model=m, source="timm", arch="vit", num_classes=3, in_chans=3, class_names=list("abc"),
        ...               data_config={"input_size": (3, 32, 32)}, head_name="head")
        >>> tokens = TokenEvidence(zm)
        >>> logits, ev, rem = tokens(torch.randn(1, 3, 32, 32))
        >>> ev.shape, bool(torch.allclose(ev.sum((2, 3)) + rem + tokens.bias(), logits, atol=1e-4))
        (torch.Size([1, 3, 2, 2]), True)
    """

    def __init__(self, zm: ZooModel):
        super().__init__()
        try:
            self.layout: TokenLayout = read_layout(zm.model, zm.head_name)
        except InspectnetError as exc:
            raise _refusal(zm, str(exc)) from None
        self.model = zm.model
        # one extra pass gives per-token LayerNorm scales before the decomposition when a head reads
        # several tokens through a per-token norm; otherwise the scale is applied after it
        self.two_pass = self.layout.token_norm is not None and any(r.token is None for r in self.layout.readouts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The logits and their exact split for every class.

        Args:
            x: (B, C_in, H, W) input images.

        Returns:
            ``(logits (B, C), evidence (B, C, gh, gw), remainder (B, C))``.
        """
        dec = self.decompose(x)
        return dec.logits, dec.evidence, dec.remainder

    def _norm(self, name: str | None) -> nn.LayerNorm | None:
        return self.model.get_submodule(name) if name else None

    def _readout_weights(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """ρ (K, N): how much each readout reads each token's final (normed) state."""
        rows = []
        for r in self.layout.readouts:
            row = like.new_zeros(n)
            if r.token is not None:
                row[r.token] = 1.0
            else:
                row[r.start:] = 1.0 / (n - r.start)
            rows.append(row)
        return torch.stack(rows)

    def bias(self) -> torch.Tensor:
        """The logits' constant term.

        Returns:
            b (C,): the heads' biases (averaged for DeiT's two heads).
        """
        return sum(r.factor * head_weights(self.model.get_submodule(r.head), self.layout.width)[1]
                   for r in self.layout.readouts)

    def _projections(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """R (K, C, D) for residual terms, R_β (K, C, D) for the per-token norm's β, and W·β₂ (K, C)."""
        tok, pooled = self._norm(self.layout.token_norm), self._norm(self.layout.pooled_norm)
        res, beta_proj, beta2 = [], [], []
        for r in self.layout.readouts:
            w, _ = head_weights(self.model.get_submodule(r.head), self.layout.width)
            w = w * r.factor
            beta2.append(w @ pooled.bias if pooled is not None and pooled.bias is not None else w.new_zeros(w.shape[0]))
            if pooled is not None:
                w = _centre(_scaled(w, pooled))
            beta_proj.append(w)
            if tok is not None:
                w = _centre(_scaled(w, tok))
            res.append(w)
        return torch.stack(res), torch.stack(beta_proj), torch.stack(beta2)

    def _final_scales(self, final: torch.Tensor, rho: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and the final norms' scales from the last residual stream (B, N, D).

        Returns logits (B, C), the per-token norm's 1/σ (B, N), and the pooled norm's 1/σ per readout (B, K).
        """
        tok, pooled = self._norm(self.layout.token_norm), self._norm(self.layout.pooled_norm)
        normed = tok(final) if tok is not None else final
        inv_tok = _inverse_sigma(final, tok) if tok is not None else final.new_ones(final.shape[:2])
        logits, inv_pool = 0.0, []
        for k, r in enumerate(self.layout.readouts):
            state = torch.einsum("n,bnd->bd", rho[k], normed)
            inv_pool.append(_inverse_sigma(state, pooled) if pooled is not None else state.new_ones(state.shape[0]))
            head = self.model.get_submodule(r.head)
            logits = logits + r.factor * head(pooled(state) if pooled is not None else state)
        return logits, inv_tok, torch.stack(inv_pool, dim=1)

    def decompose(self, x: torch.Tensor) -> TokenDecomposition:
        """The full :class:`TokenDecomposition` of the batch ``x`` (B, C_in, H, W).

        Args:
            x: model inputs.

        Returns:
            The decomposition; its first three fields are what ``forward`` returns.

        Examples:
            >>> import timm
            >>> from inspectnet.models.zoo import ZooModel
            >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
            >>> zm = ZooModel(model=m, source="timm", arch="vit", num_classes=3, in_chans=3,
            ...               class_names=list("abc"), data_config={"input_size": (3, 32, 32)}, head_name="head")
            >>> dec = TokenEvidence(zm).decompose(torch.randn(2, 3, 32, 32))
            >>> bool((dec.total() - dec.logits).abs().max() < 1e-4), tuple(dec.heads.shape)
            (True, (2, 1, 3, 3))
        """
        fam, p = self.layout.family, self.layout.prefix_tokens
        tokens, grid = embed(self.layout, self.model, x)
        b, n, d = tokens.shape
        rho = self._readout_weights(n, tokens)
        if self.two_pass:
            inv_tok = _inverse_sigma(run_blocks(self.layout, self.model, tokens)[-1], self._norm(self.layout.token_norm))
            weights = rho[None] * inv_tok[:, None, :]                                      # (B, K, N)
        else:
            weights = rho[None].expand(b, -1, -1)
        # per readout k and token j, the terms attributed to j: attention moved from j, MLP and embedding on j
        moved = tokens.new_zeros(b, len(rho), n, d)
        embedded = weights[..., None] * tokens[:, None]
        on_token = torch.zeros_like(embedded)
        constant = tokens.new_zeros(b, len(rho), d)
        heads, mlps = [], []
        shared = shared_position_bias(self.model)
        stream = tokens
        for blk in self.model.get_submodule(self.layout.blocks):
            step = attention_step(fam, blk, stream, shared)
            through = torch.einsum("bki,bhij->bkhj", weights, step.probs)                 # (B, K, H, N)
            moved = moved + torch.einsum("bkhj,bhjd->bkjd", through, step.values)
            heads.append(torch.einsum("bkhj,bhjd->bkhd", through, step.values))
            constant = constant + weights.sum(-1)[..., None] * step.bias
            stream = stream + step.output()
            mlp = mlp_step(fam, blk, stream)
            read = weights[..., None] * mlp[:, None]                                        # (B, K, N, D)
            on_token = on_token + read
            mlps.append(read.sum(2))
            stream = stream + mlp
        logits, inv_tok, inv_pool = self._final_scales(stream, rho)
        scale = inv_pool if self.two_pass else inv_pool * self._read_token_scale(inv_tok)   # (B, K)
        res, beta_proj, beta2 = self._projections()

        def project(terms: torch.Tensor) -> torch.Tensor:  # (B, K, M..., D) -> (B, M..., C), scaled per readout
            flat = terms.reshape(terms.shape[0], terms.shape[1], -1, terms.shape[-1]) * scale[..., None, None]
            out = torch.einsum("kcd,bkmd->bmc", res, flat)
            return out.reshape(*terms.shape[:1], *terms.shape[2:-1], out.shape[-1])

        # one projection of all terms per token (the costly one: N·C·D per readout); the parts only
        # project the few prefix tokens' sums
        patches = project(moved + on_token + embedded)[:, p:]                              # (B, Np, C)
        evidence = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid)
        tok = self._norm(self.layout.token_norm)
        beta = beta2.sum(0)[None]
        if tok is not None and tok.bias is not None:
            beta = beta + torch.einsum("kcd,d,bk->bc", beta_proj, tok.bias, inv_pool)
        kinds = {"attention": moved, "mlp": on_token, "embedding": embedded}
        parts = {f"prefix_{kind}": project(terms[:, :, :p].sum(2)) for kind, terms in kinds.items()}
        parts["constant"] = project(constant) + beta
        remainder = sum(parts[k] for k in REMAINDER_PARTS)
        return TokenDecomposition(logits=logits, evidence=evidence, remainder=remainder, bias=self.bias(),
                                  parts=parts, heads=project(torch.stack(heads, 2)),
                                  mlps=project(torch.stack(mlps, 2)), embeddings=project(embedded.sum(2)))

    def _read_token_scale(self, inv_tok: torch.Tensor) -> torch.Tensor:
        """1/σ of the one token each readout reads (B, K): the per-token norm's scale applied after the fact."""
        return torch.stack([inv_tok[:, r.token] if r.token is not None else torch.ones_like(inv_tok[:, 0])
                            for r in self.layout.readouts], dim=1)


def _scaled(w: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return w * norm.weight if norm.weight is not None else w


def _centre(w: torch.Tensor) -> torch.Tensor:
    """W·(I − 11ᵀ/D): the LayerNorm's mean subtraction moved onto the rows of the projection."""
    return w - w.mean(dim=1, keepdim=True)


def _inverse_sigma(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """1/σ of ``norm`` over the last axis of ``x``: the scale taken as a constant of this input."""
    return torch.rsqrt(x.var(dim=-1, unbiased=False) + norm.eps)


def explain_tokens(zm: ZooModel, x: torch.Tensor, module: TokenEvidence | None = None) -> TokenDecomposition:
    """The :class:`TokenDecomposition` of ``x`` in eval mode, without gradients.

    Args:
        zm: the model.
        x: a batch of model inputs.
        module: a :class:`TokenEvidence` of ``zm`` already built (built here when None).

    Returns:
        The decomposition.

    Examples:
        >>> import timm
        >>> from inspectnet.models.zoo import ZooModel
        >>> m = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3)
        >>> zm = ZooModel(model=m, source="timm", arch="vit", num_classes=3, in_chans=3, class_names=list("abc"),
        ...               data_config={"input_size": (3, 32, 32)}, head_name="head")
        >>> tuple(explain_tokens(zm, torch.randn(2, 3, 32, 32)).evidence.shape)
        (2, 3, 2, 2)
    """
    module = module or TokenEvidence(zm)
    with eval_mode(zm.model), torch.no_grad():
        return module.decompose(x)


def remainder_share(dec: TokenDecomposition, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, the remainder's share of the class's attributed mass: |r_c| / (Σ_hw |E_c| + |r_c|), in [0, 1].

    0 when the patch maps carry the whole logit (beyond the bias), 1 when no patch carries anything.
    Absolute values keep the share meaningful when positive and negative evidence cancel.

    Args:
        dec: a decomposition.
        classes: one class per image (B,); the predicted class when None.

    Returns:
        (B,) shares.

    Raises:
        InspectnetError: not one class per image, or a class out of range.

    Examples:
        >>> z = torch.zeros
        >>> dec = TokenDecomposition(torch.tensor([[1., 0.]]), torch.tensor([[[[1., -1.]], [[0., 0.]]]]),
        ...                          torch.tensor([[2., 0.]]), z(2), {}, z(1, 1, 1, 2), z(1, 1, 2), z(1, 2))
        >>> remainder_share(dec).tolist()
        [0.5]
    """
    c = _classes(dec, classes)
    rows = torch.arange(c.shape[0], device=c.device)
    rem = dec.remainder[rows, c].abs()
    mass = dec.evidence[rows, c].abs().sum((1, 2))
    return rem / (mass + rem).clamp_min(torch.finfo(rem.dtype).tiny)


def _classes(dec: TokenDecomposition, classes: torch.Tensor | None) -> torch.Tensor:
    if classes is None:
        return dec.logits.argmax(1)
    classes = torch.as_tensor(classes, device=dec.logits.device).long().reshape(-1)
    if classes.shape[0] != dec.logits.shape[0]:
        raise InspectnetError(f"classes: got {classes.shape[0]} for {dec.logits.shape[0]} images; expected one each")
    if int(classes.min()) < 0 or int(classes.max()) >= dec.logits.shape[1]:
        raise InspectnetError(f"classes must lie in 0..{dec.logits.shape[1] - 1}, got {classes.tolist()}")
    return classes


def rank_components(dec: TokenDecomposition, classes: torch.Tensor | None = None,
                    top: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """Layers and attention heads ranked by their mean direct contribution to each image's class.

    ``layers``: per layer its heads' sum (``attention``, projection bias excluded), its MLP's (``mlp``)
    and both (``total``); ``heads``: per (layer, head). Both sorted by |contribution| (mean over the
    batch of each image's own class), largest first.

    Args:
        dec: a decomposition.
        classes: one class per image (B,); the predicted class when None.
        top: keep only the first ``top`` heads (all when None).

    Returns:
        ``{"layers": [{"layer", "attention", "mlp", "total"}, ...], "heads": [{"layer", "head", "contribution"}]}``.

    Raises:
        InspectnetError: not one class per image, or a class out of range.

    Examples:
        >>> z, heads = torch.zeros, torch.tensor([[[[0.5, 0.], [-2., 0.]]]])   # (B, L, H, C) = (1, 1, 2, 2)
        >>> dec = TokenDecomposition(torch.tensor([[1., 0.]]), z(1, 2, 1, 1), z(1, 2), z(2), {}, heads,
        ...                          torch.tensor([[[1., 0.]]]), z(1, 2))
        >>> r = rank_components(dec); r["heads"][0], r["layers"][0]["total"]
        ({'layer': 0, 'head': 1, 'contribution': -2.0}, -0.5)
    """
    c = _classes(dec, classes)
    rows = torch.arange(c.shape[0], device=c.device)
    heads = dec.heads[rows, :, :, c].mean(0)       # (L, H)
    mlps = dec.mlps[rows, :, c].mean(0)            # (L,)
    layers = [{"layer": i, "attention": float(heads[i].sum()), "mlp": float(mlps[i]),
               "total": float(heads[i].sum() + mlps[i])} for i in range(heads.shape[0])]
    per_head = [{"layer": i, "head": h, "contribution": float(heads[i, h])}
                for i in range(heads.shape[0]) for h in range(heads.shape[1])]
    layers.sort(key=lambda e: -abs(e["total"]))
    per_head.sort(key=lambda e: -abs(e["contribution"]))
    return {"layers": layers, "heads": per_head[:top] if top is not None else per_head}
