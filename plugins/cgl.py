"""Concept Group Learning (Varshneya et al. 2021; TUKL report; DESIGN.md §5.3).

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

**Cost.** Layers with maps of equal size are stacked; ψ with its per-filter std, the pair distances
(a few images at a time, each unordered pair once, their signs kept as int8 for the backward
pass), spatial spreads and block norms have hand-written backward passes. A ResNet18 step with all
20 convs regularised costs about 1.6–1.7× a vanilla step (``benchmarks/cgl_step.py``); on the
Table 1 network, whose large early maps make ψ and L_g costly next to a cheap convolution, about
4× a weight-decay step (was 8.4×).
``tests/test_cgl.py`` checks the terms against a layer-by-layer transcription of the equations.

Example::

    inspectnet finetune model/ shapes:train --plugin cgl:groups=8,layers=conv1|conv2,P=bounded --out ft/
"""

import warnings
from collections.abc import Iterator
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


class _PairL1(torch.autograd.Function):
    """‖ψ_i − ψ_j‖₁ for each pair (i_p, j_p), from ψ as (batch, C, space), summed over batch and space.

    The differences are formed a few images at a time (:func:`_row_chunks`): one (pairs, batch·space)
    tensor would be tens of MB for early layers, written and read several times; a chunk's stays in
    cache. Each chunk keeps the signs of its differences as int8 for the backward pass (a quarter of
    the floats' memory), which then needs no gathers: forming the differences again cost two gathers
    and a subtraction over (pairs, batch·space) per chunk.
    """

    @staticmethod
    def forward(ctx, maps: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        dist = maps.new_zeros(len(i))
        ctx.blocks, ctx.signs = [], []
        for block, rows in _row_chunks(maps, len(i)):
            diff = rows.index_select(0, i).sub_(rows.index_select(0, j))
            dist += torch.linalg.vector_norm(diff, ord=1, dim=1)
            ctx.blocks.append(block)
            ctx.signs.append(diff.sign_().to(torch.int8))
        ctx.save_for_backward(i, j)
        ctx.shape = maps.shape
        return dist

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        i, j = ctx.saved_tensors
        B, C, N = ctx.shape
        out = grad.new_empty(ctx.shape)
        for block, signs in zip(ctx.blocks, ctx.signs):
            step = torch.mul(signs, grad[:, None])  # int8 × float: one pass, a float result
            rows_grad = step.new_zeros(C, signs.shape[1]).index_add_(0, i, step).index_add_(0, j, step, alpha=-1)
            out[block] = rows_grad.view(C, -1, N).transpose(0, 1)
        return out, None, None


def _row_chunks(maps: torch.Tensor, pairs: int, elements: int = 1 << 18, row: int = 256
                ) -> Iterator[tuple[slice, torch.Tensor]]:
    """(batch slice, rows) for chunks of ``maps`` (batch, C, space) along the batch, rows = the chunk
    as (C, images·space), so a pair's values are two contiguous rows. A chunk's pair differences,
    (pairs, images·space), hold about ``elements`` values, and its rows at least ``row`` (reductions
    and gathers over short rows are slow; small maps therefore take the whole batch at once)."""
    B, C, N = maps.shape
    step = max(-(-row // N), elements // max(1, pairs * N))
    for start in range(0, B, step):
        block = slice(start, min(B, start + step))
        yield block, maps[block].transpose(0, 1).reshape(C, -1)


class _SpatialSpread(torch.autograd.Function):
    """Per map of ψ (B, C, H, W): Σ_j ψ_j ‖p_j − c‖₂ / Σ_j ψ_j with c the ψ-weighted centre, positions
    p in units of the longer side; (B, C). The gradient, with M = Σψ, L the spread and
    G = Σ_j ψ_j (c − p_j) / ‖p_j − c‖, is ∂L/∂ψ_k = (‖p_k − c‖ − L + G·(p_k − c) / M) / M (a
    position exactly on the centre contributes no direction to G).

    The maps are laid out as (positions, maps): the reductions over positions are then products with
    a (3, positions) basis, which stay fast for the many small maps of deep layers (PyTorch's
    reductions over a short last dimension are slow), and the gradient's linear part is one addmm."""

    @staticmethod
    def forward(ctx, psi: torch.Tensor) -> torch.Tensor:
        B, C, H, W = psi.shape
        cols = psi.reshape(B * C, H * W).t().contiguous()  # (positions, maps)
        ys, xs, basis = _positions(psi)
        mass, cy, cx = basis @ cols  # Σψ, Σψ·y, Σψ·x per map: one pass over the maps
        mass = mass.clamp_min(1e-12)
        cy, cx = cy / mass, cx / mass
        dist = (((ys[:, None] - cy) ** 2)[:, None, :] + ((xs[:, None] - cx) ** 2)[None]).view(H * W, -1).sqrt_()
        spread = torch.linalg.vecdot(cols, dist, dim=0) / mass
        ctx.save_for_backward(cols, dist, mass, cy, cx, spread)
        ctx.shape = psi.shape
        return spread.view(B, C)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        cols, dist, mass, cy, cx, spread = ctx.saved_tensors
        B, C, H, W = ctx.shape
        basis = _positions(cols, (H, W))[2]
        w = torch.div(cols, dist).nan_to_num_(nan=0.0, posinf=0.0)  # ψ/‖p − c‖, 0 on the centre itself
        w_sum, w_y, w_x = basis @ w
        gy, gx = (cy * w_sum - w_y) / mass, (cx * w_sum - w_x) / mass
        # ‖p_k − c‖ − L + G·(p_k − c) = ‖p_k − c‖ + (1, y_k, x_k) · (−L − G·c, gy, gx): one matrix product
        out = torch.addmm(dist, basis.t(), torch.stack([-spread - cy * gy - cx * gx, gy, gx]))
        return out.mul_(grad.reshape(-1) / mass).t().reshape(B, C, H, W)


def _pair_loss(psi: torch.Tensor, i: torch.Tensor, j: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """Σ_p weight_p · D(ψ_{i_p}, ψ_{j_p}) over filter pairs of ψ (B, C, H, W), norms over batch and space.

    D is symmetric, so each unordered pair drawn more than once (common: r = 3·N_g draws from
    N_g(N_g − 1)/2 pairs) is computed once with its draws' weights summed: the same sum, fewer passes."""
    C = psi.shape[1]
    weight = torch.as_tensor(weight, dtype=psi.dtype).expand(len(i))
    keys, slot = torch.unique(torch.minimum(i, j) * C + torch.maximum(i, j), return_inverse=True)
    weight = weight.new_zeros(len(keys)).index_add_(0, slot, weight).to(psi.device)
    i, j = (keys // C).to(psi.device), (keys % C).to(psi.device)
    maps = psi.reshape(psi.shape[0], C, -1)
    mass = maps.sum(2).sum(0)  # ‖ψ_i‖₁ once per filter (ψ > 0), gathered per pair below
    diff = _PairL1.apply(maps, i, j)
    return (weight * 2 * diff / (mass[i] + mass[j] + diff).clamp_min(1e-12)).sum()


def _positions(like: torch.Tensor, size: tuple[int, int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row and column coordinates of an H×W map in units of its longer side, per row/column (ys, xs),
    and the (3, H·W) basis whose rows are 1, y and x per position in row-major order (its product with
    maps laid out as (positions, maps) gives each map's mass and first moments). ``size`` defaults to
    the last two sides of ``like``."""
    H, W = size or like.shape[-2:]
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
        safe = torch.where(gamma >= 0, gamma.clamp_min(1e-3), gamma.clamp_max(-1e-3)).view(1, -1, 1, 1)
        # clone: the ReLU(inplace=True) after a BN would rewrite the tensor autograd saved;
        # addcmul fuses P1·τ + P2 with τ = out/γ into one pass over the map
        self._psi[name] = torch.sigmoid(torch.addcmul(self.P[1], out.float().clone(), self.P[0] / safe))

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
        return _pair_loss(psi, i.flatten(), j.flatten(), 1 / i.shape[1])

    @staticmethod
    def spatial_loss(psi: torch.Tensor) -> torch.Tensor:
        """One layer's L_s: the mean over its maps of the ψ-weighted distance from the map's centre,
        positions in units of the map's longer side (0 for 1×1 maps, which have no extent)."""
        if psi.shape[2] * psi.shape[3] == 1:
            return psi.new_zeros(())
        return _SpatialSpread.apply(psi).mean()

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
        spreads = []
        for names in stacks.values():
            psi = torch.cat([self._psi[n] for n in names], 1) if len(names) > 1 else self._psi[names[0]]
            if self._steps % _SPREAD_EVERY == 0:  # a diagnostic: sampled steps suffice
                with torch.no_grad():
                    spreads.append(psi.std())
            if any(n in pairs for n in names):
                l_g = l_g + _pair_loss(psi, *self._stacked_pairs(names, pairs))
            if want_s and psi.shape[2] * psi.shape[3] > 1:
                # each layer's mean over its B·C_l maps
                per_map = torch.cat([torch.full((self._psi[n].shape[1],), 1 / self._psi[n][..., 0, 0].numel())
                                     for n in names]).to(psi.device)
                l_s = l_s + torch.dot(_SpatialSpread.apply(psi).sum(0), per_map)
        if spreads:
            self._spread.append(float(torch.stack(spreads).mean()))
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

    def epoch_begin(self, epoch: int) -> None:
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
