"""The int8 step of ``export --int8``.

Quantize (optionally with automatic mixed precision), stamp the file with its metadata and the CPU family it was built
for, and measure it against fp32 on evaluation data.

Agreement is reported twice: on every evaluation input, and on the inputs whose fp32 top-1 is stable under one
grey level of noise (:func:`inspectnet.export.mixed_precision.fp32_stable`), where a disagreement is int8's fault
rather than fp32's own indecision. Where labels exist the accuracy change (int8 - fp32, in points) is reported.

    >>> info = quantize_and_report(zm, fp32, int8, calib, None, Int8Request(agreement=0.99))  # doctest: +SKIP
    >>> info["mixed_precision"]["kept"]                                                                # doctest: +SKIP
    ['node_Conv_764']
"""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.export.int8 import int8_weight_bits, quantizable_nodes, quantize_int8
from inspectnet.export.mixed_precision import fp32_stable, grey_level_step, run_logits, select_fp32_nodes
from inspectnet.models.zoo import ZooModel
from inspectnet.runtime.classifier import EVIDENCE, EVIDENCE_CLASSES, default_providers, make_session
from inspectnet.runtime.int8_cpu import KEY_INT8_CPU, int8_cpu_record

KEY_QUANTIZATION = "inspectnet.quantization"
WEIGHT_BITS_WHY = {8: "for int8 kernels that add 8-bit products without clipping (VNNI, or not x86 AVX2); an x86 "
                      "CPU with AVX2 but no VNNI would clip them: export with 7-bit weights for such machines",
                   7: "for x86 CPUs with AVX2 but no VNNI, which add pairs of u8 x s8 products in 16 bits and clip "
                      "what does not fit; 7-bit weights keep every pair in range"}


@dataclasses.dataclass(frozen=True)
class Int8Request:
    """How the int8 file is built: nodes kept in fp32 by name, and the automatic mixed precision's target.

    ``agreement``: top-1 agreement with fp32 to reach on the fp32-stable calibration inputs by keeping the most
    sensitive nodes in fp32 (None: no automatic selection); ``max_fp32``: at most this many nodes chosen so;
    ``weight_bits``: 7 or 8 (None: what this CPU's kernels need).
    """

    keep_fp32: tuple[str, ...] = ()
    agreement: float | None = None
    max_fp32: int = 4
    weight_bits: int | None = None


