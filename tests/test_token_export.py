"""``export --evidence`` on token transformers: the token direct-effect maps and the remainder as ONNX outputs,
checked in ONNX Runtime (Σ evidence + remainder + bias = logit), and the gate catching a wrong remainder."""

import json
import warnings

import numpy as np
import onnx
import pytest
import timm
import torch

from inspectnet.analysis.explain.exact_evidence import TOKENS, evidence_form, token_class_evidence
from inspectnet.analysis.explain.token_evidence import TokenEvidence
from inspectnet.core.errors import InspectnetError
from inspectnet.export.gate import verify
from inspectnet.export.onnx import export_onnx
from inspectnet.models.families import trained_looking
from inspectnet.models.zoo import ZooModel, find_head
from inspectnet.runtime.classifier import KEY_MODEL, OnnxClassifier

SIZE, CLASSES = 32, 5
CONFIG = {"input_size": (3, SIZE, SIZE), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
TINY = {"img_size": SIZE, "depth": 2, "embed_dim": 48, "num_heads": 3, "num_classes": CLASSES}
MODELS = {"vit": ("vit_tiny_patch16_224", {}), "deit": ("deit_tiny_distilled_patch16_224", {}),
          "beit": ("beit_base_patch16_224", {"mlp_ratio": 2.0})}


def _zoo(name: str) -> ZooModel:
    arch, extra = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, **TINY, **extra).eval()
    trained_looking(model, 1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # biases, layer scales, tokens and heads far from their initial values: no term is negligible
        for n, p in model.named_parameters():
            if n.startswith("head"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 1 or n.endswith(("_token", "pos_embed", "bias_table")):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return ZooModel(model=model, source="timm", arch=arch, num_classes=CLASSES, in_chans=3,
                    class_names=[f"c{i}" for i in range(CLASSES)], data_config=CONFIG,
                    head_name=find_head(model))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_token_evidence_export_sums_to_the_logits_in_onnx_runtime(name, tmp_path):
    zm = _zoo(name)
    assert evidence_form(zm) == TOKENS
    res = export_onnx(zm, tmp_path / "m.onnx", latency=False, evidence=2, exporter="torchscript")
    assert res.evidence["form"] == TOKENS and res.evidence["outputs"][-1] == "remainder"
    assert res.parity["evidence_sum_residual"] < 1e-4
    from inspectnet.cli.export import summary

    assert "evidence output (tokens): top-2 maps of [2, 2]" in summary(res.to_dict())
    assert "|sum(E) + remainder + offset - logit|" in summary(res.to_dict())
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[KEY_MODEL])["evidence"]
    tokens = TokenEvidence(zm)
    np.testing.assert_allclose(meta["offset"], tokens.bias().detach().numpy(), rtol=1e-6, atol=1e-6)

    clf = OnnxClassifier(tmp_path / "m.onnx")
    assert clf.output_names == ["logits", "evidence", "evidence_classes", "remainder"]
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    logits, maps, classes, offsets = clf.evidence_with_offsets(x.numpy())
    assert maps.shape == (3, 2, 2, 2) and classes.shape == (3, 2)
    np.testing.assert_array_equal(classes, np.argsort(-logits, axis=1)[:, :2])
    picked = np.take_along_axis(logits, classes, 1)
    scale = 1 + np.abs(logits).max()
    assert np.abs(maps.sum((2, 3)) + offsets - picked).max() < 1e-4 * scale
    # the literal all-class decomposition, gathered at ONNX's classes
    with torch.no_grad():
        _, evidence, remainder = tokens(x)
    rows = np.arange(3)[:, None]
    np.testing.assert_allclose(maps, evidence.numpy()[rows, classes], atol=1e-4 * scale)
    rem = offsets - np.asarray(meta["offset"])[classes]
    np.testing.assert_allclose(rem, remainder.numpy()[rows, classes], atol=1e-4 * scale)
    assert np.abs(rem).max() > 1e-2 * scale  # the remainder is a real term of the sum, not float noise


class _ShiftedRemainder(torch.nn.Module):
    """The token evidence with its remainder output moved by 0.5: what a wrong graph would write."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        logits, maps, classes, remainder = self.inner(x)
        return logits, maps, classes, remainder + 0.5


def test_gate_refuses_a_graph_whose_remainder_differs_from_torch(tmp_path):
    zm = _zoo("vit")
    module = token_class_evidence(zm, k=1)
    names = ["logits", "evidence", "evidence_classes", "remainder"]
    for path, graph in ((tmp_path / "ok.onnx", module), (tmp_path / "bad.onnx", _ShiftedRemainder(module))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (torch.randn(2, 3, SIZE, SIZE),), str(path), dynamo=False, input_names=["input"],
                              output_names=names, dynamic_axes={k: {0: "batch"} for k in ["input", *names]})
    report = verify(module, tmp_path / "ok.onnx", (3, SIZE, SIZE))
    assert report["batches"]["8"]["remainder_max_abs_diff"] < 1e-4
    with pytest.raises(InspectnetError, match="evidence output"):
        verify(module, tmp_path / "bad.onnx", (3, SIZE, SIZE))


def test_token_evidence_with_int8_and_unsupported_transformers_are_refused_in_one_line(tmp_path):
    zm = _zoo("deit")
    with pytest.raises(InspectnetError, match="token transformer") as exc:
        export_onnx(zm, tmp_path / "m.onnx", evidence=1, int8=True, calibration=np.zeros((2, 3, SIZE, SIZE), np.float32))
    assert "\n" not in str(exc.value)
    cait = timm.create_model("cait_xxs24_224", img_size=SIZE, depth=1, num_classes=CLASSES).eval()
    czm = ZooModel(model=cait, source="timm", arch="cait_xxs24_224", num_classes=CLASSES, in_chans=3,
                   class_names=[f"c{i}" for i in range(CLASSES)], data_config=CONFIG,
                   head_name=find_head(cait))
    with pytest.raises(InspectnetError, match="class-attention layers") as exc:
        export_onnx(czm, tmp_path / "c.onnx", evidence=1, latency=False)
    assert "\n" not in str(exc.value) and not (tmp_path / "c.onnx").exists()
