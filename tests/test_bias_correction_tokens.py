"""Bias correction on a Gemm that runs on every token (a transformer's linear layers after the tokens are
flattened into the batch axis): the shift is the mean over all rows, the size of the bias."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inspectnet.export.bias_correction import _mean_shifts


def _token_gemm(tokens: int, width: int, out: int, seed: int) -> tuple[onnx.ModelProto, np.ndarray]:
    """input (N, T, D) -> Reshape (N*T, D) -> Gemm with W (out, D) transposed, bias (out,)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, width)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(out, np.float32), "b"),
             numpy_helper.from_array(np.array([-1, width], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["rows"], name="flatten"),
             helper.make_node("Gemm", ["rows", "w", "b"], ["logits"], name="gemm", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", tokens, width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def test_mean_shift_of_a_gemm_on_tokens_averages_over_every_token_of_every_image():
    tokens, width, out = 5, 4, 3
    model, _ = _token_gemm(tokens, width, out, 0)
    rng = np.random.default_rng(1)
    calibration = rng.standard_normal((7, tokens, width)).astype(np.float32) + 0.5
    error = rng.standard_normal((out, width)) * 0.01
    shift = _mean_shifts(model, {"gemm": error}, calibration, batch_size=3)["gemm"]
    want = (calibration.reshape(-1, width).astype(np.float64) @ error.T).mean(0)  # E[(W̃ - W) x] over all rows
    assert shift.shape == (out,)
    np.testing.assert_allclose(shift, want, rtol=1e-5, atol=1e-8)
