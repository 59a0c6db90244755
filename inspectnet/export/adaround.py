"""Adaptive rounding of int8 conv weights, learned per layer on the calibration data.

The method is Nagel et al. 2020, *Up or Down? Adaptive Rounding for Post-Training Quantization*.

Rounding each weight to the nearest grid point minimises the weight error, not the layer's output error. AdaRound
learns, per weight, whether to round down or up: W̃ = s · clip(⌊W/s⌋ + h(V), n, p) with the rectified sigmoid
h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1 (paper eq. 23), trained on the layer reconstruction loss
‖f(Wx + b) − f(W̃x + b)‖² (eq. 25; f the layer's ReLU/Clip when it is the only reader) plus the regulariser
λ Σ 1 − |2h(V) − 1|^β, β annealed 20 → 2 after a warm-up without it (eq. 24), which drives h to exactly 0 or 1.
Inputs x are the fp32 layer inputs (eq. 21's form; the paper's asymmetric variant feeds quantized inputs).

It works on the ONNX graph that is quantized (batch norms already folded, so the weights and ONNX Runtime's
per-channel scales are the ones int8 uses), with torch as the optimiser; the learned integers are written back
as floats exactly on the grid, the channel's largest-magnitude weight unchanged, so that ONNX Runtime's quantizer
recomputes the same scales and keeps the integers (:func:`check_rounding` verifies it on the quantized file).

    >>> rounding = learn_rounding("prepared.onnx", "plain.int8.onnx", calib, ["node_Conv_766"])   # doctest: +SKIP
    >>> write_rounded_weights("prepared.onnx", rounding, "rounded.onnx")                          # doctest: +SKIP
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspectnet.core.errors import InspectnetError
from inspectnet.export.qdq import int8_weights

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (paper eq. 23)
ACTIVATIONS = ("Relu", "Clip")


@dataclass(frozen=True)
class AdaRoundConfig:
    """Bounded AdaRound schedule: ``iterations`` Adam steps per layer on ``batch`` random calibration inputs.

    The regulariser (weight ``reg_weight``) is off for the first ``warmup`` fraction; β is annealed
    20 → 2 after it.
    """

    iterations: int = 300
    batch: int = 8
    lr: float = 1e-2
    reg_weight: float = 0.01
    warmup: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Rounding:
    """A layer's learned integers with the per-output-channel scales they use (weight = ints · scale)."""

    ints: np.ndarray
    scale: np.ndarray


def depthwise_convs(path: str | Path) -> list[str]:
    """Names of the depthwise Conv nodes of ``path`` (group = input channels > 1), where int8 rounding errs most.

    Args:
        path: an ONNX file.

    Returns:
        The node names, in graph order.

    Examples:
        >>> depthwise_convs("lite0.onnx")[:1]   # doctest: +SKIP
        ['node_Conv_766']
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    names = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1 and node.input[1] in inits \
                and numpy_helper.to_array(inits[node.input[1]]).shape[1] == 1:
            names.append(node.name)
    return names


def learn_rounding(fp32_path: str | Path, quantized_path: str | Path, calibration: np.ndarray, nodes: list[str],
                   config: AdaRoundConfig = AdaRoundConfig()) -> dict[str, Rounding]:
    """Learn the rounding of each Conv in ``nodes`` against the int8 grid that ``quantized_path`` gives it.

    ``quantized_path`` is ``fp32_path`` quantized once (its per-channel weight scales define the grid);
    nodes whose weights stayed float there are skipped.

    Args:
        fp32_path: the float graph.
        quantized_path: the same graph quantized once.
        calibration: preprocessed model inputs.
        nodes: the Conv nodes to round.
        config: the schedule.

    Returns:
        ``{node: Rounding}``.

    Examples:
        >>> sorted(learn_rounding("m.onnx", "m.int8.onnx", calib, ["node_conv2d"]))   # doctest: +SKIP
        ['node_conv2d']
    """
    import onnx

    model = onnx.load(str(fp32_path))
    grids = _weight_grids(model, onnx.load(str(quantized_path)), nodes)
    inputs = _layer_inputs(model, list(grids), np.asarray(calibration, np.float32))
    nodes_by_name = {n.name: n for n in model.graph.node}
    rng = np.random.default_rng(config.seed)
    return {name: _learn_layer(nodes_by_name[name], model, grid, inputs[name], config, rng)
            for name, grid in grids.items()}


def write_rounded_weights(fp32_path: str | Path, rounding: dict[str, Rounding], out_path: str | Path) -> None:
    """Write ``fp32_path`` with each rounded node's weights replaced by ints · scale (exactly on the grid).

    The largest-magnitude weight of each channel is kept as it is, so the quantizer derives the same scale.

    Args:
        fp32_path: the float graph.
        rounding: ``{node: Rounding}`` of :func:`learn_rounding`.
        out_path: the graph to write.

    Examples:
        >>> write_rounded_weights("m.onnx", rounding, "m.rounded.onnx")   # doctest: +SKIP
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32_path))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in rounding:
            continue
        tensor = inits[node.input[1]]
        w = numpy_helper.to_array(tensor)
        r = rounding[node.name]
        on_grid = (r.ints * _per_channel(r.scale, w.ndim)).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(np.where(_channel_max(w), w, on_grid), tensor.name))
    onnx.save(model, str(out_path))


