"""A cheap measure of whether a model's explanations can be trusted.

Its class-evidence and Grad-CAM maps against the random control, by deletion and insertion, with the
paired statistic.

What makes it cheap, against :func:`~inspectnet.pipelines.explain.explanation_quality`:

* both maps come from **one** forward and **one** batched backward (:func:`maps_in_one_pass`): the
  evidence reads the last map that forward already computed, Grad-CAM's gradients come from the
  sum of every image's target logit (in eval mode an image's logit depends on no other image, so
  that one backward gives each image its own gradient); the forward also gives the probability at
  fraction 0 of every curve;
* the curves of every method share their end points (the image and its baseline) and all their
  perturbed images are scored in batches of ``batch_size`` (:func:`deletion_insertion`);
* the curves have few steps (default 7) on the grid of the 28-step reference curve, with the
  error bound of :func:`step_error_bound`; ROAD, Integrated Gradients, the other model forms and the
  sanity cascade are left to the full measurement.

>>> report = trust_measurement(zm, x, indices=range(len(x)))          # doctest: +SKIP
>>> report["methods"]["evidence"]["vs_random"]["beats_control"]        # doctest: +SKIP
True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from inspectnet.analysis.explain.faithfulness import (
    BASELINES,
    _replace,
    auc,
    baseline_images,
    mean_and_se,
    paired_differences,
    pixel_ranks,
)
from inspectnet.analysis.explain.methods import gradcam_layer, random_maps
from inspectnet.core.errors import InspectnetError
from inspectnet.core.options import option, validate
from inspectnet.models.layers import eval_mode, fast_input
from inspectnet.runtime.overlays import map_status

if TYPE_CHECKING:
    from inspectnet.models.zoo import ZooModel

REFERENCE_STEPS = 28  # the fine curve the few-step AUC is held against
Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class TrustConfig:
    """What the trust measurement draws and how; checked when built.

    Attributes:
        steps: steps of the curves, on the grid of the 28-step reference (a divisor of 28).
        baseline: what deleted pixels become (``blur`` or ``mean``).
        batch_size: perturbed images per forward pass.
        seed: seeds the random control and the ties in the ranking.
        gradcam_layer: the Grad-CAM layer (a name or alias).

    Raises:
        InspectnetError: an option out of range, or ``steps`` that do not divide 28.

    Examples:
        >>> TrustConfig(steps=5)
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: trust curve steps=5 do not divide 28; expected one of 1, 2, 4, 7, \
14, 28 (the curve's points must lie on the reference curve's grid for its error bound to hold)
    """

    steps: int = option(7, help="steps of the trust curves (a divisor of 28: 1, 2, 4, 7, 14 or 28)", minimum=1)
    baseline: str = option("blur", help="what deleted pixels become", choices=BASELINES)
    batch_size: int = option(32, help="perturbed images per forward pass", minimum=1)
    seed: int = option(0, help="seed of the random control and of the ties in the ranking")
    gradcam_layer: str = option("last_conv", help="the Grad-CAM layer")

    def __post_init__(self) -> None:
        validate(self)
        if REFERENCE_STEPS % self.steps:
            raise InspectnetError(f"trust curve steps={self.steps} do not divide {REFERENCE_STEPS}; expected one of "
                                  f"{', '.join(str(k) for k in range(1, 29) if REFERENCE_STEPS % k == 0)} (the curve's "
                                  f"points must lie on the reference curve's grid for its error bound to hold)")


def step_error_bound(steps: int, reference_steps: int = REFERENCE_STEPS, variation: float = 1.0) -> float:
    """The largest difference between the trapezoid AUCs of a curve sampled at two step counts.

    The curve is sampled at ``steps`` steps and at ``reference_steps`` (a multiple of ``steps``; both
    normalised to [0, 1]); its ranges over the coarse intervals add up to at most ``variation`` (its total
    variation: at most 1 for a monotone probability curve).

    On one coarse interval of width h = 1/steps holding r = reference_steps/steps fine intervals, the
    difference of the two trapezoid areas is h·Σ_j d_j·p_j with weights d = (−(r−1)/2r, 1/r, …, 1/r, −(r−1)/2r)
    summing to 0, so it is at most h·(1 − 1/r)·(max − min of p on the interval); summed over the intervals:
    (1 − steps/reference_steps)·variation/steps. A curve that jumps by ``variation`` just after a coarse
    point reaches it as the fine steps shrink.

    Args:
        steps: the coarse curve's steps.
        reference_steps: the fine curve's steps (a multiple of ``steps``).
        variation: the curve's total variation.

    Returns:
        The bound on |AUC(steps) − AUC(reference_steps)|.

    Raises:
        InspectnetError: ``steps`` does not divide ``reference_steps``.

    Examples:
        >>> round(step_error_bound(7), 4), step_error_bound(28)
        (0.1071, 0.0)
    """
    if steps < 1 or reference_steps % steps:
        raise InspectnetError(f"steps={steps} must divide reference_steps={reference_steps}")
    return (1.0 - steps / reference_steps) * variation / steps


def coarse_curve(curve: np.ndarray, steps: int) -> np.ndarray:
    """The points of ``curve`` (N, R + 1), sampled at R steps, that a ``steps``-step curve has (R a multiple of it).

    Args:
        curve: (N, R + 1) curves.
        steps: the coarse curve's steps.

    Returns:
        The (N, steps + 1) coarse curves.

    Raises:
        InspectnetError: ``steps`` does not divide R.

    Examples:
        >>> coarse_curve(np.arange(5.0)[None], 2).tolist()
        [[0.0, 2.0, 4.0]]
    """
    reference = curve.shape[1] - 1
    if steps < 1 or reference % steps:
        raise InspectnetError(f"a {reference}-step curve has no {steps}-step sub-curve; expected a divisor of "
                              f"{reference}")
    return curve[:, :: reference // steps]


def interval_variation(curve: np.ndarray, steps: int) -> np.ndarray:
    """Per curve, the summed ranges over the coarse intervals: the V of :func:`step_error_bound`.

    The sum over the ``steps`` coarse intervals of the range (max − min) of the fine points inside each; at
    most the row's total variation.

    Args:
        curve: (N, R + 1) fine curves, R a multiple of ``steps``.
        steps: the coarse curve's steps.

    Returns:
        The (N,) summed ranges.

    Examples:
        >>> interval_variation(np.array([[0.0, 1.0, 0.0, 0.5, 0.5]]), 2).tolist()
        [1.5]
    """
    r = (curve.shape[1] - 1) // steps
    blocks = np.stack([curve[:, i * r:(i + 1) * r + 1] for i in range(steps)], axis=1)
    return (blocks.max(2) - blocks.min(2)).sum(1)


def maps_in_one_pass(zm: ZooModel, x: torch.Tensor, *, layer: str, pooled: Any | None = None,
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the top-1 class's Grad-CAM and class-evidence maps, from one forward and one backward.

    Grad-CAM is ReLU(Σ_k mean_hw(∂y_c/∂A_k)·A_k) as in Selvaraju et al. 2017 (and captum's LayerGradCam);
    the backward of Σ_i y_{c_i}(x_i) gives every image its own gradient because, in eval mode, no image's
    logit depends on another's.

    Args:
        zm: the model.
        x: (B, C, H, W) inputs, on the model's device.
        layer: the resolved Grad-CAM layer.
        pooled: the head's reading (:func:`~inspectnet.analysis.explain.evidence.pooled_head`); with it the
            class-evidence maps are computed too.

    Returns:
        ``(logits (B, classes), {"gradcam": (B, h, w), "evidence": (B, h, w) with pooled})``, maps on the CPU.

    Examples:
        >>> from inspectnet.analysis.explain.evidence import pooled_head
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> logits, maps = maps_in_one_pass(zm, torch.randn(2, 3, 64, 64), layer="layer4", pooled=pooled_head(zm))
        >>> logits.shape, {k: tuple(v.shape) for k, v in maps.items()}
        (torch.Size([2, 3]), {'gradcam': (2, 2, 2), 'evidence': (2, 2, 2)})
    """
    from inspectnet.analysis.explain.evidence import evidence_module

    caught: dict[str, torch.Tensor] = {}
    hooks = [zm.model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: caught.setdefault("cam", out))]
    if pooled is not None:
        hooks.append(zm.model.get_submodule(pooled.map_module).register_forward_hook(
            lambda _m, _i, out: caught.__setitem__("map", out.detach().clone())))
    try:
        with eval_mode(zm.model), torch.enable_grad():
            logits = zm.model(fast_input(x.detach()).requires_grad_(True))
            targets = logits.argmax(1)
            (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), caught["cam"])
    finally:
        for h in hooks:
            h.remove()
    acts = caught["cam"].detach()
    maps = {"gradcam": torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))}
    if pooled is not None:
        with torch.no_grad():
            maps["evidence"] = evidence_module(zm.model, pooled).maps_for(caught["map"], targets[:, None])[:, 0]
    return logits.detach(), {k: v.float().cpu() for k, v in maps.items()}


