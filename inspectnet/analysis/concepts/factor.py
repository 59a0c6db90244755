"""Streaming factorisers of activation cells: A (n cells × C channels) ≈ U·V + centre, U ≥ 0 (n × K).

Both learn from cells fed batch by batch (:meth:`partial_fit`), so the data never has to be in memory:

* :class:`StreamingNMF`: non-negative matrix factorisation A ≈ U·V, U, V ≥ 0 (CRAFT, Fel et al. 2023),
  by scikit-learn's :class:`~sklearn.decomposition.MiniBatchNMF` (Frobenius loss, one multiplicative
  update per mini-batch, past batches forgotten geometrically). The centre is zero.
* :class:`TopKAutoencoder`: a TopK sparse autoencoder (Gao et al. 2024): U = TopK_k(ReLU(W_e(a − b_d) + b_e)),
  â = U·V + b_d with unit-norm decoder rows (in the scale of the first batch), trained with Adam on
  the squared error. The centre is the decoder bias b_d.

>>> import torch
>>> cells = torch.rand(256, 8, generator=torch.Generator().manual_seed(0))
>>> nmf = StreamingNMF(k=4, seed=0)
>>> for _ in range(20): nmf.partial_fit(cells)
>>> nmf.encode(cells).shape, nmf.basis.shape, bool((nmf.basis >= 0).all())
(torch.Size([256, 4]), torch.Size([4, 8]), True)
"""

import warnings

import numpy as np
import torch
from torch import nn

from inspectnet.core.errors import InspectnetError

EPSILON = float(np.finfo(np.float32).eps)   # scikit-learn's guard for a zero denominator


