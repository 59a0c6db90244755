"""Export a zoo model (or just its head) to a verified, self-describing ONNX file, optionally int8.

Every export passes a gate before the file appears under its final name: ``onnx.checker``, then
ONNX Runtime against PyTorch at batch 1 and a larger batch (max abs/rel difference within
tolerance, 100 % top-1 agreement outside numerical ties). A failed gate raises and leaves no file.
The report (parity, latency at batch 1 and 32, size, providers, int8 agreement) goes next to the
model as ``<name>.export.json``.

    >>> from inspectnet import load_model
    >>> zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=32)
    >>> res = export_onnx(zm, "out/model.onnx")          # doctest: +SKIP
    >>> res.parity["top1_agreement"]                     # doctest: +SKIP
    1.0
"""

import contextlib
import copy
import dataclasses
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.explain.evidence import ClassEvidence, PooledHead, evidence_module, pooled_head
from inspectnet.core.errors import InspectnetError, strip_terminal_codes
from inspectnet.core.results import Result
from inspectnet.core.storage import prepare_output_file
from inspectnet.data import load_data
from inspectnet.data.subsets import calibration_arrays
from inspectnet.export.concepts import add_concepts_metadata, concept_outputs, verify_concepts
from inspectnet.export.gate import OUTPUT_NAME, measure_latency, verify
from inspectnet.export.gate import torch_threads as torch_threads  # callers time torch with it from here
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.layers import PRE_LOGITS, eval_mode, model_state
from inspectnet.models.surgery import set_submodule
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe
from inspectnet.runtime.classifier import (
    EVIDENCE,
    EVIDENCE_CLASSES,
    FORMAT,
    FORMAT_VERSION,
    KEY_CLASS_NAMES,
    KEY_FORMAT,
    KEY_MODEL,
    KEY_PREPROCESSING,
    default_providers,
    make_session,
)

EXPORTERS = ("dynamo", "torchscript")
AUTO = "auto"  # dynamo, and torchscript where dynamo cannot convert the model (the report says which wrote the file)
# opsets each exporter of torch 2.14 writes; the dynamo exporter's down-conversion below 18 can fall
# back to 18 silently, so it is offered from 18 only
OPSETS = {"dynamo": (18, 23), "torchscript": (7, 20)}
INPUT_NAME, FEATURES_NAME = "input", "features"
KEY_DECOMPOSITION = "inspectnet.decomposition"


@dataclasses.dataclass(frozen=True)
class ExportResult(Result):
    """What ``export.json`` holds: the gate's parity, latencies (ms, per batch size), sizes, providers."""

    path: str
    model: str
    fingerprint: str
    exporter: str
    opset: int
    head_only: bool
    input_name: str
    input_shape: list
    parity: dict
    latency_ms: dict
    threads: int
    size_bytes: int
    providers: list
    int8: dict | None = None
    evidence: dict | None = None
    exporter_fallback: str | None = None
    concepts: dict | None = None


