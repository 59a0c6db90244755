"""int8 static quantization of an exported classifier with ONNX Runtime (QDQ, calibrated on real data).

The recipe of DESIGN.md §7: QDQ format, per-channel int8 weights (QInt8) and **unsigned** int8
activations (QUInt8, the U8S8 kernels that fuse convolutions on x86), MinMax calibration on
batches of real preprocessed inputs. ``quantize_dynamic`` is not used: it turns convolutions into
slow ConvInteger nodes. ``keep_fp32`` names graph nodes left unquantized (their inputs and weights stay
float), for layers whose int8 error moves the top-1; :func:`quantizable_nodes` lists the names.

    >>> quantize_int8("m.onnx", "m.int8.onnx", calib)   # calib: (N, C, H, W) float32   # doctest: +SKIP
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.classifier import import_ort

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                  batch_size: int = 16, keep_fp32: Sequence[str] = (),
                  calibration_cache: str | Path | None = None) -> Path:
    """Write the static QDQ int8 version of ``fp32_path`` to ``out_path``, calibrated on ``calibration``.

    ``calibration`` holds model inputs (already preprocessed), at least one sample; ``keep_fp32`` names
    nodes of the fp32 graph to leave in fp32 (an unknown name is refused, named). ``calibration_cache``
    (a JSON file) stores the activation ranges on first use and reuses them afterwards, so quantizing
    the same graph with different ``keep_fp32`` calibrates once.
    """
    import_ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.asarray(calibration, np.float32)
    if len(calibration) == 0:
        raise InspectnetError("int8 quantization needs calibration samples; got none (check --calibration)")
    session_input = _input_name(fp32_path)
    keep_fp32 = list(keep_fp32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration[i:i + batch_size] for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {session_input: batch}

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="inspectnet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + graph clean-up makes per-channel QDQ placement reliable
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception:  # some graphs defeat symbolic shape inference; quantize the plain graph then
            prepared = Path(fp32_path)
        _check_node_names(prepared, keep_fp32, Path(fp32_path).name)
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        nodes_to_exclude=keep_fp32,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False},
                        calibration_cache_path=None if calibration_cache is None else str(calibration_cache))
    return out_path


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the nodes of ``path`` that carry weights (Conv, Gemm, MatMul): the ones int8 changes most.

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
