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

from inspectnet.analysis.explain.exact_evidence import TOKENS
from inspectnet.core.errors import InspectnetError, strip_terminal_codes
from inspectnet.core.results import Result
from inspectnet.core.storage import prepare_output_file
from inspectnet.data import load_data
from inspectnet.data.subsets import calibration_arrays
from inspectnet.export.concepts import add_concepts_metadata, concept_outputs, verify_concepts
from inspectnet.export.evidence_outputs import evidence_metadata, evidence_plan
from inspectnet.export.gate import OUTPUT_NAME, measure_latency, verify
from inspectnet.export.gate import torch_threads as torch_threads  # callers time torch with it from here
from inspectnet.models.heads import DecomposedLinear
from inspectnet.models.layers import PRE_LOGITS, eval_mode, model_state
from inspectnet.models.surgery import set_submodule
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe
from inspectnet.runtime.classifier import (
    FORMAT,
    FORMAT_VERSION,
    KEY_CLASS_NAMES,
    KEY_FORMAT,
    KEY_MODEL,
    KEY_PREPROCESSING,
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
                int8_keep_fp32: Sequence[str] = (), evidence: int | None = None,
                int8_agreement: float | None = None, int8_max_fp32: int = 4, concepts: Any = None,
                int8_weight_bits: int | None = None) -> ExportResult:
    """Export ``zm`` to ``out`` (ONNX, dynamic batch, input ``input``/``features``, output ``logits``).

    The file is verified against torch (:func:`~inspectnet.export.gate.verify`) before it is kept.
    ``evidence`` = k adds the outputs ``evidence`` (B, k, H, W), the exact class-evidence maps of the
    top-k classes, and ``evidence_classes`` (B, k)
    (:class:`~inspectnet.analysis.explain.evidence.ClassEvidence`); for token transformers the maps are
    the token direct effects and the output ``remainder`` (B, k) is added
    (:mod:`inspectnet.export.evidence_outputs`). The gate checks them against torch like the logits, and
    Σ evidence (+ remainder) + offset = logit in ONNX Runtime. ``concepts`` adds the output ``concepts``
    (B, K, h, w), checked the same way (:mod:`inspectnet.export.concepts`).

    Args:
        zm: the model.
        out: the ``.onnx`` file.
        opset: the opset (None: the exporter's default).
        exporter: ``auto``, ``dynamo`` or ``torchscript``.
        head_only: export the head alone (input: penultimate features).
        force: overwrite an existing file.
        int8: also write ``<stem>.int8.onnx``, quantized on ``calibration``.
        calibration: model inputs (see :func:`calibration_inputs`).
        evaluation: (inputs, labels with -1 = unlabelled) on which the int8 file's top-1 agreement with
            fp32 (and accuracy when labelled) is measured.
        latency: measure the latency of torch and ONNX Runtime.
        threads: used by both torch and ONNX Runtime when timing, so the latency ratio compares like with like.
        device: where to run the gate.
        int8_keep_fp32: graph nodes left in fp32 (listed in the report).
        int8_agreement: keep the most sensitive other nodes in fp32 (at most ``int8_max_fp32``) until int8
            agrees this well with fp32 on the fp32-stable calibration inputs
            (:mod:`inspectnet.export.mixed_precision`); None: no such search.
        int8_max_fp32: the most nodes that search keeps in fp32.
        int8_weight_bits: 7 or 8 (None: the bits this CPU's int8 kernels need, 7 on x86 AVX2 without VNNI): 7
            builds a file for AVX2 CPUs on any machine.
        evidence: k, for the evidence outputs.
        concepts: a discovery, or the folder ``inspectnet concepts`` wrote (a whole-model fp32 export only).

    Returns:
        The export report.

    Raises:
        InspectnetError: an option is refused (exporter, threads, ``--int8`` without calibration or with
            evidence on the wrong exporter, an output not ending in ``.onnx``), the exporter wrote another
            opset, or the gate fails.
    """
    if exporter not in (AUTO, *EXPORTERS):
        raise InspectnetError(f"--exporter {exporter!r} is unknown; expected one of {AUTO}, {', '.join(EXPORTERS)}")
    check_opset(opset, exporter)
    if threads < 1:
        raise InspectnetError(f"--threads must be at least 1, got {threads}")
    plan = evidence_plan(zm, evidence, head_only)
    if int8 and plan is not None and plan.form == TOKENS:
        raise InspectnetError(f"--int8 with --evidence: {zm.spec} is a token transformer, whose evidence output "
                              f"recomputes every block and would be quantized with them; export the int8 file "
                              f"without --evidence, or the fp32 file with it")
    if int8 and plan is not None and exporter == "torchscript":
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
        if plan is not None:
            wrapped = plan.module(zm, module)
            graph = wrapped if graph is module else plan.module(zm, graph)
            module, evidence_info = wrapped, evidence_metadata(plan, wrapped, example)
        if concepts is not None:
            module, graph, concepts_info = concept_outputs(zm, module, graph, concepts)
        outputs = plan.outputs() if plan else list(getattr(graph, "output_names", [OUTPUT_NAME]))
        try:
            proto, exporter, fallback = _convert(graph, example, input_name, exporter, opset, outputs=outputs, int8=int8)
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
                from inspectnet.export.int8_report import Int8Request, quantize_and_report

                request = Int8Request(tuple(int8_keep_fp32), int8_agreement, int8_max_fp32, int8_weight_bits)
                int8_info = quantize_and_report(zm, tmp, tmp_int8, calibration, evaluation, request,
                                                head_only=head_only, input_name=input_name, threads=threads,
                                                device=device, evidence=evidence_info)
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

    Args:
        opset: the opset, or None.
        exporter: ``dynamo`` or ``torchscript``.

    Raises:
        InspectnetError: the opset is outside the exporter's range.

    Examples:
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

    Args:
        zm: the model.
        module: the module to export (the whole model, or its head).
        head_only: ``module`` is the head.

    Returns:
        The module to export, in eval mode.
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
    """The head's input f(x) (penultimate features) for a batch of images, captured by a probe.

    Args:
        zm: the model.
        x: (N, C, H, W) preprocessed images.

    Returns:
        (N, d) features.
    """
    with eval_mode(zm.model), torch.inference_mode(), Probe(zm.model, [PRE_LOGITS], head_name=zm.head_name) as p:
        zm.model(x)
    f = p.outputs[PRE_LOGITS]
    return f.flatten(1) if f.dim() > 2 else f