def export_onnx(zm: ZooModel, out: str | Path, *, opset: int | None = None, exporter: str = AUTO,
                head_only: bool = False, force: bool = False, int8: bool = False,
                calibration: np.ndarray | None = None, evaluation: tuple[np.ndarray, np.ndarray] | None = None,
                latency: bool = True, threads: int = 1, device: str = "auto",
                int8_keep_fp32: Sequence[str] = (), evidence: int | None = None, concepts: Any = None
                ) -> ExportResult:
    """Export ``zm`` to ``out`` (ONNX, dynamic batch, input ``input``/``features``, output ``logits``).

    ``int8`` also writes ``<stem>.int8.onnx`` quantized on ``calibration`` (model inputs, see
    :func:`calibration_inputs`); ``evaluation`` = (inputs, labels with -1 = unlabelled) measures its
    top-1 agreement with fp32 (and accuracy when labelled); ``int8_keep_fp32`` names graph nodes left in
    fp32 (listed in the report). ``threads`` is used by both torch and
    ONNX Runtime when timing, so the latency ratio compares like with like. ``evidence`` = k adds
    the outputs ``evidence`` (B, k, H, W), the exact class-evidence maps of the top-k classes, and
    ``evidence_classes`` (B, k) (:class:`~inspectnet.analysis.explain.evidence.ClassEvidence`); the
    gate checks them against torch like the logits. ``concepts`` (a discovery or the folder
    ``inspectnet concepts`` wrote) adds the output ``concepts`` (B, K, h, w), checked the same way
    (:mod:`inspectnet.export.concepts`).
    """
    if exporter not in (AUTO, *EXPORTERS):
        raise InspectnetError(f"--exporter {exporter!r} is unknown; expected one of {AUTO}, {', '.join(EXPORTERS)}")
    check_opset(opset, exporter)
    if threads < 1:
        raise InspectnetError(f"--threads must be at least 1, got {threads}")
    pooled = _evidence_head(zm, evidence, head_only)
    if int8 and pooled is not None and exporter == "torchscript":
        # ONNX Runtime's quantizer writes a per-axis QuantizeLinear onto this exporter's evidence Gather
        raise InspectnetError("--int8 with --evidence needs the dynamo exporter (the default): ONNX Runtime cannot "
                              "quantize the torchscript exporter's evidence graph; drop --exporter torchscript")
    if concepts is not None and (head_only or int8 or evidence is not None):
        raise InspectnetError("--concepts goes with a whole-model fp32 export: drop --head-only, --int8 and --evidence")
    if int8 and (calibration is None or len(calibration) == 0):
        raise InspectnetError("--int8 needs calibration data: pass --calibration DATA (real images the model "
                              "will see, e.g. the training folder); static int8 ranges come from it")
    out = Path(out)
    if out.suffix != ".onnx":
        raise InspectnetError(f"--out {out} must end in .onnx")
    int8_path = out.with_name(out.stem + ".int8.onnx")
    report_path = out.with_name(out.stem + ".export.json")
    for p in [out, report_path] + ([int8_path] if int8 else []):
        prepare_output_file(p, force=force)
    tmp = out.with_name(f".{out.name}.part")
    tmp_int8 = int8_path.with_name(f".{int8_path.name}.part")
    for stale in (tmp, tmp_int8):  # left behind by an export that was killed
        stale.unlink(missing_ok=True)
    # the gate compares with ONNX Runtime on host arrays: the model runs on the CPU in eval mode,
    # and goes back to the caller's device and train/eval flags afterwards
    with model_state(zm.model, device="cpu", training=False):
        module, example, input_name = _export_target(zm, head_only)
        graph = export_form(zm, module, head_only)
        evidence_info = None
        if pooled is not None:
            # eval wrappers: the TorchScript exporter restores the wrapper's training flag recursively
            # afterwards, which would put a shared (dense) model's BatchNorm into train mode for the gate
            module = evidence_module(module, pooled, evidence).eval()
            graph = module if graph is module.model else evidence_module(graph, pooled, evidence).eval()
            evidence_info = _evidence_metadata(module, example)
        if concepts is not None:
            module, graph, concepts_info = concept_outputs(zm, module, graph, concepts)
        try:
            proto, exporter, fallback = _convert(graph, example, input_name, exporter, opset, evidence=pooled is not None,
                                                 int8=int8)
            if opset is not None and _opset_of(proto) != opset:
                raise InspectnetError(f"the {exporter} exporter wrote opset {_opset_of(proto)}, not the --opset "
                                      f"{opset} asked for; no file written")
            _add_metadata(proto, zm, head_only, input_name, list(example.shape[1:]), evidence_info)
            if concepts is not None:
                add_concepts_metadata(proto, concepts_info)
            _save(proto, tmp)
            parity = verify(module, tmp, example.shape[1:], threads=threads, device=device)
            if concepts is not None:
                parity.update(verify_concepts(module, tmp, example.shape[1:], threads=threads, device=device))
            int8_info = None
            if int8:
                int8_info = _quantize(zm, module, tmp, tmp_int8, calibration, evaluation, head_only, input_name,
                                      threads, device, list(int8_keep_fp32), evidence_info)
            lat = measure_latency(module, tmp, tmp_int8 if int8 else None, example.shape[1:], threads) \
                if latency else {}
            os.replace(tmp, out)
            if int8:
                os.replace(tmp_int8, int8_path)
                int8_info["path"] = str(int8_path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_int8.unlink(missing_ok=True)
    result = ExportResult(path=str(out), model=zm.spec, fingerprint=zm.fingerprint(), exporter=exporter,
                          opset=_opset_of(proto), head_only=head_only, input_name=input_name,
                          input_shape=["batch", *example.shape[1:]], parity=parity, latency_ms=lat, threads=threads,
                          size_bytes=out.stat().st_size, providers=parity.pop("providers"), int8=int8_info,
                          evidence={k: v for k, v in evidence_info.items() if k != "offset"} if evidence_info else None,
                          exporter_fallback=fallback, concepts=concepts_info if concepts is not None else None)
    result.save(report_path)
    return result


def check_opset(opset: int | None, exporter: str) -> None:
    """Refuse an opset the exporter cannot write (None = the exporter's default).

    >>> check_opset(17, "dynamo")
    Traceback (most recent call last):
    ...
    inspectnet.core.errors.InspectnetError: --opset 17 is outside what the dynamo exporter writes (18-23); ...
    """
    if opset is None or exporter == AUTO:
        return
    low, high = OPSETS[exporter]
    if not low <= opset <= high:
        other = next(e for e in EXPORTERS if e != exporter)
        hint = f"; the {other} exporter writes it (--exporter {other})" \
            if OPSETS[other][0] <= opset <= OPSETS[other][1] else ""
        raise InspectnetError(f"--opset {opset} is outside what the {exporter} exporter writes ({low}-{high}){hint}")


def _evidence_head(zm: ZooModel, k: int | None, head_only: bool) -> PooledHead | None:
    """The pooled head that ``--evidence k`` reads, or None without it; bad requests are refused first."""
    if k is None:
        return None
    if head_only:
        raise InspectnetError("--evidence needs the whole model: the maps come from the last spatial map, which a "
                              "--head-only export never sees")
    if not 1 <= k <= zm.num_classes:
        raise InspectnetError(f"--evidence {k} asks for the maps of the top-{k} classes, but {zm.spec} has "
                              f"{zm.num_classes} classes; expected 1 to {zm.num_classes}")
    return pooled_head(zm)


def _evidence_metadata(module: ClassEvidence, example: torch.Tensor) -> dict[str, Any]:
    with torch.inference_mode():
        maps = module(example[:1])[1]
        offset = module.offset()
    return {"k": module.k, "grid": list(maps.shape[2:]), "outputs": [OUTPUT_NAME, EVIDENCE, EVIDENCE_CLASSES],
            "offset": [float(v) for v in offset.detach()], "definition": "E_c(h,w) = sum_j W[c,j] A_j(h,w) / (H W); "
            "sum_hw E_c + offset_c = logit_c"}


def _export_target(zm: ZooModel, head_only: bool) -> tuple[nn.Module, torch.Tensor, str]:
    """The module to export, an example input (batch 2: torch.export specialises batch 0/1) and its name."""
    if not head_only:
        return zm.model, torch.randn(2, *zm.data_config["input_size"]), INPUT_NAME
    features = head_features(zm, torch.randn(2, *zm.data_config["input_size"]))
    return zm.head, torch.randn(2, *features.shape[1:]), FEATURES_NAME


def export_form(zm: ZooModel, module: nn.Module, head_only: bool) -> nn.Module:
    """What goes into the graph: a decomposed head becomes a gather of the used features + dense Gemm.

    That form beat gather/batched-matmul forms in ONNX Runtime; the result is the same
    function, and the gate compares it with the original module.
    """
    head = zm.model.get_submodule(zm.head_name)
    if not isinstance(head, DecomposedLinear):
        return module
    if head_only:
        return head.to_gathered().eval()
    clone = copy.deepcopy(module)
    set_submodule(clone, zm.head_name, head.to_gathered())
    return clone.eval()


def head_features(zm: ZooModel, x: torch.Tensor) -> torch.Tensor:
    """The head's input f(x) (penultimate features) for a batch of images, captured by a probe."""
    with eval_mode(zm.model), torch.inference_mode(), Probe(zm.model, [PRE_LOGITS], head_name=zm.head_name) as p:
        zm.model(x)
    f = p.outputs[PRE_LOGITS]
    return f.flatten(1) if f.dim() > 2 else f


def _convert(module: nn.Module, example: torch.Tensor, input_name: str, exporter: str, opset: int | None, *,
             evidence: bool, int8: bool):
    """(proto, the exporter that wrote it, why the first choice was not used or None).

    ``auto`` tries dynamo (torch's default) and, when it cannot convert the model (or cannot write
    ``opset``), the torchscript exporter; both failing is one error naming both causes.
    """
    if exporter != AUTO:
        return _to_onnx(module, example, input_name, exporter, opset, evidence=evidence), exporter, None
    low, high = OPSETS["dynamo"]
    if opset is not None and not low <= opset <= high:
        check_opset(opset, "torchscript")
        return (_to_onnx(module, example, input_name, "torchscript", opset, evidence=evidence), "torchscript",
                f"opset {opset} is outside what the dynamo exporter writes ({low}-{high})")
    try:
        return _to_onnx(module, example, input_name, "dynamo", opset, evidence=evidence), "dynamo", None
    except InspectnetError as first:
        if evidence and int8:
            raise InspectnetError(f"{first}; the torchscript exporter's evidence graph cannot be quantized, so "
                                  f"--int8 with --evidence has no fallback") from None
        why = str(first).split(" (try --exporter")[0]
        try:
            proto = _to_onnx(module, example, input_name, "torchscript", opset, evidence=evidence)
        except InspectnetError as second:
            raise InspectnetError(f"{why}; and {str(second).split(' (try --exporter')[0]}") from None
        return proto, "torchscript", why


def _to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, exporter: str, opset: int | None, *,
             evidence: bool = False):
    """Run torch.onnx.export with ``dynamo`` passed explicitly; any exporter error names the cause."""
    import onnx

    outputs = list(getattr(module, "output_names", None) or
                   ([OUTPUT_NAME, EVIDENCE, EVIDENCE_CLASSES] if evidence else [OUTPUT_NAME]))
    kwargs: dict[str, Any] = {"input_names": [input_name], "output_names": outputs}
    if opset is not None:
        kwargs["opset_version"] = opset
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                program = torch.onnx.export(module, (example,), None, dynamo=True, external_data=False,
                                            dynamic_shapes=({0: batch},), verbose=False, **kwargs)
                return program.model_proto
            buf = io.BytesIO()
            torch.onnx.export(module, (example,), buf, dynamo=False, do_constant_folding=True,
                              dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]}, **kwargs)
            return onnx.load_from_string(buf.getvalue())
    except InspectnetError:
        raise
    except Exception as exc:
        text = strip_terminal_codes(str(exc)).strip()
        first = text.splitlines()[0][:400] if text else type(exc).__name__
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise InspectnetError(f"{type(module).__name__} cannot be exported with the {exporter} exporter: "
                              f"{type(exc).__name__}: {first} (try --exporter {other})") from exc


