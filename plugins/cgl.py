"""Concept Group Learning (Varshneya et al. 2021; TUKL report).

The filters of each regularized conv layer are split into G consecutive groups of N_g filters;
``free`` filters (plus any remainder C − free not divisible by G) are left outside the grouping
explicitly: they take no part in L_g and count as singleton blocks in R_bn, so they are still
regularized. Loss = CE + λ_bn R_bn + λ_g L_g + λ_s L_s (Eq. 8), each term summed over layers:

- R_bn = Σ_l ‖(‖W_1‖_p, …, ‖W_G‖_p, ‖w_free,1‖_p, …)‖_q (p = 2, q = 1: Eq. 6, Σ_l Σ_g ‖W_g‖_F). It
  replaces weight decay on the regularized layers' weights (the optimizer gets weight_decay 0 for them).
- ψ = σ(P1 · a / S + P2) on the conv's output a (Eq. 1), S = per-filter std over the minibatch
  (guarded); BN variant (Eq. 4, when a BatchNorm follows the conv): ψ = σ(P1 · τ + P2),
  τ = a_bn + β/γ = BN(a)/γ, with |γ| clamped away from 0. P1, P2 are shared by all layers.
- L_g (Eq. 5, λ_2 = 0 as in the paper's experiments) = Σ_l Σ_g (1/r) Σ_{(i,j) ∈ R} D(ψ_i, ψ_j),
  R: r = ``pairs``·N_g random pairs i ≠ j of the group (seeded generator, resampled every step,
  state checkpointed), D(ψ_i, ψ_j) = 2‖ψ_i − ψ_j‖₁ / (‖ψ_i‖₁ + ‖ψ_j‖₁ + ‖ψ_i − ψ_j‖₁) with the norms
  over the minibatch and space (a soft 1 − IoU).
- L_s (§3.2) = Σ_l mean over the layer's maps of Σ_j ψ_j ‖j − c(ψ)‖₂ / Σ_j ψ_j, c(ψ) the ψ-weighted
  centre of the map. Positions j are measured in units of the map's longer side (the paper's index
  units would let the largest maps dominate the sum over layers): a spatially uniform ψ gives about
  0.38 per layer, a ψ concentrated on one spot 0. A 1×1 map has no spatial extent (its L_s is 0;
  a warning says so).

**P1 and P2.** The paper learns them. ψ → σ(P2), a constant, makes every D and hence L_g zero
without aligning any filter, so dL_g/dP1 > 0 and learned P1 drifts towards 0 while L_s (which a
constant ψ sets to the uniform value) pulls the other way. Every epoch logs ``P1``, ``P2``, the
unweighted ``L_g`` and ``L_s`` (means over the epoch's steps; a term whose λ is 0 is not computed
and logs 0) and ``psi_std`` (the standard deviation of ψ, averaged over the layers grouped by map
size, measured every 8th step: it falls towards 0 along the degenerate direction), so the drift is
visible.
``P=bounded`` keeps P1 ≥ ``P1_min`` (projected before every forward pass) and ``P=fixed`` keeps
P1, P2 at their initial values. That closes the P1 direction only: the weights can still flatten ψ
by saturating the sigmoid (a bias large against the map's spread, or β/γ large in the BN variant),
which ``psi_std`` also shows. Group relevance β_g = ‖W_g‖_F per layer is logged too
(``beta/<layer>``).

**Cost.** Layers with maps of equal size are stacked: one autograd function per stack computes L_g
and L_s from one channel-major copy of the layers' ψ and writes both gradients into one buffer (the
pair distances a few images at a time, each unordered pair once, their signs kept as int8 for the
backward pass; the spatial moments as products with a position basis). ψ (either variant) and the
block norms have hand-written backward passes too. ``benchmarks/cgl_step.py`` times a ResNet18 step
with all 20 convs regularised against a vanilla step (docs/results.md, "CGL step time"); on the Table 1
network, whose large early maps make ψ and L_g costly next to a cheap convolution, about 4× a
weight-decay step (was 8.4×; not re-run since).
``tests/test_cgl.py`` checks the terms and their gradients against a layer-by-layer transcription
of the equations.

Example::

    inspectnet finetune model/ shapes:train --plugin cgl:groups=8,layers=conv1|conv2,P=bounded --out ft/
"""