def deletion_insertion(score: Scorer, images: torch.Tensor, maps: dict[str, torch.Tensor], targets: torch.Tensor,
                       image_probs: torch.Tensor, config: TrustConfig = TrustConfig()
                       ) -> dict[str, dict[str, np.ndarray]]:
    """Per method, the deletion and insertion curves (N, steps + 1) of the target class's probability.

    Every method's curves share their end points: the image (``image_probs``, already known) and its
    baseline (scored once per image). The perturbed images are built batch by batch as they are scored,
    ``batch_size`` at a time, so memory holds one batch of them. Rows of maps that cannot be ranked
    (constant, NaN) are NaN.

    Args:
        score: the model, inputs -> logits.
        images: (N, C, H, W).
        maps: method -> (N, h, w) maps, higher = more relevant.
        targets: (N,) the explained classes.
        image_probs: (N,) the target class's probability on each unperturbed image.
        config: steps, baseline, batch size, seed.

    Returns:
        method -> {"deletion": (N, steps + 1), "insertion": (N, steps + 1), "status": per-image map status}.

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
        >>> x, targets = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
        >>> with torch.no_grad():
        ...     probs = net(x).softmax(1).gather(1, targets[:, None])[:, 0]
        >>> c = deletion_insertion(net, x, {"evidence": torch.rand(2, 4, 4)}, targets, probs, TrustConfig(steps=2))
        >>> c["evidence"]["deletion"].shape, c["evidence"]["status"]
        ((2, 3), ['ok', 'ok'])
    """
    n, (h, w) = len(images), images.shape[2:]
    base = baseline_images(images, config.baseline)
    fr = _fractions(config.steps)
    ranks = {m: pixel_ranks(v, (h, w), config.seed).view(n, 1, h, w) for m, v in maps.items()}
    status = {m: [map_status(v.numpy()) for v in maps[m]] for m in maps}
    jobs = [("base", None, i, 1.0) for i in range(n)]
    jobs += [(m, kind, i, f) for m in maps for kind in ("deletion", "insertion") for f in fr[1:-1]
             for i in range(n) if status[m][i] == "ok"]
    probs = _score_jobs(score, jobs, images, base, ranks, targets, config.batch_size)
    p_base = np.array([probs[("base", None, i, 1.0)] for i in range(n)])
    p_image = image_probs.double().cpu().numpy()
    out: dict[str, dict[str, Any]] = {}
    for m in maps:
        rows = {k: np.full((n, len(fr)), np.nan) for k in ("deletion", "insertion")}
        for i in (i for i in range(n) if status[m][i] == "ok"):
            rows["deletion"][i] = [p_image[i], *(probs[(m, "deletion", i, f)] for f in fr[1:-1]), p_base[i]]
            rows["insertion"][i] = [p_base[i], *(probs[(m, "insertion", i, f)] for f in fr[1:-1]), p_image[i]]
        out[m] = {**rows, "status": status[m]}
    return out


