"""The trust measurement: hand-computed deletion/insertion curves, maps from one pass equal to the per-method
maps, the few-step AUC error bound (holds, and is reached), and the trust section in a default audit's card."""

import json

import numpy as np
import pytest
import torch

from inspectnet.analysis.explain.faithfulness import auc
from inspectnet.analysis.explain.methods import explanation_maps, gradcam_layer
from inspectnet.analysis.explain.trust import (
    REFERENCE_STEPS,
    TrustConfig,
    coarse_curve,
    deletion_insertion,
    interval_variation,
    maps_in_one_pass,
    step_error_bound,
)
from inspectnet.core.errors import InspectnetError

WEIGHTS = torch.tensor([0.5, 0.25, 0.125, 0.125])


class WeightedMean:
    """A 2-class scorer whose class-0 probability is the weighted mean of a 2×2 image's pixels; counts its inputs."""

    def __init__(self):
        self.count, self.batches = 0, []

    def __call__(self, x):
        self.count += len(x)
        self.batches.append(len(x))
        q = (x.flatten(1) * WEIGHTS).sum(1)
        return torch.stack([q.log(), (1 - q).log()], 1)


def test_deletion_and_insertion_curves_match_hand_computed_values():
    # image (0.8, 0.4, 0.2, 0.2), mean baseline 0.4 everywhere; the map ranks the pixels in raster order
    x = torch.tensor([0.8, 0.4, 0.2, 0.2]).view(1, 1, 2, 2)
    maps = {"ordered": torch.tensor([[[4.0, 3.0], [2.0, 1.0]]]), "reversed": torch.tensor([[[1.0, 2.0], [3.0, 4.0]]]),
            "flat": torch.ones(1, 2, 2)}
    scorer = WeightedMean()
    curves = deletion_insertion(scorer, x, maps, torch.tensor([0]), torch.tensor([0.55]),
                                TrustConfig(steps=4, baseline="mean", batch_size=3))
    c = curves["ordered"]
    # deletion: (0.4,0.4,0.2,0.2) -> 0.35; same at 2 pixels; (0.4,0.4,0.4,0.2) -> 0.375; baseline 0.4
    np.testing.assert_allclose(c["deletion"][0], [0.55, 0.35, 0.35, 0.375, 0.4], atol=1e-6)
    # insertion: (0.8,0.4,0.4,0.4) -> 0.6 twice; (0.8,0.4,0.2,0.4) -> 0.575; the image 0.55
    np.testing.assert_allclose(c["insertion"][0], [0.4, 0.6, 0.6, 0.575, 0.55], atol=1e-6)
    np.testing.assert_allclose(auc(c["deletion"], [0, 0.25, 0.5, 0.75, 1]), [0.3875], atol=1e-6)
    np.testing.assert_allclose(auc(c["insertion"], [0, 0.25, 0.5, 0.75, 1]), [0.5625], atol=1e-6)
    # reversed order: deletion (0.8,0.4,0.2,0.4) 0.575, (0.8,0.4,0.4,0.4) 0.6, (0.8,0.4,0.4,0.4) 0.6
    np.testing.assert_allclose(curves["reversed"]["deletion"][0], [0.55, 0.575, 0.6, 0.6, 0.4], atol=1e-6)
    # a constant map is not ranked: NaN rows, no forward pass spent on it
    assert curves["flat"]["status"] == ["constant"] and np.isnan(curves["flat"]["deletion"]).all()
    # the baseline once, 3 interior points × 2 curves × 2 ranked maps; batches of at most 3
    assert scorer.count == 1 + 2 * 2 * 3 and max(scorer.batches) == 3


def resnet18(**kw):
    """A random ResNet18 whose residual branches pass gradients (timm starts each block's last BatchNorm at zero,
    which would make every Grad-CAM map inside a block zero)."""
    from inspectnet.models.zoo import load_model

    torch.manual_seed(0)
    zm = load_model("resnet18", **kw)
    with torch.no_grad():
        for m in zm.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return zm


def test_maps_from_one_pass_equal_each_method_computed_alone():
    from inspectnet.analysis.explain.evidence import pooled_head

    zm = resnet18(num_classes=5, input_size=64)
    x = torch.randn(3, 3, 64, 64)
    logits, maps = maps_in_one_pass(zm, x, layer=gradcam_layer(zm), pooled=pooled_head(zm))
    targets = logits.argmax(1)
    for method in ("gradcam", "evidence"):
        alone = explanation_maps(method, zm, x, targets, indices=range(3))
        assert maps[method].shape == (3, 2, 2)
        torch.testing.assert_close(maps[method], alone, rtol=1e-4, atol=1e-6)
    assert float(maps["evidence"].abs().sum()) > 0 and float(maps["gradcam"].abs().sum()) > 0
    with torch.no_grad():
        torch.testing.assert_close(logits, zm.model.eval()(x))


