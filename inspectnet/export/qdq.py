"""The int8 weights of a QDQ graph, found for the nodes of the float graph it was quantized from.

ONNX Runtime's static quantizer keeps node names and feeds each quantized weight (input 1) through a
DequantizeLinear of an int8 initializer; bias correction and AdaRound both read those integers back.

    >>> [node.name for node, _ in int8_weights(fp32_model, int8_model, ("Conv",))]   # doctest: +SKIP
    ['node_Conv_764', ...]
"""

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Int8Weight:
    """A node's quantized weight: integers, scale and zero point as stored, and the scales' axis."""

    ints: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int


def int8_weights(model: Any, quantized: Any, ops: Collection[str],
                 names: Collection[str] | None = None) -> Iterator[tuple[Any, Int8Weight]]:
    """Each node of ``model`` whose op is in ``ops`` with its int8 weight in ``quantized``.

    Only nodes whose name is in ``names`` (when given) and whose weight ``quantized`` stores as an int8
    initializer; nodes kept in fp32 are skipped.

    Args:
        model: the float ONNX model.
        quantized: its int8 version.
        ops: the op types.
        names: the node names, or None for all.

    Yields:
        ``(node of model, its Int8Weight)`` pairs.

    Examples:
        >>> next(int8_weights(fp32_model, int8_model, ("Conv",)))[1].ints.dtype   # doctest: +SKIP
        dtype('int8')
    """
    from onnx import numpy_helper

    q_inits = {t.name: t for t in quantized.graph.initializer}
    dequantizers = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    q_nodes = {n.name: n for n in quantized.graph.node}
    for node in model.graph.node:
        q_node = q_nodes.get(node.name)
        if node.op_type not in ops or (names is not None and node.name not in names) or q_node is None:
            continue
        dq = dequantizers.get(q_node.input[1])
        if dq is None or dq.input[0] not in q_inits:  # weight kept in fp32
            continue
        ints, scale, zero = (numpy_helper.to_array(q_inits[name]) for name in dq.input[:3])
        yield node, Int8Weight(ints, scale, zero, next((a.i for a in dq.attribute if a.name == "axis"), 1))