def quantize_and_report(zm: ZooModel, fp32: Path, int8: Path, calibration: np.ndarray,
                        evaluation: tuple[np.ndarray, np.ndarray] | None, request: Int8Request, *,
                        head_only: bool = False, input_name: str = "input", threads: int = 1, device: str = "auto",
                        evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize ``fp32`` to ``int8``, stamp its metadata, and compare it with fp32 on ``evaluation``.

    Args:
        zm: the model exported (for the metadata and, with ``head_only``, the features).
        fp32: the verified fp32 file.
        int8: where the int8 file goes.
        calibration: model inputs for the activation ranges and the mixed-precision selection.
        evaluation: (inputs, labels with -1 = unlabelled), or None to evaluate on the calibration data.
        request: nodes kept in fp32 and the mixed-precision target.
        head_only: the file takes penultimate features.
        input_name: the graph's input name.
        threads: ONNX Runtime threads.
        device: ONNX Runtime provider for the comparison.
        evidence: the evidence outputs' metadata, when the file has them.

    Returns:
        The report's ``int8`` section.

    Examples:
        >>> quantize_and_report(zm, Path("m.onnx"), Path("m.int8.onnx"), cal, None, Int8Request())  # doctest: +SKIP
    """
    import onnx

    from inspectnet.export.int8_evidence import float_evidence_branch
    from inspectnet.export.onnx import _add_metadata, _features_of, _save

    if head_only:
        calibration = _features_of(zm, calibration)
        if evaluation is not None:
            evaluation = (_features_of(zm, evaluation[0]), evaluation[1])
    bits = int8_weight_bits(request.weight_bits)
    mixed = _quantize(fp32, int8, calibration, request, bits, threads)
    if evidence is not None:
        float_evidence_branch(int8)
    proto = onnx.load(str(int8))
    _add_metadata(proto, zm, head_only, input_name, list(calibration.shape[1:]), evidence)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        KEY_QUANTIZATION: f"int8-static-qdq-u8s8-per-channel-{bits}bit-weights-"
                                                          "bias-corrected",
                                        KEY_INT8_CPU: int8_cpu_record(bits)})
    _save(proto, int8)
    kept = {n: "requested (--int8-keep-fp32)" for n in request.keep_fp32}
    if mixed is not None:
        kept.update({n: f"chosen: sensitivity {mixed.sensitivity[n]:.2g} (KL drop when kept alone), input, weights "
                        "and bias in fp32" for n in mixed.kept})
    info: dict[str, Any] = {"calibration_samples": len(calibration), "size_bytes": int(int8.stat().st_size),
                            "format": "QDQ", "activations": "QUInt8", "weights": f"QInt8 per-channel, {bits}-bit",
                            "weight_bits_why": WEIGHT_BITS_WHY[bits], "built_for_cpu": int8_cpu_record(bits),
                            "calibration": "MinMax",
                            "bias_correction": "weight-rounding mean error measured on the calibration data and "
                                               "removed from the biases (Nagel et al. 2019)",
                            "outputs": "float (no QDQ pair on the graph outputs)", "kept_fp32": kept}
    if mixed is not None:
        info["mixed_precision"] = {**dataclasses.asdict(mixed), "measured_on": "calibration data"}
    info.update(_compare(fp32, int8, calibration, evaluation, threads, device, evidence is not None))
    return info


def _quantize(fp32: Path, int8: Path, calibration: np.ndarray, request: Int8Request, bits: int, threads: int):
    """Write the int8 file.

    With an agreement target, then put the most sensitive nodes back in fp32 (returns the choice).
    """
    requested = list(request.keep_fp32)
    quantize_int8(fp32, int8, calibration, keep_fp32=requested, weight_bits=bits)
    if request.agreement is None:
        return None
    candidates = [n for n in quantizable_nodes(fp32) if n not in requested]
    return select_fp32_nodes(fp32, int8, calibration, candidates, target=request.agreement,
                             max_nodes=request.max_fp32, threads=threads)


def _compare(fp32: Path, int8: Path, calibration: np.ndarray, evaluation: tuple[np.ndarray, np.ndarray] | None,
             threads: int, device: str, evidence: bool) -> dict[str, Any]:
    """Agreement (all inputs and fp32-stable ones), accuracy change where labelled, evidence correlation."""
    x_eval, y_eval = evaluation if evaluation is not None else (calibration, np.full(len(calibration), -1))
    s32 = make_session(fp32, providers=default_providers(device), threads=threads)
    s8 = make_session(int8, providers=default_providers(device), threads=threads)
    p32, p8 = run_logits(s32, x_eval, 64).argmax(1), run_logits(s8, x_eval, 64).argmax(1)
    stable = fp32_stable(s32, x_eval, grey_level_step(fp32))
    same = p32 == p8
    out: dict[str, Any] = {"eval_samples": len(x_eval),
                           "eval_on": "evaluation data" if evaluation is not None else "calibration data",
                           "top1_agreement_with_fp32": float(same.mean()), "fp32_stable_samples": int(stable.sum()),
                           "top1_agreement_fp32_stable": float(same[stable].mean()) if stable.any() else None}
    labelled = np.asarray(y_eval) >= 0
    if labelled.any():
        out["accuracy_fp32"] = float((p32[labelled] == y_eval[labelled]).mean())
        out["accuracy_int8"] = float((p8[labelled] == y_eval[labelled]).mean())
        out["accuracy_change_points"] = round(100 * (out["accuracy_int8"] - out["accuracy_fp32"]), 2)
    if evidence:
        out["evidence_branch"] = "float: the k weight rows are gathered quantized and dequantized alone"
        out["evidence_correlation_with_fp32"] = _evidence_correlation(s32, s8, x_eval)
    return out


def _evidence_correlation(s32, s8, x: np.ndarray, batch_size: int = 64) -> float | None:
    """Mean Pearson correlation of the int8 and fp32 top-1 evidence maps, over inputs whose top-1 agree."""
    name, found = s32.get_inputs()[0].name, []
    for i in range(0, len(x), batch_size):
        feed = {name: x[i:i + batch_size]}
        (m32, c32), (m8, c8) = (s.run([EVIDENCE, EVIDENCE_CLASSES], feed) for s in (s32, s8))
        for a, b in zip(m32[c32[:, 0] == c8[:, 0], 0], m8[c32[:, 0] == c8[:, 0], 0]):
            a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
            if a.std() > 0 and b.std() > 0:
                found.append(float(np.corrcoef(a, b)[0, 1]))
    return float(np.mean(found)) if found else None