def _add_metadata(proto, zm: ZooModel, head_only: bool, input_name: str, shape: list[int],
                  evidence: dict[str, Any] | None = None) -> None:
    """Make the file self-describing: preprocessing, class names, where it came from, the evidence outputs."""
    import onnx

    info = {"spec": zm.spec, "arch": zm.arch, "num_classes": zm.num_classes, "in_chans": zm.in_chans,
            "fingerprint": zm.fingerprint(), "head_name": zm.head_name, "modifications": zm.modifications,
            "input_kind": "features" if head_only else "image", "input_name": input_name,
            "input_shape": ["batch", *shape], "output_name": OUTPUT_NAME}
    if evidence is not None:
        info["evidence"] = evidence
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in zm.data_config.items()}
    props = {KEY_FORMAT: f"{FORMAT}/{FORMAT_VERSION}", KEY_PREPROCESSING: json.dumps(config),
             KEY_CLASS_NAMES: json.dumps(list(zm.class_names)), KEY_MODEL: json.dumps(info)}
    head = zm.model.get_submodule(zm.head_name)
    if isinstance(head, DecomposedLinear):  # the decomposition itself, so other runtime forms can be chosen
        props[KEY_DECOMPOSITION] = json.dumps(head.decomposition())
    existing = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, **props})
    proto.producer_name = proto.producer_name or "inspectnet"


