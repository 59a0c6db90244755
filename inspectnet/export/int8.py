"""int8 static quantization of an exported classifier with ONNX Runtime (QDQ, calibrated on real data).

The recipe of DESIGN.md §7: QDQ format, per-channel int8 weights (QInt8) and **unsigned** int8
activations (QUInt8, the U8S8 kernels that fuse convolutions on x86), MinMax calibration on
batches of real preprocessed inputs. ``quantize_dynamic`` is not used: it turns convolutions into
slow ConvInteger nodes.

    >>> quantize_int8("m.onnx", "m.int8.onnx", calib)   # calib: (N, C, H, W) float32   # doctest: +SKIP
"""

import tempfile
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.classifier import import_ort


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                  batch_size: int = 16) -> Path:
    """Write the static QDQ int8 version of ``fp32_path`` to ``out_path``, calibrated on ``calibration``.

    ``calibration`` holds model inputs (already preprocessed), at least one sample.
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
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"CalibTensorRangeSymmetric": False})
    return out_path


def _input_name(path: str | Path) -> str:
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name
