"""The explanations stage on token transformers: the evidence method is the token direct-effect map, measured
against the random control and by the sanity cascade, and the card reports the remainder's share per image and
the layers and heads ranked by contribution."""

import numpy as np
import pytest
import timm
import torch

from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig
from inspectnet.analysis.explain.methods import MethodConfig, explanation_maps
from inspectnet.analysis.explain.token_evidence import explain_tokens
from inspectnet.data import load_data
from inspectnet.models.families import trained_looking
from inspectnet.models.zoo import ZooModel, find_head
from inspectnet.pipelines.audit.token_card import token_evidence_blocks
from inspectnet.pipelines.explain import ModelForm, QualityConfig, explanation_quality

SIZE, DEPTH = 32, 2
CONFIG = {"input_size": (3, SIZE, SIZE), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
MODELS = {"vit": ("vit_tiny_patch16_224", {}), "deit": ("deit_tiny_distilled_patch16_224", {}),
          "beit": ("beit_base_patch16_224", {"mlp_ratio": 2.0})}
QUICK = QualityConfig(images=3, sanity_images=2, sanity_steps=2, methods=("evidence",),
                      faithfulness=FaithfulnessConfig(steps=4, road_fractions=(0.5,)), method=MethodConfig(ig_steps=2))


def _zoo(name: str) -> ZooModel:
    arch, extra = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, img_size=SIZE, depth=DEPTH, embed_dim=48, num_heads=3, num_classes=2,
                              **extra).eval()
    trained_looking(model, 1)
    return ZooModel(model=model, source="timm", arch=arch, num_classes=2, in_chans=3, class_names=["a", "b"],
                    data_config=CONFIG, head_name=find_head(model))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_explanations_stage_measures_token_evidence_and_reports_the_remainder_share(name, tmp_path):
    zm = _zoo(name)
    data = load_data("shapes?n=6&task=square", zm.transform())
    doc = explanation_quality([ModelForm("full", zm)], data, tmp_path, QUICK)
    row = next(r for r in doc["rows"] if r["method"] == "evidence")
    assert row["status"] == "ok" and row["map_size"] == [2, 2] and row["vs_random"]["paired_images"] == 3
    sanity = doc["sanity"]["full"]["methods"]["evidence"]
    assert len(sanity["spearman"]) == 2 and sanity["passes"] in (True, False, None)

    x = torch.stack([data[i][0] for i in range(3)])
    with torch.no_grad():
        preds = zm.model(x).argmax(1)
    dec = explain_tokens(zm, x)
    rows = torch.arange(3)
    maps = explanation_maps("evidence", zm, x, preds, indices=range(3))
    torch.testing.assert_close(maps, dec.evidence[rows, preds], rtol=1e-5, atol=1e-6)
    # the share written out literally: |r| / (Σ|E| + |r|) of each image's predicted class
    e, r = dec.evidence.numpy(), dec.remainder.numpy()
    want = [abs(r[i, c]) / (np.abs(e[i, c]).sum() + abs(r[i, c])) for i, c in enumerate(preds.tolist())]
    summary = doc["token_evidence"]["full"]
    np.testing.assert_allclose(summary["remainder_share"]["per_image"], want, atol=1e-4)
    assert 0 < min(want) and max(want) < 1
    totals = [abs(layer["total"]) for layer in summary["layers"]]
    assert sorted(layer["layer"] for layer in summary["layers"]) == list(range(DEPTH)) and totals == sorted(totals)[::-1]
    table = token_evidence_blocks(doc["token_evidence"])[1]
    assert table.rows[0][0] == "full" and table.rows[0][2].count("%") == 3


def test_remainder_share_is_left_undefined_where_the_classifier_carries_nothing():
    from inspectnet.analysis.explain.token_summary import token_evidence_summary

    zm = _zoo("vit")
    with torch.no_grad():
        zm.model.head.weight.zero_()  # logits = bias: no map and no remainder to share
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    summary = token_evidence_summary(zm, x, torch.tensor([0, 1]))
    assert summary["remainder_share"] == {"per_image": [None, None], "mean": None, "max": None}
    assert token_evidence_blocks({"full": summary})[1].rows[0][2:] == ["—, —", "n/a", "n/a"]


def test_trained_looking_gives_a_zero_initialised_classifier_weights_within_its_fan_in_bound():
    head = torch.nn.Linear(16, 3)
    with torch.no_grad():
        head.weight.zero_()
    trained_looking(head, 0)
    assert head.weight.abs().min() > 0 and head.weight.abs().max() <= 16 ** -0.5