class StreamingNMF:
    """Non-negative factorisation A ≈ U·V with U, V ≥ 0, fitted by mini-batches.

    ``seed`` draws the random initial factors, so runs with different seeds are independent.

    Args:
        k: number of concepts (rows of V).
        seed: random state of the initialisation.
        layer: the layer's name, for error messages.

    Examples:
        >>> nmf = StreamingNMF(k=2, seed=0)
        >>> nmf.partial_fit(torch.rand(16, 3, generator=torch.Generator().manual_seed(0)))
        >>> nmf.basis.shape, nmf.centre.tolist()
        (torch.Size([2, 3]), [0.0, 0.0, 0.0])
    """

    method = "nmf"

    def __init__(self, k: int, seed: int, layer: str = "the layer"):
        # random initial factors: the seed then decides the run, so stability across seeds is a real test
        self.model = minibatch_nmf()(n_components=k, init="random", random_state=seed)
        self.k, self.layer, self.fitted = k, layer, False

    def _array(self, cells: torch.Tensor) -> np.ndarray:
        x = cells.detach().to("cpu", torch.float32).numpy()
        low = float(x.min()) if x.size else 0.0
        if low < 0:
            raise InspectnetError(f"layer {self.layer!r} has negative activations (min {low:.3g}); non-negative "
                                  f"factorisation needs a layer after a ReLU-like activation, or method='sae'")
        return x

    def partial_fit(self, cells: torch.Tensor) -> None:
        """One mini-batch update of the factors.

        Args:
            cells: (n, C) non-negative activation cells.

        Raises:
            InspectnetError: ``cells`` holds a negative value.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings are meaningless for one-step updates
            self.model.partial_fit(self._array(cells))
        self.fitted = True

    @property
    def basis(self) -> torch.Tensor:
        """The concept basis V (K, C), float32.

        Raises:
            InspectnetError: nothing has been fitted yet.
        """
        self._check()
        return torch.from_numpy(np.asarray(self.model.components_, np.float32))

    @property
    def centre(self) -> torch.Tensor:
        """The constant part of every reconstruction: zero for NMF."""
        return torch.zeros(self.basis.shape[1])

    def encode(self, cells: torch.Tensor) -> torch.Tensor:
        """Codes U ≥ 0 minimising ‖A − U·V‖ for the fitted V.

        This is scikit-learn's ``transform`` (the same start, updates and stopping rule), with A·Vᵀ and V·Vᵀ
        computed once instead of at every update.

        Args:
            cells: (n, C) non-negative activation cells A.

        Returns:
            U (n, K), non-negative.

        Raises:
            InspectnetError: ``cells`` holds a negative value, or nothing has been fitted yet.
        """
        x = torch.from_numpy(self._array(cells))
        start = torch.sqrt(x.mean() / self.k).reshape(1, 1)
        return multiplicative_codes(x, self.basis, start, self.model._transform_max_iter, tol=self.model.tol)

    def _check(self) -> None:
        if not self.fitted:
            raise InspectnetError("the factorisation has seen no cells yet; fit it first")


def minibatch_nmf() -> type:
    """scikit-learn's MiniBatchNMF with the per-batch products computed once.

    The per-batch solve of this :class:`~sklearn.decomposition.MiniBatchNMF` for the codes W computes X·Hᵀ
    and H·Hᵀ once instead of at each of its (up to 200) updates: the same arithmetic on the same arrays, so
    the same factors bit for bit, with one C-wide product per batch instead of one per update (that product
    was most of a discovery's fitting time).

    Returns:
        The class (scikit-learn is imported on the first call).

    Examples:
        >>> import numpy as np
        >>> from sklearn.decomposition import MiniBatchNMF
        >>> x = np.random.default_rng(0).random((64, 12)).astype(np.float32)
        >>> a, b = minibatch_nmf()(3, init="random", random_state=0), MiniBatchNMF(3, init="random", random_state=0)
        >>> for _ in range(3): _ = a.partial_fit(x), b.partial_fit(x)
        >>> bool(np.array_equal(a.components_, b.components_))
        True
    """
    global _ONCE_NMF
    if _ONCE_NMF is None:
        from scipy import linalg
        from sklearn.decomposition import MiniBatchNMF
        from sklearn.decomposition._nmf import _multiplicative_update_w
        from sklearn.utils.extmath import safe_sparse_dot

        class OnceNMF(MiniBatchNMF):
            def _solve_W(self, X, H, max_iter):  # noqa: N802, N803 - scikit-learn's names
                if self._beta_loss != 2:  # other losses recompute their numerator from W at every update
                    return super()._solve_W(X, H, max_iter)
                # the body of MiniBatchNMF._solve_W, with the two products that do not change passed in
                xht, hht = safe_sparse_dot(X, H.T), np.dot(H, H.T)
                w = np.full((X.shape[0], self._n_components), np.sqrt(X.mean() / self._n_components), dtype=X.dtype)
                w_buffer = w.copy()
                l1_reg_w, _, l2_reg_w, _ = self._compute_regularization(X)
                for _ in range(max_iter):
                    w, *_ = _multiplicative_update_w(X, w, H, self._beta_loss, l1_reg_w, l2_reg_w, self._gamma,
                                                     HHt=hht, XHt=xht, update_H=False)
                    if self.tol > 0 and linalg.norm(w - w_buffer) / linalg.norm(w) <= self.tol:
                        break
                    w_buffer[:] = w
                return w

        _ONCE_NMF = OnceNMF
    return _ONCE_NMF


_ONCE_NMF: type | None = None


def multiplicative_codes(cells: torch.Tensor, basis: torch.Tensor, start: torch.Tensor, iterations: int, *,
                         tol: float | None = None) -> torch.Tensor:
    """Codes U ≥ 0 minimising ‖A − U·V‖ by multiplicative updates.

    Each update is U ← U ⊙ (A·Vᵀ)/(U·V·Vᵀ) (Lee & Seung); a zero denominator is replaced by float32's epsilon.

    Args:
        cells: A (..., n, C).
        basis: V (K, C), non-negative.
        start: the initial value of every code, broadcastable to (..., n, K).
        iterations: the most updates.
        tol: stop once ‖U − U_prev‖/‖U‖ ≤ tol (scikit-learn's rule); None runs every update (a fixed graph).

    Returns:
        U (..., n, K).

    Examples:
        >>> v = torch.tensor([[1., 0.], [0., 2.]])
        >>> multiplicative_codes(torch.tensor([[3., 4.]]), v, torch.ones(1, 1), 50).tolist()
        [[3.0, 2.0]]
    """
    numerator, gram = cells @ basis.T, basis @ basis.T
    u = start.expand(*numerator.shape)
    for _ in range(iterations):
        denominator = u @ gram
        new = u * numerator / torch.where(denominator == 0, EPSILON, denominator)
        if tol is not None and float((new - u).norm() / new.norm().clamp(min=1e-30)) <= tol:
            return new
        u = new
    return u


class TopKAutoencoder(nn.Module):
    """A TopK sparse autoencoder over C channels with ``k`` codes, ``active`` of them non-zero per cell.

    Codes are U = TopK(ReLU(W_e(a − b_d) + b_e)); reconstructions â = U·V + b_d with unit-norm decoder rows.

    Args:
        channels: C, the layer's channel count.
        k: number of concepts (decoder rows).
        active: codes kept per cell (1 ≤ active ≤ k).
        seed: seeds the initial weights and the order of the training cells.
        lr: Adam learning rate (in units of the first batch's mean cell norm).
        steps_per_batch: optimiser steps on each streamed batch.

    Raises:
        InspectnetError: ``active`` is outside 1..k.

    Examples:
        >>> sae = TopKAutoencoder(channels=3, k=4, active=2, seed=0)
        >>> sae.partial_fit(torch.rand(16, 3, generator=torch.Generator().manual_seed(0)))
        >>> [int((row > 0).sum()) <= 2 for row in sae.encode(torch.rand(3, 3))]
        [True, True, True]
    """

    method = "sae"

    def __init__(self, channels: int, k: int, active: int, seed: int, *, lr: float = 3e-3, steps_per_batch: int = 4):
        super().__init__()
        if not 1 <= active <= k:
            raise InspectnetError(f"active codes per cell must be within 1..{k}, got {active}")
        self.k, self.active, self.steps_per_batch = k, active, steps_per_batch
        self.gen = torch.Generator().manual_seed(seed)
        w = torch.randn(k, channels, generator=self.gen)
        w = w / w.norm(dim=1, keepdim=True)
        self.decoder = nn.Parameter(w.clone())
        self.encoder = nn.Parameter(w.clone())   # tied at the start (the usual initialisation)
        self.enc_bias = nn.Parameter(torch.zeros(k))
        self.dec_bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("scale", torch.zeros(()))
        self.optimiser = torch.optim.Adam(self.parameters(), lr=lr)

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu((x - self.dec_bias) @ self.encoder.T + self.enc_bias)
        top = pre.topk(self.active, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values)

    def partial_fit(self, cells: torch.Tensor) -> None:
        """Train on one streamed batch: ``steps_per_batch`` Adam steps on shuffled halves of it.

        The first batch sets the scale (mean cell norm) and the decoder bias (mean cell).

        Args:
            cells: (n, C) activation cells.
        """
        x = cells.detach().to("cpu", torch.float32)
        with torch.no_grad():
            if float(self.scale) == 0:
                self.scale.fill_(float(x.norm(dim=1).mean()) or 1.0)
                self.dec_bias.copy_((x / self.scale).mean(0))
        x = x / self.scale
        with torch.enable_grad():
            for _ in range(self.steps_per_batch):
                pick = torch.randperm(len(x), generator=self.gen)[: max(1, len(x) // 2)]
                batch = x[pick]
                loss = ((self._codes(batch) @ self.decoder + self.dec_bias - batch) ** 2).sum(1).mean()
                self.optimiser.zero_grad()
                loss.backward()
                self.optimiser.step()
                with torch.no_grad():  # unit decoder rows: a code's size is carried by U alone
                    self.decoder /= self.decoder.norm(dim=1, keepdim=True).clamp(min=1e-12)

    @property
    def basis(self) -> torch.Tensor:
        """The concept basis V (K, C): the decoder rows in the activations' own scale.

        Raises:
            InspectnetError: nothing has been fitted yet.
        """
        self._check()
        return (self.decoder * self.scale).detach().clone()

    @property
    def centre(self) -> torch.Tensor:
        """The decoder bias b_d (C,) in the activations' own scale.

        Raises:
            InspectnetError: nothing has been fitted yet.
        """
        self._check()
        return (self.dec_bias * self.scale).detach().clone()

    def encode(self, cells: torch.Tensor) -> torch.Tensor:
        """Codes U so that A ≈ U·V + centre.

        Args:
            cells: (n, C) activation cells A.

        Returns:
            U (n, K) ≥ 0 with at most ``active`` non-zeros per row.

        Raises:
            InspectnetError: nothing has been fitted yet.
        """
        self._check()
        with torch.no_grad():
            return self._codes(cells.detach().to("cpu", torch.float32) / self.scale)

    def _check(self) -> None:
        if float(self.scale) == 0:
            raise InspectnetError("the autoencoder has seen no cells yet; fit it first")


def make_factoriser(method: str, channels: int, k: int, seed: int, *, active: int = 4,
                    layer: str = "the layer") -> StreamingNMF | TopKAutoencoder:
    """A fresh factoriser of ``method`` (``"nmf"`` or ``"sae"``).

    Args:
        method: ``"nmf"`` or ``"sae"``.
        channels: the layer's channel count C.
        k: number of concepts.
        seed: the run's seed.
        active: codes per cell of a TopK autoencoder.
        layer: the layer's name, for error messages.

    Returns:
        A :class:`StreamingNMF` or :class:`TopKAutoencoder`.

    Raises:
        InspectnetError: ``k`` < 1, or ``method`` is neither ``"nmf"`` nor ``"sae"``.

    Examples:
        >>> make_factoriser("sae", 8, 4, 0, active=2).basis
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: the autoencoder has seen no cells yet; fit it first
    """
    if k < 1:
        raise InspectnetError(f"the number of concepts k must be at least 1, got {k}")
    if method == "nmf":
        return StreamingNMF(k, seed, layer)
    if method == "sae":
        return TopKAutoencoder(channels, k, active, seed)
    raise InspectnetError(f"unknown concept method {method!r}; expected 'nmf' or 'sae'")