def test_step_error_bound_value_and_divisor_check():
    assert step_error_bound(7) == pytest.approx(0.75 / 7)
    assert step_error_bound(4, 28, variation=0.5) == pytest.approx((1 - 4 / 28) * 0.5 / 4)
    assert step_error_bound(28) == 0.0
    with pytest.raises(InspectnetError, match="must divide"):
        step_error_bound(5)
    with pytest.raises(InspectnetError, match="divide 28"):
        TrustConfig(steps=5)


@pytest.mark.parametrize("steps", [1, 2, 4, 7, 14])
def test_few_step_auc_stays_within_the_bound_on_random_and_monotone_curves(steps):
    rng = np.random.default_rng(steps)
    curves = np.concatenate([rng.random((200, REFERENCE_STEPS + 1)),                           # any curve in [0, 1]
                             np.sort(rng.random((200, REFERENCE_STEPS + 1)), axis=1)[:, ::-1]])  # deletion-like
    fine = auc(curves, np.linspace(0, 1, REFERENCE_STEPS + 1))
    coarse = auc(coarse_curve(curves, steps), np.linspace(0, 1, steps + 1))
    error = np.abs(coarse - fine)
    assert (error <= step_error_bound(steps) * interval_variation(curves, steps) + 1e-12).all()
    assert (error[200:] <= step_error_bound(steps) + 1e-12).all()  # monotone: V ≤ 1
    assert error.max() > 0.2 * step_error_bound(steps)  # not a vacuous comparison


def test_step_error_bound_is_reached_by_a_bump_between_two_coarse_points():
    curve = np.zeros((1, REFERENCE_STEPS + 1))
    curve[0, 1:4] = 1.0  # inside the first 7-step interval, invisible to the 7-step curve
    fine = auc(curve, np.linspace(0, 1, REFERENCE_STEPS + 1))[0]
    coarse = auc(coarse_curve(curve, 7), np.linspace(0, 1, 8))[0]
    assert fine == pytest.approx(3 / 28) and coarse == 0.0
    assert abs(fine - coarse) == pytest.approx(step_error_bound(7) * interval_variation(curve, 7)[0])


def test_default_audit_card_has_the_trust_section(tmp_path):
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    zm = resnet18(num_classes=10, in_chans=1, input_size=64)
    doc = run_audit(zm, AuditConfig(data="digits:train", limit=24, layers=["layer4"], attribution_images=1,
                                    ig_steps=2, top_units=1), tmp_path / "audit", log=None)
    section = doc["sections"]["trust"]
    assert section["status"] == "ok", section
    r = section["result"]
    assert r["images"] == 16 and r["steps"] == 7 and set(r["methods"]) == {"evidence", "gradcam", "random"}
    assert r["methods"]["random"]["evaluated"] == 16 and r["methods"]["evidence"]["vs_random"]["paired_images"] > 0
    assert r["forward_passes"] <= 16 * (1 + 3 * 2 * 6) + 16  # one curve set per map, shared end points
    card = json.loads((tmp_path / "audit" / "card.json").read_text())
    assert "trust" in card["sections"]
    for page in ("README.md", "card.html"):
        text = (tmp_path / "audit" / page).read_text()
        assert "Trust in the explanations" in text and "beats random" in text and "--explain-images" in text


def test_a_class_token_vit_is_measured_with_its_exact_token_evidence():
    from inspectnet.analysis.explain.exact_evidence import exact_evidence
    from inspectnet.analysis.explain.trust import trust_measurement
    from inspectnet.models.zoo import load_model

    zm = load_model("vit_tiny_patch16_224", num_classes=3, input_size=32, seed=0,
                    build_args={"depth": 1, "patch_size": 8, "embed_dim": 24, "num_heads": 2})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    config = TrustConfig(steps=2)
    r = trust_measurement(zm, x, indices=range(4), config=config)
    assert r["evidence_error"] is None and r["methods"]["evidence"]["map_size"] == [4, 4]
    with torch.no_grad():
        logits = zm.model(x)
    top1 = logits.argmax(1)
    maps = exact_evidence(zm, x, top1[:, None]).maps[:, 0]
    probs = logits.softmax(1).gather(1, top1[:, None])[:, 0]
    # the per-image deletion AUCs are those of the exact token maps, recomputed here from the maps themselves
    curves = deletion_insertion(zm.model, x, {"evidence": maps}, top1, probs, config)["evidence"]
    expected = auc(curves["deletion"], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(r["per_image"]["evidence"]["deletion_auc"], expected, atol=1e-6)