import warnings
from typing import Any

import torch
from torch import nn

from inspectnet.core.errors import InspectnetError
from inspectnet.models.layers import following_normalisation
from inspectnet.plugins import HParam, Plugin

_BN = (nn.BatchNorm2d, nn.SyncBatchNorm)
_SPREAD_EVERY = 8  # steps between measurements of psi_std


class _RowL2(torch.autograd.Function):
    """Euclidean norm of each row of a (rows, n) weight matrix; the backward pass is one scaling,
    w · g / ‖w‖ (0 for an all-zero row), where autograd's norm takes three passes over the weights."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(rows, dim=1)
        ctx.save_for_backward(rows, norms)
        return norms

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        rows, norms = ctx.saved_tensors
        return rows * torch.where(norms > 0, grad / norms, 0.0)[:, None]


class _FilterSigmoid(torch.autograd.Function):
    """ψ = σ(P1 · a / S + P2) (Eq. 1) for a conv output a (B, C, H, W), S the per-filter population
    std over batch and space (clamped at 1e-6, below which it carries no gradient), P = (P1, P2).

    One function, where autograd took a std over the batch and spatial dimensions (a strided
    reduction several times slower than the convolution on early layers' large maps) and kept
    separate tensors for each step. It keeps a − mean (its own tensor, so a later in-place op on
    a, such as ReLU(inplace=True), cannot change what the backward pass reads) and ψ. With
    g = ∂L/∂z, z the sigmoid's input, per filter: ∂L/∂S = −P1 Σ g·a / S², ∂S/∂a = (a − mean) / (n S).
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
        B, C = a.shape[:2]
        rows = a.reshape(B, C, -1)
        n = rows.shape[0] * rows.shape[2]
        mean = rows.sum(2).sum(0) / n  # sums over the contiguous axis first: fast
        centred = rows - mean[:, None]
        std = (centred.square().sum(2).sum(0) / n).sqrt_()
        scale = P[0] / std.clamp_min(1e-6)
        psi = torch.addcmul((P[1] + scale * mean)[:, None], centred, scale[:, None]).sigmoid_()
        ctx.save_for_backward(centred, psi, P, mean, std)
        return psi.view(a.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        centred, psi, P, mean, std = ctx.saved_tensors
        n = centred.shape[0] * centred.shape[2]
        S = std.clamp_min(1e-6)
        g = torch.ops.aten.sigmoid_backward(grad.reshape(psi.shape), psi)
        sum_g = g.sum(2).sum(0)
        sum_ga = torch.linalg.vecdot(g, centred, dim=2).sum(0) + mean * sum_g  # Σ g·a per filter
        d_std = torch.where(std > 1e-6, -P[0] * sum_ga / S**2, 0.0)
        d_a = g.mul_((P[0] / S)[:, None]).addcmul_(centred, (d_std / (n * S))[:, None])
        d_P = torch.stack([(sum_ga / S).sum(), sum_g.sum()]) if ctx.needs_input_grad[1] else None
        return d_a.view(grad.shape), d_P


class _ShiftedSigmoid(torch.autograd.Function):
    """ψ = σ(x · scale + shift) for x (B, C, H, W), ``scale`` per filter (C,) and ``shift`` a 0-dim tensor:
    the BN variant (Eq. 4), x the BatchNorm's output, scale = P1/γ, shift = P2.

    One function, where autograd kept a copy of x, the affine map and the sigmoid as separate tensors
    and reduced the scale's gradient over the batch and space as a strided broadcast reduction. It
    keeps its own copy of x (the ReLU(inplace=True) after a BN rewrites x) and ψ; with g = ∂L/∂z,
    z the sigmoid's input: ∂L/∂x = g · scale, ∂L/∂scale = Σ g·x per filter, ∂L/∂shift = Σ g."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        psi = torch.addcmul(shift, x, scale.view(1, -1, 1, 1)).sigmoid_()
        ctx.save_for_backward(x.clone(), psi, scale)
        return psi

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x, psi, scale = ctx.saved_tensors
        # into a tensor of ψ's layout: the incoming gradient may be a strided view (see _StackTerms)
        g = torch.ops.aten.sigmoid_backward.grad_input(grad, psi, grad_input=torch.empty_like(psi))
        B, C = psi.shape[:2]
        d_scale = torch.linalg.vecdot(g.view(B, C, -1), x.view(B, C, -1), dim=2).sum(0) \
            if ctx.needs_input_grad[1] else None
        d_shift = g.sum() if ctx.needs_input_grad[2] else None
        return g.mul_(scale.view(1, -1, 1, 1)), d_scale, d_shift


class _StackTerms(torch.autograd.Function):
    """The L_g and L_s shares (l_g, l_s) of a stack of layers whose ψ maps (B, C_l, H, W) have the same
    size, with one backward pass writing both terms' gradients into one buffer.

    The maps are copied once into channel-major rows (C, B, N), C = Σ C_l, N = H·W: a filter's values
    over the minibatch and space are one row (L_g's pair distances), and L_s takes its (positions,
    maps) copy from them. Autograd through separate pair and spread functions cost a concatenation,
    a transposed copy for each term, the sum of their two gradients and strided sigmoid backward
    passes.

    Inputs: ``i``, ``j``, ``weight``: L_g's sampled pairs as stacked channel indices and each draw's
    weight (1/r), or None for no L_g; ``map_weight``: (C,) the weight of each map of a channel in L_s
    (the layer's 1/(B·C_l), a mean over its maps), or None for no L_s; then the layers' ψ.
    l_g = Σ_p weight_p · D(ψ_{i_p}, ψ_{j_p}) (:func:`_pair_terms`), l_s = Σ map_weight · spread
    (:func:`_spread_forward`)."""

    @staticmethod
    def forward(ctx, i: torch.Tensor | None, j: torch.Tensor | None, weight: torch.Tensor | None,
                map_weight: torch.Tensor | None, *psis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = _channel_rows(psis)
        C, B, N = rows.shape
        ctx.shapes = [p.shape for p in psis]
        l_g = l_s = rows.new_zeros(())
        ctx.spread = ctx.pairs = None
        if map_weight is not None and N > 1:
            spread, saved = _spread_forward(rows.view(C * B, N), psis[0].shape[2:])
            l_s = torch.dot(spread.view(C, B).sum(1), map_weight)
            ctx.spread = (map_weight.repeat_interleave(B), *saved)
        if i is not None:
            mass = rows.view(C, -1).sum(1)  # ‖ψ_c‖₁ (ψ > 0)
            l_g, ctx.pairs = _pair_terms(rows, mass, *_unique_pairs(i, j, weight, C, rows))
        ctx.rows = (rows.shape, rows.dtype, rows.device)  # the rows themselves are not needed again
        return l_g, l_s

    @staticmethod
    def backward(ctx, grad_g: torch.Tensor, grad_s: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (C, B, N), dtype, device = ctx.rows
        per_channel = torch.zeros(C, dtype=dtype, device=device)  # constant over a filter's row (L_g's masses)
        pair_d = None
        if ctx.pairs is not None:
            pair_d, d_mass = _pair_backward(ctx.pairs, grad_g, C)
            per_channel += d_mass
        if ctx.spread is not None:
            out = _spread_backward(ctx.spread, grad_s, per_channel.repeat_interleave(B))
        else:
            out = per_channel[:, None].expand(C, B * N).clone()
        out = out.view(C, B, N)
        if pair_d is not None:
            _scatter_signs(out, ctx.pairs, pair_d)
        grads, start = [], 0
        for k, shape in enumerate(ctx.shapes):
            part = out[start:start + shape[1]].transpose(0, 1).view(shape) if ctx.needs_input_grad[4 + k] else None
            grads.append(part)
            start += shape[1]
        return None, None, None, None, *grads


def _channel_rows(psis: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The layers' maps (B, C_l, H, W) copied into one contiguous (Σ C_l, B, H·W) tensor."""
    B, N = psis[0].shape[0], psis[0].shape[2] * psis[0].shape[3]
    return torch.cat([p.reshape(B, -1, N).transpose(0, 1) for p in psis])


def _unique_pairs(i: torch.Tensor, j: torch.Tensor, weight: torch.Tensor, C: int, like: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i, j, weight) with each unordered pair once and its draws' weights summed: D is symmetric, and
    r = 3·N_g draws from N_g(N_g − 1)/2 pairs often repeat one, so the same sum takes fewer passes."""
    keys, slot = torch.unique(torch.minimum(i, j) * C + torch.maximum(i, j), return_inverse=True)
    weight = weight.new_zeros(len(keys)).index_add_(0, slot, weight).to(like)
    return (keys // C).to(like.device), (keys % C).to(like.device), weight


def _image_blocks(shape: torch.Size, pairs: int, elements: int = 1 << 18, row: int = 256) -> list[slice]:
    """Slices of the minibatch for rows (C, B, N): a block's pair differences, (pairs, images·N), hold
    about ``elements`` values and stay in cache; its rows at least ``row`` (reductions and gathers over
    short rows are slow; small maps therefore take the whole batch at once)."""
    C, B, N = shape
    step = max(-(-row // N), elements // max(1, pairs * N))
    return [slice(start, min(B, start + step)) for start in range(0, B, step)]


def _pair_terms(rows: torch.Tensor, mass: torch.Tensor, i: torch.Tensor, j: torch.Tensor, weight: torch.Tensor
                ) -> tuple[torch.Tensor, tuple]:
    """Σ_p weight_p · D_p, D_p = 2‖ψ_i − ψ_j‖₁ / (‖ψ_i‖₁ + ‖ψ_j‖₁ + ‖ψ_i − ψ_j‖₁) over rows (C, B, N),
    and what the backward pass needs: each image block's signs of ψ_i − ψ_j as int8 (a quarter of the
    floats' memory; forming the differences again would cost two gathers and a subtraction)."""
    dist = rows.new_zeros(len(i))
    signs = []
    for block in _image_blocks(rows.shape, len(i)):
        chunk = rows[:, block].view(rows.shape[0], -1)
        diff = chunk.index_select(0, i).sub_(chunk.index_select(0, j))
        dist += diff.abs().sum(1)  # 2–8× faster than vector_norm(ord=1) on these shapes
        signs.append((block, diff.sign_().to(torch.int8)))
    raw = mass[i] + mass[j] + dist
    den = raw.clamp_min(1e-12)
    return (weight * 2 * dist / den).sum(), (i, j, weight, dist, den, raw >= 1e-12, signs)


def _pair_backward(pairs: tuple, grad: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂/∂‖ψ_i − ψ_j‖₁ per pair, ∂/∂‖ψ_c‖₁ per filter) of ``grad`` · Σ_p weight_p D_p."""
    i, j, weight, dist, den, live, _ = pairs
    w = grad * weight * 2 / den
    d_den = torch.where(live, -w * dist / den, 0.0)  # the clamp passes no gradient below 1e-12
    return w + d_den, d_den.new_zeros(C).index_add_(0, i, d_den).index_add_(0, j, d_den)


def _scatter_signs(out: torch.Tensor, pairs: tuple, pair_d: torch.Tensor) -> None:
    """Adds ∂‖ψ_i − ψ_j‖₁ = ±sign(ψ_i − ψ_j) · pair_d to rows i and j of ``out`` (C, B, N), in place."""
    i, j, signs = pairs[0], pairs[1], pairs[-1]
    for block, s in signs:
        step = torch.mul(s, pair_d[:, None])  # int8 × float: one pass, a float result
        target = out[:, block].view(out.shape[0], -1)
        # index_add_ into a strided view (a block of images) takes a scatter path 5× slower than into
        # a contiguous tensor, more than the extra add of a contiguous block costs
        part = target if target.is_contiguous() else step.new_zeros(target.shape)
        part.index_add_(0, i, step).index_add_(0, j, step, alpha=-1)
        if part is not target:
            target.add_(part)


def _spread_forward(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, tuple]:
    """Per map (row of ``maps``, positions of an H×W map in row-major order): Σ_j ψ_j ‖p_j − c‖₂ / Σ_j ψ_j,
    c the ψ-weighted centre, positions in units of the longer side; and what the backward pass needs.

    The maps are laid out as (positions, maps) for this: the moments are then a product with the
    (3, positions) basis of :func:`_positions` and the distances a broadcast over a long inner
    dimension, both several times faster for the many small maps of deep layers than over rows of
    positions (for 2×2 maps, 10×), which pays for the transposed copy."""
    H, W = size
    cols = maps.t().contiguous()
    ys, xs, basis = _positions(maps, size)
    mass, cy, cx = basis @ cols  # Σψ, Σψ·y, Σψ·x per map
    mass = mass.clamp_min(1e-12)
    cy, cx = cy / mass, cx / mass
    dist = (((ys[:, None] - cy) ** 2)[:, None, :] + ((xs[:, None] - cx) ** 2)[None]).view(H * W, -1).sqrt_()
    spread = torch.linalg.vecdot(cols, dist, dim=0) / mass
    return spread, (basis, cols, dist, mass, cy, cx, spread)


def _spread_backward(saved: tuple, grad: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """∂/∂ψ of grad · Σ map_weight · spread, plus ``constant`` per map, as (maps, positions).

    With M = Σψ, L the spread and G = Σ_j ψ_j (c − p_j) / ‖p_j − c‖, ∂L/∂ψ_k = (‖p_k − c‖ − L +
    G·(p_k − c) / M) / M (a position exactly on the centre contributes no direction to G): its part
    linear in the position is one product with the basis."""
    map_weight, basis, cols, dist, mass, cy, cx, spread = saved
    w = torch.div(cols, dist).nan_to_num_(nan=0.0, posinf=0.0)  # ψ/‖p − c‖, 0 on the centre itself
    w_sum, w_y, w_x = basis @ w
    gy, gx = (cy * w_sum - w_y) / mass, (cx * w_sum - w_x) / mass
    # ‖p_k − c‖ − L + G·(p_k − c) = ‖p_k − c‖ + (1, y_k, x_k) · (−L − G·c, gy, gx): one matrix product
    out = torch.addmm(dist, basis.t(), torch.stack([-spread - cy * gy - cx * gx, gy, gx]))
    # scaled in this layout, then one transposed copy (a blocked transpose: writing the transposed
    # layout from an elementwise op is 5× slower)
    return torch.addcmul(constant, out, grad * map_weight / mass, out=out).t().contiguous()


def _map_weights(psi: torch.Tensor) -> torch.Tensor:
    """(C,): each channel's weight in a layer's L_s, 1/(B·C) for ψ (B, C, H, W): L_s is the mean over its maps."""
    return torch.full((psi.shape[1],), 1 / psi[..., 0, 0].numel(), dtype=psi.dtype, device=psi.device)


def _pooled_std(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The standard deviation of all the values of ``tensors`` together (as ``torch.cat(...).std()``),
    from each one's sum and sum of squares: no concatenated copy."""
    with torch.no_grad():
        n = sum(t.numel() for t in tensors)
        total = sum(t.sum(dtype=torch.float64) for t in tensors)
        squares = sum(torch.linalg.vector_norm(t, dtype=torch.float64) ** 2 for t in tensors)
        return ((squares - total**2 / n) / (n - 1)).clamp_min(0).sqrt()


def _positions(like: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column coordinates of an H×W map in units of its longer side, per row/column (ys, xs),
    and the (3, H·W) basis whose rows are 1, y and x per position in row-major order (its product with
    maps laid out as (positions, maps) gives each map's mass and first moments); ``like`` gives the device and
    dtype."""
    H, W = size
    unit = max(H, W)
    ys = torch.arange(H, device=like.device, dtype=like.dtype) / unit
    xs = torch.arange(W, device=like.device, dtype=like.dtype) / unit
    return ys, xs, torch.stack([torch.ones(H * W, device=like.device, dtype=like.dtype),
                                ys.repeat_interleave(W), xs.repeat(H)])


class ConceptGroupLearning(Plugin):
    name = "cgl"
    paper = ("Varshneya, Ledent, Vandermeulen, Lei, Enders, Borth, Kloft: Learning Interpretable Concept "
             "Groups in CNNs (IJCAI 2021); TUKL report on inducing interpretability (general block norm)")
    summary = "concept groups: block-norm instead of weight decay + group activation + spatial losses"
    hparams = (
        HParam("layers", "str", "all", "conv layers to regularize: 'all' Conv2d, or names/globs joined by |"),
        HParam("groups", "int", 8, "concept groups G per layer", low=1),
        HParam("free", "int", 0, "filters per layer left outside the groups (the last ones)", low=0),
        HParam("lam_bn", "float", 1e-4, "block-norm strength λ_bn", low=0.0),
        HParam("lam_g", "float", 0.05, "group activation loss strength λ_g (L_g summed over groups, layers)",
               low=0.0),
        HParam("lam_s", "float", 0.05, "spatial loss strength λ_s (L_s summed over layers)", low=0.0),
        HParam("p", "float", 2.0, "inner norm of a group's weights", low=1.0),
        HParam("q", "float", 1.0, "outer norm over groups", low=1.0),
        HParam("bn", "str", "auto", "BN variant: auto (where a BatchNorm follows), on, off",
               choices=("auto", "on", "off")),
        HParam("pairs", "float", 3.0, "random pairs per group r as a multiple of N_g", low=0.0),
        HParam("P1", "float", 1.0, "initial sigmoid scale"),
        HParam("P2", "float", 0.0, "initial sigmoid shift"),
        HParam("P", "str", "learned", "P1, P2: learned (paper), bounded (P1 >= P1_min) or fixed",
               choices=("learned", "bounded", "fixed")),
        HParam("P1_min", "float", 0.5, "lower bound of P1 with P=bounded"),
        HParam("seed", "int", 0, "seed of the random pairs"),
    )

    def __init__(self, **values: Any):
        super().__init__(**values)
        self.gen = torch.Generator().manual_seed(self.hp["seed"])

    def setup(self, model: nn.Module) -> None:
        spec = self.hp["layers"]
        names = ([n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)] if spec == "all"
                 else self.layers(spec.split("|")))
        if not names:
            raise InspectnetError("plugin cgl: the model has no Conv2d layer to regularize")
        self.convs: dict[str, nn.Conv2d] = {}
        self.split: dict[str, tuple[int, int, int]] = {}  # layer -> (G, N_g, free)
        self._psi: dict[str, torch.Tensor] = {}
        self._epoch: dict[str, float] = {}
        self._steps = 0
        self._spread: list[float] = []
        self._warned_flat = False
        self.P = nn.Parameter(torch.tensor([self.hp["P1"], self.hp["P2"]], dtype=torch.float32,
                                           device=next(model.parameters()).device),
                              requires_grad=self.hp["P"] != "fixed")
        if self.hp["P"] == "bounded":
            # projected gradient descent: P1 is put back on [P1_min, ∞) before each forward uses it
            self._handles.append(model.register_forward_pre_hook(lambda _m, _a: self._project()))
        for name in names:
            conv = model.get_submodule(name)
            if not isinstance(conv, nn.Conv2d):
                raise InspectnetError(f"plugin cgl: layer {name!r} is a {type(conv).__name__}, not a Conv2d")
            self.convs[name] = conv
            self.split[name] = self._grouping(name, conv.out_channels)
            if self.hp["lam_g"] == 0 and self.hp["lam_s"] == 0:
                continue  # R_bn alone: no soft receptive fields to compute
            bn = self._following_bn(model, name, conv)
            if bn is not None:
                self.hook(bn, lambda out, n=name, m=model.get_submodule(bn): self._capture_bn(n, out, m))
            else:
                if self.hp["bn"] == "on":
                    raise InspectnetError(f"plugin cgl: bn=on but no BatchNorm2d follows {name!r}")
                self.hook(name, lambda out, n=name: self._capture(n, out))

    def _grouping(self, name: str, channels: int) -> tuple[int, int, int]:
        G, free = self.hp["groups"], self.hp["free"]
        if G + free > channels:
            raise InspectnetError(f"plugin cgl: groups={G} + free={free} exceed the {channels} filters of {name!r}")
        n_g = (channels - free) // G
        return G, n_g, channels - G * n_g  # the remainder joins the free filters, explicitly

    def _following_bn(self, model: nn.Module, name: str, conv: nn.Conv2d) -> str | None:
        if self.hp["bn"] == "off":
            return None
        norm = following_normalisation(model, name)
        m = model.get_submodule(norm) if norm else None
        if isinstance(m, _BN) and m.num_features == conv.out_channels and m.affine:
            return norm
        return None

    def _project(self) -> None:
        with torch.no_grad():
            self.P[0].clamp_(min=self.hp["P1_min"])

    def _capture(self, name: str, a: torch.Tensor) -> None:
        self._psi[name] = _FilterSigmoid.apply(a.float(), self.P)

    def _capture_bn(self, name: str, out: torch.Tensor, bn: nn.Module) -> None:
        gamma = bn.weight.float()
        # τ = BN(a)/γ undoes the affine scale and shift; γ ≈ 0 is clamped, keeping its sign
        safe = torch.where(gamma >= 0, gamma.clamp_min(1e-3), gamma.clamp_max(-1e-3))
        self._psi[name] = _ShiftedSigmoid.apply(out.float(), self.P[0] / safe, self.P[1])

    # -- terms ---------------------------------------------------------------------------------------
    def block_norm(self, name: str) -> torch.Tensor:
        """R_bn of one layer: the q-norm of its blocks' p-norms (groups, then each free filter alone)."""
        w = self.convs[name].weight.float().flatten(1)
        G, n_g, free = self.split[name]
        # without free filters no slice: its backward would write a zero-filled copy of the weights
        rows = [w[: G * n_g].reshape(G, -1), w[G * n_g:]] if free else [w.reshape(G, -1)]
        p = self.hp["p"]
        norms = torch.cat([_RowL2.apply(r) if p == 2 else r.norm(p=p, dim=1) for r in rows])
        return norms.norm(p=self.hp["q"])

    def sample_pairs(self, G: int, n_g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(i, j): r = ``pairs``·N_g random filter pairs i ≠ j in each of the G groups, as (G, r) indices
        of the layer's filters (group g's filters are g·N_g … (g+1)·N_g − 1)."""
        r = max(1, round(self.hp["pairs"] * n_g))
        i = torch.randint(0, n_g, (G, r), generator=self.gen)
        j = (i + torch.randint(1, n_g, (G, r), generator=self.gen)) % n_g  # j != i
        base = (torch.arange(G) * n_g).view(G, 1)
        return i + base, j + base

    def group_loss(self, psi: torch.Tensor, G: int, n_g: int) -> torch.Tensor:
        """One layer's share of L_g (Eq. 5): Σ_g (1/r) Σ_{(i,j)} D(ψ_i, ψ_j) over sampled pairs."""
        if n_g < 2:
            return psi.new_zeros(())
        i, j = self.sample_pairs(G, n_g)
        return _StackTerms.apply(i.flatten(), j.flatten(), torch.full((i.numel(),), 1 / i.shape[1]), None, psi)[0]

    @staticmethod
    def spatial_loss(psi: torch.Tensor) -> torch.Tensor:
        """One layer's L_s: the mean over its maps of the ψ-weighted distance from the map's centre,
        positions in units of the map's longer side (0 for 1×1 maps, which have no extent)."""
        return _StackTerms.apply(None, None, None, _map_weights(psi), psi)[1]

    def loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        r_bn = sum(self.block_norm(n) for n in self.convs)
        if self.hp["lam_g"] == 0 and self.hp["lam_s"] == 0:
            return {"cgl_bn": self.hp["lam_bn"] * r_bn}
        missing = [n for n in self.convs if n not in self._psi]
        if missing:
            raise InspectnetError(f"plugin cgl: layer {missing[0]!r} did not run in the forward pass")
        self._warn_flat_maps()
        l_g, l_s = self._activation_losses()
        self._log_step(l_g, l_s)
        self._psi.clear()
        return {"cgl_bn": self.hp["lam_bn"] * r_bn, "cgl_g": self.hp["lam_g"] * l_g,
                "cgl_s": self.hp["lam_s"] * l_s}

    def _activation_losses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_g, L_s) over all layers (a term whose λ is 0 is skipped: 0). Layers whose maps have the
        same size are stacked along the channels and computed in one call each (the terms are per
        filter or per map, so stacking changes nothing but the number of operations); the random
        pairs are drawn layer by layer in order, exactly as :meth:`group_loss` draws them."""
        want_g, want_s = self.hp["lam_g"] > 0, self.hp["lam_s"] > 0
        pairs = {n: self.sample_pairs(*self.split[n][:2]) for n in self.convs if want_g and self.split[n][1] >= 2}
        stacks: dict[tuple[int, ...], list[str]] = {}
        for n, psi in self._psi.items():
            stacks.setdefault(tuple(psi.shape[2:]), []).append(n)
        l_g = l_s = next(iter(self._psi.values())).new_zeros(())
        for names in stacks.values():
            psis = [self._psi[n] for n in names]
            stacked = self._stacked_pairs(names, pairs) if any(n in pairs for n in names) else (None, None, None)
            per_map = torch.cat([_map_weights(p) for p in psis]) if want_s else None
            g, s = _StackTerms.apply(*stacked, per_map, *psis)
            l_g, l_s = l_g + g, l_s + s
        if self._steps % _SPREAD_EVERY == 0:  # a diagnostic: sampled steps suffice
            self._spread.append(float(torch.stack([_pooled_std([self._psi[n] for n in names])
                                                   for names in stacks.values()]).mean()))
        return l_g, l_s

    def _stacked_pairs(self, names: list[str], pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j, weight) of the layers ``names`` stacked along the channels: indices shifted by each
        layer's first channel, weight 1/r (a group's mean over its r pairs)."""
        i, j, w, base = [], [], [], 0
        for n in names:
            if n in pairs:
                i.append(pairs[n][0].flatten() + base)
                j.append(pairs[n][1].flatten() + base)
                w.append(torch.full((i[-1].numel(),), 1 / pairs[n][0].shape[1]))
            base += self._psi[n].shape[1]
        return torch.cat(i), torch.cat(j), torch.cat(w)

    def _warn_flat_maps(self) -> None:
        flat = [n for n, psi in self._psi.items() if psi.shape[2] * psi.shape[3] == 1]
        if flat and not self._warned_flat:
            self._warned_flat = True
            warnings.warn(f"plugin cgl: {len(flat)} regularized layer(s) give 1×1 maps ({flat[0]}, ...): L_s has no "
                          f"spatial extent there (0), L_g compares them over the minibatch only", stacklevel=3)

    def _log_step(self, l_g: torch.Tensor, l_s: torch.Tensor) -> None:
        for key, value in (("L_g", l_g), ("L_s", l_s)):
            self._epoch[key] = self._epoch.get(key, 0.0) + float(value.detach())
        self._steps += 1

    def group_relevance(self) -> dict[str, list[float]]:
        """β_g = ‖W_g‖_F (Eq. 7) for each group of each regularized layer."""
        with torch.no_grad():
            return {n: c.weight.float()[: G * n_g].reshape(G, -1).norm(dim=1).tolist()
                    for (n, c), (G, n_g, _) in zip(self.convs.items(), self.split.values())}

    def epoch_begin(self, epoch: int, model: nn.Module) -> None:
        self._epoch, self._steps, self._spread = {}, 0, []

    def epoch_end(self, epoch: int) -> dict[str, Any]:
        if self.hp["P"] == "bounded":
            self._project()  # the value the next forward pass will use
        out: dict[str, Any] = {"P1": float(self.P[0].detach()), "P2": float(self.P[1].detach())}
        out.update({k: v / self._steps for k, v in self._epoch.items()} if self._steps else {})
        if self._spread:
            out["psi_std"] = sum(self._spread) / len(self._spread)
        for n, beta in self.group_relevance().items():
            out[f"beta/{n}"] = [round(b, 6) for b in beta]
        return out

    def decay_exempt(self) -> list[nn.Parameter]:
        return [c.weight for c in self.convs.values()]

    def parameters(self) -> list[nn.Parameter]:
        return [self.P] if self.P.requires_grad else []

    def state_dict(self) -> dict[str, Any]:
        return {"P": self.P.detach().cpu(), "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "P" in state:
            with torch.no_grad():
                self.P.copy_(state["P"])
            self.gen.set_state(state["generator"])
