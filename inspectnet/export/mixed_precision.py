"""Automatic mixed precision for an int8 graph: the fewest weighted nodes kept in fp32 until int8 agrees with fp32.

Agreement is counted where it means something: on the inputs whose fp32 top-1 does not change when every pixel
moves by up to one 8-bit grey level (:func:`fp32_stable`). Elsewhere fp32 itself is undecided, and an int8 flip
there is within fp32's own noise.

The nodes are chosen by measured sensitivity. One int8 graph is quantized; for each Conv/Gemm/MatMul node a copy of
it with only that node back in fp32 (its input read before the QuantizeLinear, its fp32 weight and bias:
:func:`keep_in_float`) runs on the selection data, and the node's sensitivity is how much that lowers the mean
KL divergence of the int8 softmax from the fp32 one. Nodes are then kept in fp32 in that order, one at a time,
until top-1 agreement on the fp32-stable selection inputs reaches the target (or a cap on their number, each
costing speed, is reached), and the file is rewritten with them.

    >>> choice = select_fp32_nodes("m.onnx", "m.int8.onnx", calib, nodes, target=0.99)   # doctest: +SKIP
    >>> choice.kept                                                                      # doctest: +SKIP
    ['node_Conv_766', 'node_Conv_764']
"""

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.export.int8_evidence import _drop_dead_nodes
from inspectnet.runtime.classifier import KEY_PREPROCESSING, make_session, softmax

GREY_LEVEL = 1 / 255  # one 8-bit step of a [0, 1] image, before the model's normalisation
OUTPUT = "logits"
CLIPPING = ("Clip", "Relu")  # activations ONNX Runtime's quantizer folds into the QuantizeLinear after them


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """What :func:`select_fp32_nodes` chose and measured on the selection data.

    ``kept``: nodes kept in fp32, in the order they were added; ``sensitivity``: per node, the drop of the mean KL
    divergence (fp32 ‖ int8) when that node alone is kept in fp32; ``steps``: per number of nodes kept, top-1
    agreement on the fp32-stable selection inputs; ``agreement``: that agreement for the file written;
    ``stable``: how many selection inputs are fp32-stable; ``target_met``: whether ``agreement`` ≥ the target.
    """

    kept: list[str]
    sensitivity: dict[str, float]
    steps: list[dict[str, Any]]
    agreement: float
    stable: int
    target: float
    target_met: bool


def grey_level_step(fp32_path: str | Path) -> np.ndarray:
    """One grey level in the model's input space, per channel: 1/255 divided by the stored normalisation std.

    Args:
        fp32_path: an exported ONNX file with inspectnet's preprocessing metadata (without it, std 1 is assumed).

    Returns:
        float32 array of shape (C, 1, 1), C the number of std values (1 without metadata).

    Examples:
        >>> grey_level_step("lite0.onnx").ravel()   # doctest: +SKIP
        array([0.00784314, 0.00784314, 0.00784314], dtype=float32)
    """
    import onnx

    props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    std = json.loads(props[KEY_PREPROCESSING]).get("std", 1.0) if KEY_PREPROCESSING in props else 1.0
    return (GREY_LEVEL / np.atleast_1d(np.asarray(std, np.float64))).astype(np.float32)[:, None, None]


def fp32_stable(session, x: np.ndarray, step: np.ndarray | float, *, seed: int = 0) -> np.ndarray:
    """Which inputs keep their fp32 top-1 when uniform noise of up to ``step`` (one grey level) is added.

    Args:
        session: ONNX Runtime session of the fp32 graph (output ``logits``).
        x: inputs (N, C, H, W), already preprocessed.
        step: the noise bound in input units, a scalar or per channel (see :func:`grey_level_step`).
        seed: seed of the noise.

    Returns:
        Boolean array (N,): True where fp32's top-1 is unchanged by the noise.

    Examples:
        >>> fp32_stable(make_session("m.onnx"), x, grey_level_step("m.onnx")).mean()   # doctest: +SKIP
        0.96
    """
    noise = np.random.default_rng(seed).uniform(-1, 1, x.shape).astype(np.float32) * np.asarray(step, np.float32)
    return run_logits(session, x).argmax(1) == run_logits(session, x + noise).argmax(1)


