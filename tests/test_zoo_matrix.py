"""Breadth: layers, probe and predict across the zoo on random weights."""

import numpy as np
import pytest
import torch

from inspectnet import load_data, load_model, run_probe
from inspectnet.models.layers import list_layers
from inspectnet.models.predict import predict

MATRIX = [
    ("resnet18", 64), ("efficientnet_b0", 64), ("mobilenetv3_small_100", 64), ("convnext_atto", 64),
    ("regnetx_002", 64), ("vit_tiny_patch16_224", 224), ("torchvision:resnet18", 64),
    ("torchvision:mobilenet_v3_small", 64), ("torchvision:densenet121", 64),
]


@pytest.mark.parametrize("spec, size", MATRIX)
def test_layers_probe_predict(spec, size, tmp_path):
    torch.manual_seed(0)
    zm = load_model(spec, num_classes=2, input_size=size)  # the two classes of the shapes "square" task
    rows = list_layers(zm.model, zm.data_config["input_size"])
    assert rows[-1]["output_shape"] is not None
    ds = load_data("shapes?n=6&task=square", zm.transform())
    layers = "blocks.11,pre_logits" if "vit" in spec else "last_conv,pre_logits"  # ViT: tokens reduced
    rec = run_probe(zm, ds, layers, tmp_path / "r", batch_size=4)
    d = zm.head.in_features
    assert rec.features.shape == (6, d) and rec.logits.shape == (6, 2)
    head = zm.head
    recon = rec.features @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(recon, rec.logits, rtol=1e-4, atol=1e-4)
    out = predict(zm, ds, topk=2)
    assert len(out) == 6 and all(len(r["top"]) == 2 for r in out)
