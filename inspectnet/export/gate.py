"""The export gate: ONNX Runtime against PyTorch on seeded inputs (logits and the evidence output).

Also the latency of both at equal thread counts.

    >>> report = verify(module, Path("m.onnx"), (3, 32, 32))   # doctest: +SKIP
    >>> report["top1_agreement"]                               # doctest: +SKIP
    1.0
"""

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.explain.exact_evidence import EVIDENCE_MODULES
from inspectnet.core.errors import InspectnetError
from inspectnet.core.timing import median_seconds
from inspectnet.runtime.classifier import EVIDENCE, EVIDENCE_CLASSES, REMAINDER, default_providers, make_session

PARITY_BATCHES = (1, 8)
LATENCY_BATCHES = (1, 32)
OUTPUT_NAME = "logits"
ATOL, RTOL = 1e-4, 1e-3  # |ort - torch| <= ATOL + RTOL * max|torch logits| (per batch)
__all__ = ["ATOL", "LATENCY_BATCHES", "OUTPUT_NAME", "PARITY_BATCHES", "RTOL", "measure_latency", "torch_threads",
           "verify"]


def verify(module: nn.Module, path: Path, sample_shape: tuple, *, threads: int = 1, device: str = "auto",
           batches: tuple[int, ...] = PARITY_BATCHES, seed: int = 0) -> dict[str, Any]:
    """The gate: ONNX Runtime vs PyTorch on seeded random inputs at each batch size.

    Top-1 disagreements count as failures unless torch's own margin between the two classes is
    within the tolerance (a numerical tie that no exporter can be blamed for). An
    evidence module's outputs (pooled or token form) are checked the same way (:func:`_verify_evidence`).

    Args:
        module: the exported module.
        path: the ONNX file.
        sample_shape: the shape of one input sample (without the batch).
        threads: threads of both torch and ONNX Runtime.
        device: where to run.
        batches: the batch sizes checked.
        seed: seeds the inputs.

    Returns:
        The parity report: per batch and overall, the largest differences and the top-1 agreement.

    Raises:
        InspectnetError: an output shape differs, a difference exceeds the tolerance, or top-1 differs
            beyond numerical ties.
    """
    session = make_session(path, providers=default_providers(device), threads=threads)
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"batches": {}, "atol": ATOL, "rtol": RTOL}
    worst_abs, worst_rel, agree, total, real_flips = 0.0, 0.0, 0, 0, 0
    for b in batches:
        x = rng.standard_normal((b, *sample_shape)).astype(np.float32)
        with torch.inference_mode():
            out = module(torch.from_numpy(x))
        ref = (out[0] if isinstance(out, tuple) else out).float().numpy()
        outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))
        got = outputs[OUTPUT_NAME]
        if got.shape != ref.shape:
            raise InspectnetError(f"export gate failed: ONNX output shape {got.shape} != torch {ref.shape} "
                                  f"at batch {b}")
        diff = np.abs(got.astype(np.float64) - ref)
        scale = float(np.abs(ref).max())
        tol = ATOL + RTOL * scale
        t_top, o_top = ref.argmax(1), got.argmax(1)
        margin = ref[np.arange(b), t_top] - ref[np.arange(b), o_top]
        flips = int(((t_top != o_top) & (margin > 2 * tol)).sum())
        max_abs, max_rel = float(diff.max()), float(diff.max() / max(scale, 1e-12))
        report["batches"][str(b)] = {"max_abs_diff": max_abs, "max_rel_diff": max_rel,
                                     "top1_agreement": float((t_top == o_top).mean()), "tolerance": tol}
        if not np.isfinite(got).all() or max_abs > tol:
            raise InspectnetError(f"export gate failed at batch {b}: max |onnx - torch| = {max_abs:.3g} exceeds "
                                  f"{tol:.3g} (atol {ATOL} + rtol {RTOL} x max|logit| {scale:.3g}); no file written")
        if isinstance(module, EVIDENCE_MODULES):
            report["batches"][str(b)].update(_verify_evidence(module, x, ref, outputs, tol))
        worst_abs, worst_rel = max(worst_abs, max_abs), max(worst_rel, max_rel)
        agree, total, real_flips = agree + int((t_top == o_top).sum()), total + b, real_flips + flips
    if real_flips:
        raise InspectnetError(f"export gate failed: ONNX top-1 differs from torch on {real_flips} of {total} "
                              f"inputs beyond numerical ties; no file written")
    report.update(max_abs_diff=worst_abs, max_rel_diff=worst_rel, top1_agreement=agree / total,
                  providers=list(session.get_providers()))
    if isinstance(module, EVIDENCE_MODULES):
        report["evidence_max_abs_diff"] = max(v["evidence_max_abs_diff"] for v in report["batches"].values())
        report["evidence_sum_residual"] = max(v["evidence_sum_residual"] for v in report["batches"].values())
    return report