def _save(proto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path), save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InspectnetError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc


def _opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _quantize(zm: ZooModel, module: nn.Module, fp32: Path, int8: Path, calibration: np.ndarray,
              evaluation: tuple[np.ndarray, np.ndarray] | None, head_only: bool, input_name: str, threads: int,
              device: str, keep_fp32: list[str], evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize, re-stamp the metadata, check the graph, and compare int8 with fp32 on evaluation data."""
    import onnx

    from inspectnet.export.int8 import int8_weight_bits, quantize_int8
    from inspectnet.export.int8_evidence import float_evidence_branch

    if head_only:
        calibration = _features_of(zm, calibration)
        if evaluation is not None:
            evaluation = (_features_of(zm, evaluation[0]), evaluation[1])
    bits = int8_weight_bits()
    quantize_int8(fp32, int8, calibration, keep_fp32=keep_fp32, weight_bits=bits)
    if evidence is not None:
        float_evidence_branch(int8)
    proto = onnx.load(str(int8))
    _add_metadata(proto, zm, head_only, input_name, list(calibration.shape[1:]), evidence)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "inspectnet.quantization": f"int8-static-qdq-u8s8-per-channel-{bits}bit-weights-"
                                                                   "bias-corrected"})
    _save(proto, int8)
    x_eval, y_eval = evaluation if evaluation is not None else (calibration, np.full(len(calibration), -1))
    s32 = make_session(fp32, providers=default_providers(device), threads=threads)
    s8 = make_session(int8, providers=default_providers(device), threads=threads)
    p32 = _argmax_batches(s32, x_eval)
    p8 = _argmax_batches(s8, x_eval)
    info: dict[str, Any] = {"calibration_samples": len(calibration), "eval_samples": len(x_eval),
                            "eval_on": "evaluation data" if evaluation is not None else "calibration data",
                            "top1_agreement_with_fp32": float((p32 == p8).mean()),
                            "size_bytes": int(int8.stat().st_size), "format": "QDQ",
                            "activations": "QUInt8", "weights": f"QInt8 per-channel, {bits}-bit",
                            "weight_bits_why": _WEIGHT_BITS_WHY[bits], "calibration": "MinMax",
                            "bias_correction": "weight-rounding mean error measured on the calibration data and "
                                               "removed from the biases (Nagel et al. 2019)",
                            "outputs": "float (no QDQ pair on the graph outputs)",
                            "kept_fp32": {n: "requested (--int8-keep-fp32)" for n in keep_fp32}}
    labelled = np.asarray(y_eval) >= 0
    if labelled.any():
        info["accuracy_fp32"] = float((p32[labelled] == y_eval[labelled]).mean())
        info["accuracy_int8"] = float((p8[labelled] == y_eval[labelled]).mean())
    if evidence is not None:
        info["evidence_branch"] = "float: the k weight rows are gathered quantized and dequantized alone"
        info["evidence_correlation_with_fp32"] = _evidence_correlation(s32, s8, x_eval)
    return info


_WEIGHT_BITS_WHY = {8: "this CPU's int8 kernels add 8-bit products without clipping (VNNI, or not x86 AVX2); on an "
                       "x86 CPU with AVX2 but no VNNI they would clip: export there for such machines",
                    7: "this CPU (x86 AVX2 without VNNI) adds pairs of u8 x s8 products in 16 bits and clips "
                       "what does not fit; 7-bit weights keep every pair in range"}


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


def _argmax_batches(session, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run([OUTPUT_NAME], {name: x[i:i + batch_size]})[0].argmax(1)
                           for i in range(0, len(x), batch_size)])


def _features_of(zm: ZooModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([head_features(zm, torch.from_numpy(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)]).astype(np.float32)


def calibration_inputs(zm: ZooModel, spec: str, *, limit: int | None = 256, skip_bad: bool = False,
                       labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs (N, C, H, W) and labels (-1 = unlabelled) from a data spec, evenly spread.

    Samples are taken at evenly spaced indices (:func:`inspectnet.data.subsets.calibration_arrays`)
    so that sorted folders still cover every class. Labels are in the model's label space (the
    data's classes mapped onto its classes, see :mod:`inspectnet.data.labels`); with
    ``labelled=False`` (images that only set activation ranges) they are all -1 and not mapped.
    """
    ds = load_data(spec, zm.transform(), skip_bad=skip_bad, model_classes=zm.class_names if labelled else None)
    x, y = calibration_arrays(ds, limit)
    return x, (y if labelled else np.full(len(y), -1, np.int64))