def check_rounding(quantized_path: str | Path, rounding: dict[str, Rounding]) -> None:
    """Refuse a quantized file whose int8 weights differ from the learned integers (the quantizer re-rounded).

    Args:
        quantized_path: the int8 graph.
        rounding: ``{node: Rounding}`` it should hold.

    Raises:
        InspectnetError: a node's int8 weights are not the learned integers.
    """
    import onnx

    model = onnx.load(str(quantized_path))
    grids = _weight_grids(model, model, list(rounding), from_quantized=True)
    for name, r in rounding.items():
        if name not in grids or not np.array_equal(grids[name][0], r.ints):
            raise InspectnetError(f"int8 weights of node {name} in {Path(quantized_path).name} are not the learned "
                                  "AdaRound integers; expected the quantizer to keep weights that lie on its grid")


def _weight_grids(model, quantized, nodes: list[str], *, from_quantized: bool = False) -> dict:
    """{node: (ints, scale, float weight)} for the Conv nodes of ``nodes`` whose weight is int8 in ``quantized``."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    grids = {}
    for node, q in int8_weights(model, quantized, ("Conv",), nodes):
        if np.any(q.zero_point != 0) or q.scale.ndim != 1:
            raise InspectnetError(f"AdaRound expects symmetric per-channel int8 weights; node {node.name} has "
                                  f"zero points {np.unique(q.zero_point)[:3]} and scales of shape {q.scale.shape}")
        w = q.ints.astype(np.float32) if from_quantized else numpy_helper.to_array(inits[node.input[1]])
        grids[node.name] = (q.ints.astype(np.int64), q.scale.astype(np.float32), w)
    return grids


def _layer_inputs(model, nodes: list[str], calibration: np.ndarray) -> dict[str, np.ndarray]:
    """The fp32 input tensor of each node on the calibration data (one run of the graph with extra outputs)."""
    import copy

    import onnx
    from onnx import helper

    from inspectnet.runtime.classifier import make_session

    probe = copy.deepcopy(model)
    by_name = {n.name: n for n in model.graph.node}
    tensors = {name: by_name[name].input[0] for name in nodes}
    graph_outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in dict.fromkeys(tensors.values()) if t not in graph_outputs)
    session = make_session(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    wanted = list(dict.fromkeys(tensors.values()))
    batches = [session.run(wanted, {feed: calibration[i:i + 16]}) for i in range(0, len(calibration), 16)]
    stacked = {t: np.concatenate([b[k] for b in batches]) for k, t in enumerate(wanted)}
    return {name: stacked[t] for name, t in tensors.items()}


def _learn_layer(node, model, grid, x: np.ndarray, config: AdaRoundConfig, rng: np.random.Generator) -> Rounding:
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    ints, scale, w = grid
    inits = {t.name: t for t in model.graph.initializer}
    bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else None
    attrs = {a.name: a for a in node.attribute}
    conv = {"stride": tuple(attrs["strides"].ints) if "strides" in attrs else 1,
            "dilation": tuple(attrs["dilations"].ints) if "dilations" in attrs else 1,
            "groups": attrs["group"].i if "group" in attrs else 1}
    pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * (2 * (w.ndim - 2))
    activation = _activation(node, model)
    s = torch.from_numpy(_per_channel(scale, w.ndim))
    wt = torch.from_numpy(np.array(w, np.float32))  # a copy: onnx arrays are read-only
    b = None if bias is None else torch.from_numpy(np.array(bias, np.float32))
    floor = torch.floor(wt / s)
    keep = torch.from_numpy(_channel_max(w))  # the channel's extreme weight sets the scale: its integer stays
    rest = (wt / s - floor).clamp(0, 1)
    v = torch.log((rest - GAMMA) / (ZETA - GAMMA) / (1 - (rest - GAMMA) / (ZETA - GAMMA))).clamp(-8, 8)
    v = v.clone().requires_grad_(True)
    qmin, qmax = -127, 127  # ONNX Runtime's symmetric int8 weight range

    def layer(x_batch, weight):
        padded = F.pad(x_batch, _torch_pads(pads))
        y = F.conv2d(padded, weight, b, **conv)
        return activation(y)

    def soft(v_):
        return (torch.sigmoid(v_) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)

    def quantized(h):
        q = torch.where(keep, torch.from_numpy(ints.astype(np.float32)), (floor + h).clamp(qmin, qmax))
        return q * s

    optimiser = torch.optim.Adam([v], lr=config.lr)
    xt = torch.from_numpy(x)
    warm = int(config.warmup * config.iterations)
    for step in range(config.iterations):
        batch = xt[rng.choice(len(xt), min(config.batch, len(xt)), replace=False)]
        with torch.no_grad():
            target = layer(batch, wt)
        h = soft(v)
        loss = (layer(batch, quantized(h)) - target).pow(2).sum(1).mean()
        if step >= warm:
            beta = 2 + 18 * (1 - (step - warm) / max(1, config.iterations - warm))
            loss = loss + config.reg_weight * (1 - (2 * h - 1).abs().pow(beta)).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        final = torch.where(keep, torch.from_numpy(ints.astype(np.float32)), (floor + (v >= 0).float()).clamp(qmin, qmax))
    return Rounding(final.numpy().astype(np.int64), scale)


def _activation(node, model):
    """The ReLU/Clip applied to the node's output when it is its only reader; identity otherwise.

    The loss then ignores clipped values, as the paper's eq. 25.
    """
    import torch
    from onnx import numpy_helper

    readers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(readers) != 1 or readers[0].op_type not in ACTIVATIONS:
        return lambda y: y
    reader = readers[0]
    if reader.op_type == "Relu":
        return torch.relu
    inits = {t.name: t for t in model.graph.initializer}
    bounds = [float(numpy_helper.to_array(inits[i])) if i in inits else None for i in reader.input[1:3]]
    if any(i and i not in inits for i in reader.input[1:3]):  # computed bounds: leave the output unclipped
        return lambda y: y
    low, high = (bounds + [None, None])[:2]
    return lambda y: y.clamp(low, high)


def _per_channel(scale: np.ndarray, ndim: int) -> np.ndarray:
    return scale.reshape([-1] + [1] * (ndim - 1)).astype(np.float32)


def _channel_max(w: np.ndarray) -> np.ndarray:
    flat = np.abs(w).reshape(len(w), -1)
    return (np.abs(w) == flat.max(1).reshape([-1] + [1] * (w.ndim - 1)))


def _torch_pads(pads: list[int]) -> tuple[int, ...]:
    """ONNX pads (begin_h, begin_w, end_h, end_w) as F.pad's (left_w, right_w, top_h, bottom_h)."""
    half = len(pads) // 2
    out: list[int] = []
    for axis in reversed(range(half)):
        out += [pads[axis], pads[axis + half]]
    return tuple(out)
