"""int8 static quantization of an exported classifier with ONNX Runtime (QDQ, calibrated on real data).

The recipe: QDQ format, per-channel int8 weights (QInt8) and **unsigned** int8
activations (QUInt8, the U8S8 kernels that fuse convolutions on x86), MinMax calibration on
batches of real preprocessed inputs. ``quantize_dynamic`` is not used: it turns convolutions into
slow ConvInteger nodes. ``keep_fp32`` names graph nodes left unquantized (their inputs and weights stay
float), for layers whose int8 error moves the top-1; :func:`quantizable_nodes` lists the names.

Two steps beyond ONNX Runtime's defaults, both measured on EfficientNet-Lite0
(benchmarks/results/int8_sensitivity.md): the biases are corrected for the mean shift that weight rounding
causes (:mod:`inspectnet.export.bias_correction`; the weight error, not the activation ranges, dominates
there), and the graph outputs stay float: a QDQ pair on ``logits`` rounds them to 256 levels, and near-tied
classes then tie exactly, so argmax picks the lower index.

On an x86-64 CPU with AVX2 but without VNNI, ONNX Runtime's fused u8×s8 kernels add pairs of products in
16 bits (VPMADDUBSW) and clip what does not fit (ONNX Runtime's quantization guide names this), so the file
computes something other than its QDQ maths; there the weights are quantized to 7 bits (``reduce_range``),
which keeps every pair in range (:func:`saturating_int8_cpu`). Measured on a MobileNetV2 (tests/test_export.py):
with 8-bit weights on such a CPU the int8 logits' mean offset from fp32 was 0.25 fused against 0.07 for the
same file run unfused.

    >>> quantize_int8("m.onnx", "m.int8.onnx", calib)   # calib: (N, C, H, W) float32   # doctest: +SKIP
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.classifier import import_ort
from inspectnet.runtime.int8_cpu import int8_cpu_family, native_weight_bits

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
ADAROUND_SCOPES = ("off", "depthwise", "all")


def saturating_int8_cpu(cpuinfo: str | Path | None = None) -> bool:
    r"""Whether this CPU's int8 kernels clip 8-bit weight products.

    That is x86 flags with ``avx2`` but neither ``avx512_vnni`` nor ``avx_vnni`` (Linux; elsewhere, or
    when the flags cannot be read, False).

    Args:
        cpuinfo: the file the flags are read from (None: this machine's).

    Returns:
        True where 8-bit weights would clip.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "cpuinfo"
        >>> _ = f.write_text("flags : fpu sse2 avx2 fma\n"); saturating_int8_cpu(f)
        True
        >>> _ = f.write_text("flags : fpu sse2 avx2 avx512f avx512_vnni\n"); saturating_int8_cpu(f)
        False
    """
    return int8_cpu_family(cpuinfo) == "x86-avx2"


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                  batch_size: int = 16, keep_fp32: Sequence[str] = (),
                  calibration_cache: str | Path | None = None, bias_correction: bool = True,
                  adaround: str = "off", adaround_iterations: int = 300, weight_bits: int | None = None) -> Path:
    """Write the static QDQ int8 version of ``fp32_path`` to ``out_path``, calibrated on ``calibration``.

    ``calibration_cache`` (a JSON file) stores the activation ranges on first use and reuses them
    afterwards, so quantizing the same graph with different ``keep_fp32`` calibrates once.
    ``bias_correction`` quantizes twice: the second time with the biases moved by the mean error of the
    first one's int8 weights. ``adaround`` learns the chosen convs' rounding
    (:mod:`inspectnet.export.adaround`) before the bias correction measures what error is left.

    Args:
        fp32_path: the float graph.
        out_path: the int8 graph to write.
        calibration: preprocessed model inputs, at least one sample.
        batch_size: inputs per calibration run.
        keep_fp32: nodes of the fp32 graph to leave in fp32 (an unknown name is refused, named).
        calibration_cache: a JSON file of activation ranges, written or reused.
        bias_correction: correct the biases for the int8 weights' mean error.
        adaround: ``"off"``, ``"depthwise"`` or ``"all"`` convs.
        adaround_iterations: Adam steps per layer.
        weight_bits: 8 or 7; None picks 7 on a CPU whose int8 kernels would clip 8-bit products
            (:func:`saturating_int8_cpu`), else 8.

    Returns:
        ``out_path`` as a ``Path``.

    Raises:
        InspectnetError: there are no calibration samples, ``adaround`` is unknown, or a ``keep_fp32`` node
            is not in the graph.

    Examples:
        >>> quantize_int8("m.onnx", "m.int8.onnx", calib, keep_fp32=["node_conv2d"])   # doctest: +SKIP
        PosixPath('m.int8.onnx')
    """
    calibration = np.asarray(calibration, np.float32)
    if len(calibration) == 0:
        raise InspectnetError("int8 quantization needs calibration samples; got none (check --calibration)")
    if adaround not in ADAROUND_SCOPES:
        raise InspectnetError(f"--int8-adaround must be one of {', '.join(ADAROUND_SCOPES)}; got {adaround!r}")
    weight_bits = int8_weight_bits(weight_bits)
    keep_fp32 = list(keep_fp32)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="inspectnet-quant-") as tmp:
        prepared = _prepared(Path(fp32_path), Path(tmp) / "prepared.onnx")
        _check_node_names(prepared, keep_fp32, Path(fp32_path).name)
        # the second pass reuses the first one's ranges: the bias shifts move activations by far less than a step
        cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "ranges.json"
        _quantize_static(prepared, out_path, calibration, batch_size, keep_fp32, cache, weight_bits)
        rounding = _adaround(prepared, out_path, calibration, adaround, adaround_iterations,
                                                Path(tmp)) if adaround != "off" else {}
        if rounding:  # the quantized file must carry the learned integers before the bias correction measures it
            _quantize_static(Path(tmp) / "rounded.onnx", out_path, calibration, batch_size, keep_fp32, cache,
                             weight_bits)
        if bias_correction:
            from inspectnet.export.bias_correction import correct_biases

            corrected = Path(tmp) / "corrected.onnx"
            correct_biases(prepared, out_path, calibration, corrected, batch_size=batch_size)
            if rounding:  # the corrected graph holds the original weights: put the learned ones back
                from inspectnet.export.adaround import write_rounded_weights

                write_rounded_weights(corrected, rounding, corrected)
            _quantize_static(corrected, out_path, calibration, batch_size, keep_fp32, cache, weight_bits)
        if rounding:
            from inspectnet.export.adaround import check_rounding

            check_rounding(out_path, rounding)
    _float_graph_outputs(out_path)
    return out_path


def int8_weight_bits(requested: int | None = None) -> int:
    """The weight precision to quantize with.

    Args:
        requested: 7 or 8, or None for 7 where this CPU would clip 8-bit products, else 8.

    Returns:
        The bits.

    Raises:
        InspectnetError: ``requested`` is neither 7 nor 8.

    Examples:
        >>> int8_weight_bits(8)
        8
    """
    if requested is None:
        return native_weight_bits(int8_cpu_family())
    if requested not in (7, 8):
        raise InspectnetError(f"int8 weight bits must be 7 or 8; got {requested!r}")
    return requested


def _adaround(prepared: Path, quantized: Path, calibration: np.ndarray, scope: str, iterations: int,
              tmp: Path) -> dict:
    """Learn the rounding of the ``scope`` convs against ``quantized``'s grid; write tmp/rounded.onnx with it."""
    import onnx

    from inspectnet.export.adaround import AdaRoundConfig, depthwise_convs, learn_rounding, write_rounded_weights

    nodes = depthwise_convs(prepared) if scope == "depthwise" else \
        [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
    rounding = learn_rounding(prepared, quantized, calibration, nodes, AdaRoundConfig(iterations=iterations))
    write_rounded_weights(prepared, rounding, tmp / "rounded.onnx")
    return rounding


def _prepared(fp32_path: Path, prepared: Path) -> Path:
    """ONNX Runtime's pre-processing (shape inference, graph clean-up), or the plain graph when it fails."""
    import_ort()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:  # shape inference + graph clean-up makes per-channel QDQ placement reliable
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
    except Exception:  # some graphs defeat symbolic shape inference; quantize the plain graph then
        return fp32_path
    return prepared


def _quantize_static(model: Path, out_path: Path, calibration: np.ndarray, batch_size: int, keep_fp32: list[str],
                     cache: Path, weight_bits: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    session_input = _input_name(model)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {session_input: batch}

    quantize_static(str(model), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    nodes_to_exclude=keep_fp32,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, reduce_range=weight_bits == 7,
                    extra_options={"CalibTensorRangeSymmetric": False},
                    calibration_cache_path=str(cache))


def _float_graph_outputs(path: Path) -> None:
    """Drop the QuantizeLinear -> DequantizeLinear pair in front of each graph output.

    The producer's float result becomes the output again; ONNX Runtime still fuses the producer's int8 inputs.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    dropped = []
    for output in graph.output:
        dq = producers.get(output.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] not in producers:
            continue
        float_name = q.input[0]
        for node in graph.node:  # the producer and any other reader of the float tensor
            node.output[:] = [output.name if o == float_name else o for o in node.output]
            node.input[:] = [output.name if i == float_name else i for i in node.input]
        dropped += [q, dq]
    if not dropped:
        return
    for node in dropped:
        graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [t for t in graph.initializer if t.name not in used]:  # the dropped pairs' scales and zero points
        graph.initializer.remove(init)
    onnx.save(model, str(path))


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the nodes of ``path`` that carry weights (Conv, Gemm, MatMul): the ones int8 changes most.

    Args:
        path: an ONNX file.

    Returns:
        The node names, in graph order.

    Examples:
        >>> quantizable_nodes("m.onnx")[:2]   # doctest: +SKIP
        ['node_conv2d', 'node_conv2d_1']
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]


def _check_node_names(graph_path: Path, names: list[str], shown_as: str) -> None:
    """Refuse node names absent from the graph that is quantized (ONNX Runtime would ignore them silently)."""
    if not names:
        return
    known = quantizable_nodes(graph_path)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InspectnetError(f"--int8-keep-fp32 names nodes that are not Conv/Gemm/MatMul nodes of {shown_as}: "
                              f"{', '.join(unknown)}; expected names such as {', '.join(known[:3])}")


def _input_name(path: str | Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name