def _score_jobs(score: Scorer, jobs: list[tuple], images: torch.Tensor, base: torch.Tensor,
                ranks: dict[str, torch.Tensor], targets: torch.Tensor, batch_size: int) -> dict[tuple, float]:
    """The target probability of every job's perturbed image, scored ``batch_size`` at a time."""
    found: dict[tuple, float] = {}
    for batch in _batches(jobs, batch_size):
        x = torch.stack([_perturbed(job, images, base, ranks) for job in batch])
        idx = torch.tensor([job[2] for job in batch])
        with torch.no_grad():
            p = torch.softmax(score(x).float(), dim=1).cpu()
        found.update(zip(batch, p.gather(1, targets.cpu()[idx][:, None])[:, 0].double().tolist()))
    return found


def _batches(jobs: list[tuple], size: int) -> Iterator[list[tuple]]:
    for s in range(0, len(jobs), size):
        yield jobs[s:s + size]


def _perturbed(job: tuple, images: torch.Tensor, base: torch.Tensor, ranks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Deletion: the image with its top ``f`` pixels from the baseline; insertion: the baseline with them restored."""
    method, kind, i, f = job
    if method == "base":
        return base[i]
    src, by = (images, base) if kind == "deletion" else (base, images)
    return _replace(src[i][None], by[i][None], ranks[method][i][None], f)[0]


def _token_evidence(zm: ZooModel, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """The exact token-form evidence map of each image's class (N, h, w); None where the model has no token form."""
    from inspectnet.analysis.explain.exact_evidence import TOKENS, evidence_form, exact_evidence

    if evidence_form(zm) != TOKENS:
        return None
    return exact_evidence(zm, x, targets[:, None]).maps[:, 0].float().cpu()


def trust_measurement(zm: ZooModel, x: torch.Tensor, *, indices: Sequence[int],
                      config: TrustConfig = TrustConfig()) -> dict[str, Any]:
    """The trust measurement of ``zm`` on the images ``x`` (N, C, H, W), each explained for its top-1 class.

    Args:
        zm: the model (torch).
        x: the images, on the model's device.
        indices: the images' positions in their dataset (they seed the random control).
        config: steps, baseline, batching, seeds.

    Returns:
        ``{"images", "steps", "baseline", "step_error_bound", "forward_passes", "evidence_error",
        "methods": {method: {"deletion_auc", "insertion_auc" (means and standard errors), "evaluated",
        "vs_random": paired differences or None (the control itself)}}}``; ``evidence_error`` says why a
        head has no evidence map (then only Grad-CAM is measured).

    Raises:
        InspectnetError: no images, or the numbers of images and indices differ.

    Examples:
        >>> from inspectnet.models.zoo import load_model
        >>> zm = load_model("resnet18", num_classes=3, input_size=64)
        >>> r = trust_measurement(zm, torch.randn(4, 3, 64, 64), indices=range(4), config=TrustConfig(steps=2))
        >>> sorted(r["methods"]), r["methods"]["random"]["evaluated"]
        (['evidence', 'gradcam', 'random'], 4)
    """
    from inspectnet.analysis.explain.evidence import pooled_head

    if len(x) == 0 or len(x) != len(indices):
        raise InspectnetError(f"the trust measurement needs at least one image and one index per image; got "
                              f"{len(x)} images and {len(indices)} indices")
    pooled, why = None, None
    try:
        pooled = pooled_head(zm)
    except InspectnetError as exc:  # e.g. a head that is not pooling + linear: Grad-CAM alone is measured
        why = str(exc)
    layer = gradcam_layer(zm, _method_config(config))
    logits, maps = maps_in_one_pass(zm, x, layer=layer, pooled=pooled)
    targets = logits.argmax(1)
    if pooled is None and (tokens := _token_evidence(zm, x, targets)) is not None:
        maps["evidence"], why = tokens, None
    maps["random"] = random_maps(list(indices), tuple(maps["gradcam"].shape[1:]), config.seed)
    counter = _CountingScorer(zm)
    with eval_mode(zm.model):
        curves = deletion_insertion(counter, x, maps, targets, torch.softmax(logits.float(), 1).gather(
            1, targets[:, None])[:, 0], config)
    scores = {m: {"deletion_auc": auc(c["deletion"], _fractions(config.steps)),
                  "insertion_auc": auc(c["insertion"], _fractions(config.steps))} for m, c in curves.items()}
    methods = {m: {**mean_and_se(s), "evaluated": curves[m]["status"].count("ok"), "map_size": list(maps[m].shape[1:]),
                   "vs_random": None if m == "random" else paired_differences(s, scores["random"])}
               for m, s in scores.items()}
    return {"images": len(x), "steps": config.steps, "reference_steps": REFERENCE_STEPS, "baseline": config.baseline,
            "step_error_bound": step_error_bound(config.steps), "gradcam_layer": layer,
            "forward_passes": counter.count + len(x), "evidence_error": why, "methods": methods,
            "per_image": {m: {k: v.tolist() for k, v in s.items()} for m, s in scores.items()}}


def _method_config(config: TrustConfig) -> Any:
    from inspectnet.analysis.explain.methods import MethodConfig

    return MethodConfig(gradcam_layer=config.gradcam_layer, seed=config.seed)


def _fractions(steps: int) -> list[float]:
    """The fractions of pixels deleted or inserted at each point of a ``steps``-step curve."""
    return [i / steps for i in range(steps + 1)]


class _CountingScorer:
    """The model as a scorer on its device, counting every input it scores."""

    def __init__(self, zm: ZooModel):
        self.model, self.count = zm.model, 0
        self.device = next(zm.model.parameters()).device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.count += len(batch)
        return self.model(fast_input(batch.to(self.device)))