def _verify_evidence(module: nn.Module, x: np.ndarray, ref_logits: np.ndarray, outputs: dict[str, np.ndarray],
                     logit_tol: float) -> dict[str, Any]:
    """The evidence part of the gate: ONNX's maps (and remainder) against torch's of the same classes.

    Also its classes against torch's top-k (ties within the logit tolerance excepted), and Σ E + offset =
    logit in ONNX, the offset being the constant per class plus, in the token form, ONNX's own ``remainder``.
    """
    classes, maps, logits = outputs[EVIDENCE_CLASSES], outputs[EVIDENCE], outputs[OUTPUT_NAME]
    with torch.inference_mode():
        ref = module.evidence(torch.from_numpy(x), classes=torch.from_numpy(classes).long())
        offset = ref.offset.double().numpy()
        constant = module.offset().double().numpy()[classes]
    ref_maps = ref.maps.double().numpy()
    tol = ATOL + RTOL * float(np.abs(ref_maps).max())
    max_abs = float(np.abs(maps - ref_maps).max())
    extra: dict[str, Any] = {}
    if REMAINDER in outputs:  # the remainder against torch's, and ONNX's own remainder in the sum
        ref_rem = offset - constant
        tol = max(tol, ATOL + RTOL * float(np.abs(ref_rem).max()))
        extra["remainder_max_abs_diff"] = float(np.abs(outputs[REMAINDER] - ref_rem).max())
        max_abs = max(max_abs, extra["remainder_max_abs_diff"])
        offset = constant + outputs[REMAINDER].astype(np.float64)
    residual = float(np.abs(maps.astype(np.float64).sum((2, 3)) + offset
                            - np.take_along_axis(logits, classes, 1)).max())
    want = np.argsort(-ref_logits, axis=1, kind="stable")[:, :module.k]
    rows = np.arange(len(x))[:, None]
    gap = np.abs(ref_logits[rows, want] - ref_logits[rows, classes])
    flips = int(((want != classes) & (gap > 2 * logit_tol)).sum())
    if not np.isfinite(maps).all() or max_abs > tol or residual > logit_tol or flips:
        raise InspectnetError(f"export gate failed on the evidence output: max |onnx - torch| = {max_abs:.3g} "
                              f"(remainder included; tolerance {tol:.3g}), |sum(E) + offset - logit| = {residual:.3g} "
                              f"(tolerance {logit_tol:.3g}), {flips} top-{module.k} classes differ beyond ties; "
                              f"no file written")
    return {"evidence_max_abs_diff": max_abs, "evidence_sum_residual": residual, "evidence_tolerance": tol,
            "evidence_class_agreement": float((want == classes).mean()), **extra}


@contextlib.contextmanager
def torch_threads(n: int):
    """Temporarily run torch with ``n`` intra-op threads (matched to ONNX Runtime's in comparisons).

    Args:
        n: the threads.

    Yields:
        Nothing; the previous thread count is restored after.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def measure_latency(module: nn.Module, fp32: Path, int8: Path | None, sample_shape: tuple, threads: int,
                    batches: tuple[int, ...] = LATENCY_BATCHES, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Latency (ms per batch) of torch eager, ORT fp32 and ORT int8, same thread count, CPU by default.

    Args:
        module: the exported module.
        fp32: the float ONNX file.
        int8: the int8 file, or None.
        sample_shape: the shape of one input sample.
        threads: threads of every engine.
        batches: the batch sizes timed.
        device: where to run.

    Returns:
        Engine -> batch size -> milliseconds.
    """
    sessions = {"ort_fp32": make_session(fp32, providers=default_providers(device), threads=threads)}
    if int8 is not None:
        sessions["ort_int8"] = make_session(int8, providers=default_providers(device), threads=threads)
    out: dict[str, dict[str, float]] = {"torch_eager": {}, **{k: {} for k in sessions}}
    rng = np.random.default_rng(1)
    with torch_threads(threads), torch.inference_mode():
        for b in batches:
            x = rng.standard_normal((b, *sample_shape)).astype(np.float32)
            xt = torch.from_numpy(x)
            out["torch_eager"][str(b)] = 1e3 * median_seconds(lambda xt=xt: module(xt))
            for name, sess in sessions.items():
                feed = {sess.get_inputs()[0].name: x}
                out[name][str(b)] = 1e3 * median_seconds(lambda s=sess, f=feed: s.run(None, f))  # every output
    return out