def _convert(module: nn.Module, example: torch.Tensor, input_name: str, exporter: str, opset: int | None, *,
             outputs: list[str], int8: bool):
    """(proto, the exporter that wrote it, why the first choice was not used or None).

    ``auto`` tries dynamo (torch's default) and, when it cannot convert the model (or cannot write
    ``opset``), the torchscript exporter; both failing is one error naming both causes.
    """
    if exporter != AUTO:
        return _to_onnx(module, example, input_name, exporter, opset, outputs=outputs), exporter, None
    low, high = OPSETS["dynamo"]
    if opset is not None and not low <= opset <= high:
        check_opset(opset, "torchscript")
        return (_to_onnx(module, example, input_name, "torchscript", opset, outputs=outputs), "torchscript",
                f"opset {opset} is outside what the dynamo exporter writes ({low}-{high})")
    try:
        return _to_onnx(module, example, input_name, "dynamo", opset, outputs=outputs), "dynamo", None
    except InspectnetError as first:
        if len(outputs) > 1 and int8:
            raise InspectnetError(f"{first}; the torchscript exporter's evidence graph cannot be quantized, so "
                                  f"--int8 with --evidence has no fallback") from None
        why = str(first).split(" (try --exporter")[0]
        try:
            proto = _to_onnx(module, example, input_name, "torchscript", opset, outputs=outputs)
        except InspectnetError as second:
            raise InspectnetError(f"{why}; and {str(second).split(' (try --exporter')[0]}") from None
        return proto, "torchscript", why


def _to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, exporter: str, opset: int | None, *,
             outputs: list[str] = (OUTPUT_NAME,)):
    """Run torch.onnx.export with ``dynamo`` passed explicitly; any exporter error names the cause."""
    import onnx

    kwargs: dict[str, Any] = {"input_names": [input_name], "output_names": list(outputs)}
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


def _features_of(zm: ZooModel, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([head_features(zm, torch.from_numpy(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)]).astype(np.float32)


def calibration_inputs(zm: ZooModel, spec: str, *, limit: int | None = 256, skip_bad: bool = False,
                       labelled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed inputs and labels from a data spec, evenly spread.

    Samples are taken at evenly spaced indices (:func:`inspectnet.data.subsets.calibration_arrays`)
    so that sorted folders still cover every class. Labels are in the model's label space (the
    data's classes mapped onto its classes, see :mod:`inspectnet.data.labels`); with
    ``labelled=False`` (images that only set activation ranges) they are all -1 and not mapped.

    Args:
        zm: the model (its preprocessing and classes).
        spec: a data spec.
        limit: the most samples.
        skip_bad: skip undecodable files of a folder.
        labelled: map the labels onto the model's classes.

    Returns:
        ``(inputs (N, C, H, W) float32, labels (N,))``.
    """
    ds = load_data(spec, zm.transform(), skip_bad=skip_bad, model_classes=zm.class_names if labelled else None)
    x, y = calibration_arrays(ds, limit)
    return x, (y if labelled else np.full(len(y), -1, np.int64))
