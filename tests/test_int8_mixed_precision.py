"""int8 that agrees with fp32: fp32-stable inputs, keeping nodes in float, automatic mixed precision, the CPU
family an int8 file was built for."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from inspectnet import load_model
from inspectnet.export.int8 import int8_weight_bits, quantizable_nodes, quantize_int8
from inspectnet.export.mixed_precision import (
    fp32_stable,
    grey_level_step,
    keep_in_float,
    mean_kl,
    run_logits,
    select_fp32_nodes,
)
from inspectnet.export.onnx import calibration_inputs, export_onnx
from inspectnet.runtime import int8_cpu
from inspectnet.runtime.classifier import OnnxClassifier, make_session

AVX2 = "model name : Some x86\nflags : fpu sse2 avx2 fma\n"
VNNI = "model name : Other x86\nflags : fpu sse2 avx2 avx512f avx512_vnni\n"


def flatten_model() -> bytes:
    """logits = the input (N, 1, 1, 2) flattened: the top-1 is the larger of the two input values."""
    node = helper.make_node("Flatten", ["input"], ["logits"], axis=1)
    graph = helper.make_graph([node], "flat", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_fp32_stable_keeps_margins_beyond_two_steps_and_flags_near_ties():
    step = 1 / 255
    # noise of at most one step on each value moves their difference by at most two steps
    clear = np.array([[[[0.0, 2.05 * step]]], [[[2.05 * step, 0.0]]]], np.float32)
    tied = np.tile(np.array([[[[0.0, 1e-5]]]], np.float32), (40, 1, 1, 1))
    stable = fp32_stable(make_session(flatten_model()), np.concatenate([clear, tied]), step)
    assert stable[:2].all()
    assert 0 < (~stable[2:]).sum() < 40  # a near tie flips under some draws of the noise, not all


def test_grey_level_step_is_one_grey_level_over_the_stored_std(tmp_path):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    zm.data_config = {**zm.data_config, "std": (0.25,), "mean": (0.5,)}
    export_onnx(zm, tmp_path / "m.onnx", latency=False)
    assert grey_level_step(tmp_path / "m.onnx").ravel().tolist() == pytest.approx([4 / 255])


def test_mean_kl_by_hand():
    assert mean_kl(np.array([[0.0, 0.0]]), np.array([[0.0, np.log(3.0)]])) == pytest.approx(
        0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75))
    assert mean_kl(np.array([[1.0, 2.0, 3.0]]), np.array([[11.0, 12.0, 13.0]])) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """A MobileNetV2 (depthwise convs, ReLU6 folded into the quantizer's ranges) exported, with digits to calibrate."""
    torch.manual_seed(0)
    zm = load_model("mobilenetv2_050", num_classes=10, in_chans=1, input_size=32)
    tmp = tmp_path_factory.mktemp("mnv2")
    export_onnx(zm, tmp / "m.onnx", latency=False)
    cal, _ = calibration_inputs(zm, "digits:train", limit=64)
    return tmp, cal


def conv_relu_model(path) -> None:
    """Conv -> Relu -> Conv -> Relu -> Conv 1x1 on (N, 1, 6, 6), seeded weights, output (N, 5, 6, 6): the quantizer
    folds both Relus into the QuantizeLinear after them."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": rng.normal(0, 0.5, (4, 1, 3, 3)), "b1": rng.normal(0, 0.1, 4),
               "w2": rng.normal(0, 0.3, (4, 4, 3, 3)), "b2": rng.normal(0, 0.1, 4),
               "w3": rng.normal(0, 0.5, (5, 4, 1, 1)), "b3": rng.normal(0, 0.1, 5)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["logits"], name="conv3")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 5, 6, 6])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_keep_in_float_puts_nodes_back_in_fp32_with_their_folded_activations(tmp_path):
    conv_relu_model(tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(0, 1, (64, 1, 6, 6)).astype(np.float32)
    plain = quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", x)
    int8_model, fp32_model = onnx.load(str(plain)), onnx.load(str(tmp_path / "m.onnx"))
    assert not any(n.op_type == "Relu" for n in int8_model.graph.node)  # folded into the quantizer's ranges
    l32, l8 = run_logits(make_session(tmp_path / "m.onnx"), x), run_logits(make_session(plain), x)
    assert np.abs(l8 - l32).max() > 1e-3
    every = keep_in_float(int8_model, fp32_model, ["conv1", "conv2", "conv3"])
    onnx.checker.check_model(every)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in every.graph.node)
    assert np.abs(run_logits(make_session(every.SerializeToString()), x) - l32).max() < 1e-5  # fp32 again
    last = keep_in_float(int8_model, fp32_model, ["conv3"])  # only the last: its input relu2 read in float
    got = run_logits(make_session(last.SerializeToString()), x)
    assert np.abs(got - l32).max() < np.abs(l8 - l32).max()
    with pytest.raises(Exception, match="not in both the fp32 and the int8 graph"):
        keep_in_float(int8_model, fp32_model, ["no_such_node"])


def test_select_fp32_nodes_keeps_the_shortest_sensitive_prefix_that_reaches_the_target(mobilenet):
    tmp, cal = mobilenet
    fp32, out = tmp / "m.onnx", tmp / "sel.onnx"
    nodes = quantizable_nodes(fp32)
    quantize_int8(fp32, out, cal)
    s32 = make_session(fp32)
    stable = fp32_stable(s32, cal, grey_level_step(fp32))
    top32 = run_logits(s32, cal[stable]).argmax(1)
    plain_agreement = float((run_logits(make_session(out), cal[stable]).argmax(1) == top32).mean())
    assert plain_agreement < 1.0  # the case is not trivial: int8 disagrees somewhere
    target = 1.0
    choice = select_fp32_nodes(fp32, out, cal, nodes, target=target)
    assert choice.steps[0] == {"kept": 0, "agreement": pytest.approx(plain_agreement)}
    ranking = list(choice.sensitivity)
    assert choice.kept == ranking[:len(choice.kept)]
    assert sorted(choice.sensitivity.values(), reverse=True) == list(choice.sensitivity.values())
    assert all(s["agreement"] < target for s in choice.steps[:-1])  # no shorter prefix reached it
    written = float((run_logits(make_session(out), cal[stable]).argmax(1) == top32).mean())
    assert choice.agreement == pytest.approx(written) and choice.target_met == (written >= target)
    assert choice.target_met and 0 < len(choice.kept) < len(nodes)
    q = onnx.load(str(out))
    dq_outputs = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    float_weights = {n.name for n in q.graph.node if n.name in nodes and n.input[1] not in dq_outputs}
    assert float_weights == set(choice.kept)


def test_select_fp32_nodes_stops_at_max_nodes_and_says_the_target_was_missed(mobilenet):
    tmp, cal = mobilenet
    fp32, out = tmp / "m.onnx", tmp / "cap.onnx"
    quantize_int8(fp32, out, cal)
    choice = select_fp32_nodes(fp32, out, cal, quantizable_nodes(fp32), target=1.0, max_nodes=1)
    assert len(choice.kept) <= 1 and len(choice.steps) == len(choice.kept) + 1
    assert choice.target_met == (choice.agreement >= 1.0)
    with pytest.raises(Exception, match="target must be in"):
        select_fp32_nodes(fp32, out, cal, [], target=1.5)


def test_int8_cpu_family_from_the_flags(tmp_path):
    cases = {AVX2: "x86-avx2", VNNI: "x86-vnni", "flags : fpu avx2 avx_vnni\n": "x86-vnni",
             "flags : fp asimd\n": "other", "": "other"}
    for i, (text, family) in enumerate(cases.items()):
        (tmp_path / f"c{i}").write_text(text)
        assert int8_cpu.int8_cpu_family(tmp_path / f"c{i}") == family
    assert int8_cpu.int8_cpu_family(tmp_path / "missing") == "other"


def test_int8_export_records_its_cpu_family_reports_stable_agreement_and_warns_on_another_family(tmp_path, monkeypatch):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    cal, _ = calibration_inputs(zm, "digits:train", limit=48)
    ev = calibration_inputs(zm, "digits:test", limit=60)
    res = export_onnx(zm, tmp_path / "m.onnx", int8=True, calibration=cal, evaluation=ev, latency=False,
                      int8_agreement=1.0, int8_max_fp32=2)
    q = res.int8
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.int8.onnx")).metadata_props}
    record = json.loads(props[int8_cpu.KEY_INT8_CPU])
    assert record == {"family": int8_cpu.int8_cpu_family(), "weight_bits": int8_weight_bits(),
                      "cpu": int8_cpu.cpu_model()}
    assert q["accuracy_change_points"] == pytest.approx(100 * (q["accuracy_int8"] - q["accuracy_fp32"]), abs=0.01)
    assert 0 < q["fp32_stable_samples"] <= 60 and 0 <= q["top1_agreement_fp32_stable"] <= 1
    mixed = q["mixed_precision"]
    assert len(mixed["kept"]) <= 2 and set(mixed["kept"]) == set(q["kept_fp32"])
    other = VNNI if record["family"] != "x86-vnni" else AVX2
    (tmp_path / "cpuinfo").write_text(other)
    with pytest.warns(UserWarning, match=f"quantized for {record['family']} CPUs .* runs on a x86-"):
        int8_cpu.check_int8_cpu(props, "m.int8.onnx", tmp_path / "cpuinfo")
    monkeypatch.setattr(int8_cpu, "CPUINFO", tmp_path / "cpuinfo")
    with pytest.warns(UserWarning, match="was quantized for"):
        OnnxClassifier(tmp_path / "m.int8.onnx")
    import warnings

    monkeypatch.setattr(int8_cpu, "CPUINFO", int8_cpu.Path("/proc/cpuinfo"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OnnxClassifier(tmp_path / "m.int8.onnx")  # the family it was built for: silent
        int8_cpu.check_int8_cpu({}, "m.onnx")   # an fp32 file carries no record


@pytest.mark.parametrize("bits", [7, 8])
def test_int8_weight_bits_requested_reach_the_weights_and_the_record_names_the_family_that_needs_them(
        tmp_path, monkeypatch, bits):
    from onnx import numpy_helper

    torch.manual_seed(0)
    zm = load_model("resnet10t", num_classes=10, in_chans=1, input_size=16)
    cal, _ = calibration_inputs(zm, "digits:train", limit=16)
    (tmp_path / "cpuinfo").write_text(VNNI if bits == 7 else AVX2)  # built where the other precision is native
    monkeypatch.setattr(int8_cpu, "CPUINFO", tmp_path / "cpuinfo")
    res = export_onnx(zm, tmp_path / "m.onnx", int8=True, calibration=cal, latency=False, int8_weight_bits=bits)
    proto = onnx.load(str(tmp_path / "m.int8.onnx"))
    record = json.loads({p.key: p.value for p in proto.metadata_props}[int8_cpu.KEY_INT8_CPU])
    assert record == {"family": "x86-avx2" if bits == 7 else "x86-vnni", "weight_bits": bits,
                      "cpu": "Other x86" if bits == 7 else "Some x86"}
    assert res.int8["weights"] == f"QInt8 per-channel, {bits}-bit"
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == TensorProto.INT8]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert 64 < largest <= 127 if bits == 8 else largest <= 64
    with pytest.warns(UserWarning, match=f"quantized for {record['family']} CPUs"):
        OnnxClassifier(tmp_path / "m.int8.onnx")  # built for the family this CPU is not