def run_logits(session, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``logits`` of ``session`` on ``x``, in batches.

    Args:
        session: ONNX Runtime session with an output ``logits``.
        x: its inputs, first axis the batch.
        batch_size: inputs per run.

    Returns:
        float array (N, classes).

    Examples:
        >>> run_logits(make_session("m.onnx"), x).shape   # doctest: +SKIP
        (128, 1000)
    """
    name = session.get_inputs()[0].name
    return np.concatenate([session.run([OUTPUT], {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)])


def mean_kl(l32: np.ndarray, l8: np.ndarray) -> float:
    """Mean KL divergence (fp32 ‖ int8) of the softmax of two logit arrays, in nats.

    Args:
        l32: reference logits (N, classes).
        l8: logits compared with them, same shape.

    Returns:
        The mean over the N rows.

    Examples:
        >>> round(mean_kl(np.array([[0.0, 0.0]]), np.array([[0.0, np.log(3.0)]])), 4)
        0.1438
    """
    p, q = softmax(l32.astype(np.float64)), softmax(l8.astype(np.float64))
    return float((p * (np.log(np.maximum(p, 1e-300)) - np.log(np.maximum(q, 1e-300)))).sum(1).mean())


def keep_in_float(int8_model, fp32_model, names: Sequence[str]):
    """A copy of the QDQ graph ``int8_model`` with the nodes ``names`` computing wholly in fp32 again.

    Each named node reads its activation before the QuantizeLinear -> DequantizeLinear pair in front of it and gets
    the fp32 weight and bias of the node of the same name in ``fp32_model``. Where the quantizer folded a clipping
    activation (Clip, Relu) into that QuantizeLinear (its range did the clipping), the activation is put back in
    front of the node, as the fp32 graph has it. Q/DQ nodes nothing reads any more are dropped. (ONNX Runtime's own
    exclusion of a node keeps its input quantized; reading it in float removes that error too.)

    Args:
        int8_model: ``onnx.ModelProto`` quantized from ``fp32_model`` (node names kept).
        fp32_model: the float ``onnx.ModelProto``.
        names: node names present in both.

    Returns:
        The modified copy (``onnx.ModelProto``).

    Raises:
        InspectnetError: a name is not a node of both graphs.

    Examples:
        >>> keep_in_float(onnx.load("m.int8.onnx"), onnx.load("m.onnx"), ["node_conv2d"])   # doctest: +SKIP
    """
    import copy

    model = copy.deepcopy(int8_model)
    graph = model.graph
    float_nodes = {n.name: n for n in fp32_model.graph.node}
    float_inits = {t.name: t for t in fp32_model.graph.initializer}
    float_producers = {o: n for n in fp32_model.graph.node for o in n.output}
    nodes = {n.name: n for n in graph.node}
    unknown = [n for n in names if n not in nodes or n not in float_nodes]
    if unknown:
        raise InspectnetError(f"nodes {', '.join(unknown)} are not in both the fp32 and the int8 graph; expected "
                              f"names such as {', '.join(sorted(set(nodes) & set(float_nodes))[:3])}")
    for name in names:
        node, original = nodes[name], float_nodes[name]
        producers = {o: n for n in graph.node for o in n.output}
        tensor = _before_qdq(producers, node.input[0])
        activation = float_producers.get(original.input[0])
        if activation is not None and activation.op_type in CLIPPING and producers.get(tensor) is not None \
                and producers[tensor].op_type != activation.op_type:
            tensor = _restore_activation(graph, node, activation, tensor, float_inits)
        node.input[:] = [tensor] + [_copied(graph, float_inits, t) for t in original.input[1:]]
    _drop_dead_nodes(graph)
    return model


def _before_qdq(producers: dict, name: str) -> str:
    """The float tensor behind ``name`` when it is the output of a QuantizeLinear -> DequantizeLinear pair."""
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return name
    q = producers.get(dq.input[0])
    return q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name


def _restore_activation(graph, reader, activation, tensor: str, float_inits: dict) -> str:
    """Insert a copy of the fp32 graph's ``activation`` on ``tensor`` just before ``reader``; return its output."""
    import copy

    restored = copy.deepcopy(activation)
    restored.name = f"{activation.name}__fp32_for_{reader.name}"
    restored.input[:] = [tensor] + [_copied(graph, float_inits, t) if t else t for t in activation.input[1:]]
    restored.output[:] = [f"{activation.output[0]}__fp32_for_{reader.name}"]
    index = next(i for i, n in enumerate(graph.node) if n.name == reader.name)
    graph.node.insert(index, restored)  # in front of its reader: the graph stays topologically sorted
    return restored.output[0]


def _copied(graph, float_inits: dict, tensor: str) -> str:
    """``tensor`` of the fp32 graph as the int8 graph will read it.

    An fp32 initializer is copied in under a name the int8 graph does not use (there it may hold corrected or quantized
    values).
    """
    import copy

    if tensor not in float_inits:
        return tensor
    name = f"{tensor}__fp32"
    if not any(t.name == name for t in graph.initializer):
        copied = copy.deepcopy(float_inits[tensor])
        copied.name = name
        graph.initializer.append(copied)
    return name


def node_sensitivity(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray, nodes: Sequence[str], *,
                     threads: int = 1) -> dict[str, float]:
    """Per node, how much keeping it alone in fp32 lowers the mean KL divergence (fp32 ‖ int8) on ``x``.

    Args:
        fp32_path: the float graph.
        int8_path: its QDQ int8 version (node names kept).
        x: selection inputs (N, C, H, W).
        nodes: the candidate node names.
        threads: ONNX Runtime threads.

    Returns:
        {node: KL(fp32 ‖ int8) - KL(fp32 ‖ int8 with the node in fp32)}; larger is more sensitive.

    Examples:
        >>> node_sensitivity("m.onnx", "m.int8.onnx", x, quantizable_nodes("m.onnx"))   # doctest: +SKIP
        {'node_conv2d': 0.012, ...}
    """
    import onnx

    fp32_model, int8_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    l32 = run_logits(make_session(fp32_path, threads=threads), x)
    base = mean_kl(l32, run_logits(make_session(int8_path, threads=threads), x))
    out = {}
    for name in nodes:
        variant = keep_in_float(int8_model, fp32_model, [name]).SerializeToString()
        out[name] = base - mean_kl(l32, run_logits(make_session(variant, threads=threads), x))
    return out


def select_fp32_nodes(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray, nodes: Sequence[str], *,
                      target: float = 0.99, max_nodes: int | None = None, threads: int = 1) -> MixedPrecision:
    """Keep the fewest of ``nodes`` in fp32, most sensitive first, until int8 agrees with fp32 on ``x``.

    Rewrite ``int8_path`` with them (:func:`keep_in_float`).

    Args:
        fp32_path: the float graph (with inspectnet's preprocessing metadata for the grey-level step).
        int8_path: its QDQ int8 version, rewritten in place.
        x: selection inputs (calibration data, not evaluation data).
        nodes: candidate nodes (Conv/Gemm/MatMul names of the graph).
        target: top-1 agreement to reach on the fp32-stable inputs of ``x``, in (0, 1].
        max_nodes: at most this many kept (default: all candidates): each costs speed.
        threads: ONNX Runtime threads.

    Returns:
        :class:`MixedPrecision`; ``target_met`` is False when even ``max_nodes`` nodes do not reach ``target``
        (the file then keeps ``max_nodes``).

    Raises:
        InspectnetError: ``target`` is outside (0, 1], or no input of ``x`` is fp32-stable.

    Examples:
        >>> select_fp32_nodes("m.onnx", "m.int8.onnx", cal, quantizable_nodes("m.onnx"), max_nodes=4).kept
        ...                                                                             # doctest: +SKIP
        ['node_Conv_766', 'node_Conv_764']
    """
    import onnx

    if not 0 < target <= 1:
        raise InspectnetError(f"the int8 agreement target must be in (0, 1]; got {target!r}")
    limit = len(nodes) if max_nodes is None else max_nodes
    s32 = make_session(fp32_path, threads=threads)
    stable = fp32_stable(s32, x, grey_level_step(fp32_path))
    if not stable.any():
        raise InspectnetError(f"none of the {len(x)} selection inputs has an fp32 top-1 stable under one grey "
                              "level; pass more (or more typical) calibration images")
    top32 = run_logits(s32, x[stable]).argmax(1)

    def agreement(model) -> float:
        return float((run_logits(make_session(model, threads=threads), x[stable]).argmax(1) == top32).mean())

    sensitivity = node_sensitivity(fp32_path, int8_path, x, nodes, threads=threads)
    ranked = sorted(nodes, key=lambda n: -sensitivity[n])
    fp32_model, int8_model = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    steps = [{"kept": 0, "agreement": agreement(str(int8_path))}]
    model = int8_model
    while steps[-1]["agreement"] < target and len(steps) - 1 < limit:
        model = keep_in_float(int8_model, fp32_model, ranked[:len(steps)])
        steps.append({"kept": len(steps), "agreement": agreement(model.SerializeToString())})
    kept = ranked[:len(steps) - 1]
    if kept:
        onnx.save(model, str(int8_path))
    return MixedPrecision(kept=kept, sensitivity={n: round(sensitivity[n], 6) for n in ranked}, steps=steps,
                          agreement=steps[-1]["agreement"], stable=int(stable.sum()), target=target,
                          target_met=steps[-1]["agreement"] >= target)
