"""Bias correction of int8 weights, measured on the calibration data.

The method is Nagel et al. 2019, *Data-Free Quantization through Weight Equalization and Bias
Correction*, §4.2.

Rounding a layer's weights W to W̃ shifts the mean of every output channel by E[(W̃ - W) * x]: per-channel
rounding errors of a 3×3 or 5×5 depthwise filter (9 or 25 weights) do not average out, and the shifts add up
through a deep network. Subtracting the shift from the fp32 bias before quantizing removes that systematic
part of the error. The paper derives E[x] from batch-norm statistics; an exported graph has its batch norms
folded, so the shift is measured instead: a copy of each layer with weights W̃ - W (same strides, padding,
groups, so border effects count) runs beside it on the calibration inputs, and its output is averaged.

    >>> correct_biases("prepared.onnx", "plain.int8.onnx", calib, "corrected.onnx")   # doctest: +SKIP
    ['node_Conv_764', 'node_Conv_766', ...]
"""

import copy
from pathlib import Path

import numpy as np

from inspectnet.export.qdq import int8_weights
from inspectnet.runtime.classifier import make_session

BIASED_OPS = ("Conv", "Gemm")  # MatMul carries no bias to move


def correct_biases(fp32_path: str | Path, quantized_path: str | Path, calibration: np.ndarray, out_path: str | Path,
                   *, batch_size: int = 16) -> list[str]:
    """Write ``fp32_path`` to ``out_path`` with each bias shifted by -E[(W̃ - W) x].

    W̃ are the dequantized weights that ``quantized_path`` (``fp32_path`` quantized once) gives each Conv/Gemm
    node of the same name; a node without a bias gets one; nodes whose weights stayed float, or whose bias
    is computed rather than stored, are left as they are. Quantizing the written graph again keeps the same
    W̃ (the weights did not change) and removes the mean shift.

    Args:
        fp32_path: the float graph.
        quantized_path: the same graph quantized once.
        calibration: preprocessed model inputs, over which E is taken.
        out_path: the graph to write.
        batch_size: inputs per ONNX Runtime run.

    Returns:
        The corrected nodes.

    Examples:
        >>> correct_biases("m.onnx", "m.int8.onnx", calib, "m.corrected.onnx")[:1]   # doctest: +SKIP
        ['node_conv2d']
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    errors = _weight_errors(model, onnx.load(str(quantized_path)))
    if not errors:
        onnx.save(model, str(out_path))
        return []
    shifts = _mean_shifts(model, errors, calibration, batch_size)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in shifts:
            continue
        if _has_bias(node):
            bias = inits[node.input[2]]
            old = numpy_helper.to_array(bias)
        else:  # exporters drop all-zero biases (e.g. folded batch norms with zero shift): give it one
            bias = model.graph.initializer.add()
            bias.name = f"{node.name}__bias"
            node.input.extend([bias.name] if len(node.input) == 2 else [])
            node.input[2] = bias.name
            old = np.zeros(len(shifts[node.name]), np.float32)
        beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0)
        corrected = old - shifts[node.name] / beta
        bias.CopyFrom(numpy_helper.from_array(corrected.astype(np.float32), bias.name))
    onnx.save(model, str(out_path))
    return list(shifts)


def _weight_errors(model, quantized) -> dict[str, np.ndarray]:
    """W̃ - W per Conv/Gemm node whose weight is int8 in ``quantized`` and whose bias is an fp32 initializer or absent."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    errors = {}
    for node, q in int8_weights(model, quantized, BIASED_OPS):
        if node.input[1] not in inits or (_has_bias(node) and node.input[2] not in inits):
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        shape = [1] * w.ndim
        if q.scale.ndim:  # per-channel: scales run along ``axis``
            shape[q.axis] = -1
        w_int, scale, zero = (a.astype(np.float64) for a in (q.ints, q.scale, q.zero_point))
        errors[node.name] = (w_int - zero.reshape(shape)) * scale.reshape(shape) - w
    return errors


def _mean_shifts(model, errors: dict[str, np.ndarray], calibration: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """E[(W̃ - W) x] per output channel, from copies of the layers with weights W̃ - W run on the calibration data."""
    import onnx
    from onnx import helper, numpy_helper

    probe = copy.deepcopy(model)
    outputs = {}
    for node in model.graph.node:
        if node.name not in errors:
            continue
        delta, shifted, pooled = (f"{node.name}__weight_error{suffix}" for suffix in ("", "_out", "_mean"))
        probe.graph.initializer.append(numpy_helper.from_array(errors[node.name].astype(np.float32), delta))
        twin = helper.make_node(node.op_type, [node.input[0], delta], [shifted], name=shifted)
        twin.attribute.extend(a for a in node.attribute if a.name != "beta")
        probe.graph.node.append(twin)
        if node.op_type == "Conv":  # (N, C, H, W) -> (N, C, 1, 1): the spatial mean, in the graph
            probe.graph.node.append(helper.make_node("GlobalAveragePool", [shifted], [pooled], name=pooled))
        else:
            pooled = shifted
        probe.graph.output.append(helper.make_tensor_value_info(pooled, onnx.TensorProto.FLOAT, None))
        outputs[node.name] = pooled
    session = make_session(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    sums, rows = dict.fromkeys(outputs, 0.0), dict.fromkeys(outputs, 0)
    for start in range(0, len(calibration), batch_size):
        batch = calibration[start:start + batch_size]
        for name, value in zip(outputs, session.run(list(outputs.values()), {feed_name: batch})):
            # rows of (rows, channels): one per image for a pooled Conv, but a Gemm inside a transformer runs on
            # every token of every image (tokens flattened into its first axis) and its bias is added to each
            sums[name] = sums[name] + value.reshape(value.shape[0], value.shape[1]).sum(0, dtype=np.float64)
            rows[name] += value.shape[0]
    return {name: total / rows[name] for name, total in sums.items()}


def _has_bias(node) -> bool:
    return len(node.input) > 2 and node.input[2] != ""
