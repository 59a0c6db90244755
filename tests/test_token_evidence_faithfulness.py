"""Token evidence of a small ViT trained here to name the colour of a small square on noise: the maps
point at the square and beat the random control on deletion and insertion."""

import pytest
import timm
import torch
from torch.nn import functional as F

from inspectnet.analysis.explain.faithfulness import FaithfulnessConfig, compare_to_control, faithfulness_curves
from inspectnet.analysis.explain.methods import random_maps
from inspectnet.analysis.explain.token_evidence import explain_tokens, remainder_share
from inspectnet.models.zoo import ZooModel, find_head

SIZE, PATCH = 32, 8


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise images with one red, green or blue square (4–6 px); labels = its colour; masks of the square."""
    g = torch.Generator().manual_seed(seed)
    x = 0.4 * torch.rand(n, 3, SIZE, SIZE, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n):
        r = int(torch.randint(2, 4, (1,), generator=g))
        cy, cx = (int(v) for v in torch.randint(r, SIZE - r, (2,), generator=g))
        x[i, :, cy - r:cy + r, cx - r:cx + r] = torch.eye(3)[y[i]][:, None, None]
        masks[i, cy - r:cy + r, cx - r:cx + r] = True
    return x, y, masks


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small operations: a second intra-op thread only waits for a core on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(one_thread):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, patch_size=PATCH, embed_dim=48, depth=2,
                              num_heads=3, num_classes=3)
    x, y, _ = _squares(2048, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        i = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return ZooModel(model=model, source="timm", arch="vit_tiny_patch16_224", num_classes=3, in_chans=3,
                    class_names=["red", "green", "blue"], data_config={"input_size": (3, SIZE, SIZE)},
                    head_name=find_head(model))


def test_token_evidence_of_a_trained_vit_points_at_the_square_and_beats_the_random_control(trained):
    x, y, masks = _squares(32, 1)
    dec = explain_tokens(trained, x)
    assert float((dec.logits.argmax(1) == y).float().mean()) >= 0.9
    maps = dec.evidence[torch.arange(len(y)), y]                                 # (32, 4, 4)
    # the patch with the most evidence holds part of the square in most images
    on_square = F.max_pool2d(masks[:, None].float(), PATCH)[:, 0].flatten(1)    # (32, 16): patch touches it
    top = maps.flatten(1).argmax(1)
    assert float(on_square[torch.arange(len(y)), top].mean()) >= 0.8
    assert float(remainder_share(dec, y).mean()) < 0.5
    config = FaithfulnessConfig(steps=8, baseline="mean", road_fractions=(0.5,))
    with torch.no_grad():
        method = faithfulness_curves(trained.model, x, maps, y, config)
        control = faithfulness_curves(trained.model, x, random_maps(range(len(y)), maps.shape[1:]), y, config)
    paired = compare_to_control(method, control)
    assert paired["beats_control"], paired
    assert paired["road_morf"] < 0


def test_token_evidence_changes_when_the_trained_vit_is_randomised_from_the_head_down(trained):
    """Cascading randomisation (Adebayo et al. 2018): after every block is re-drawn, the maps of the same
    images and classes no longer rank the patches as before (mean |Spearman ρ| below 0.5)."""
    import copy
    import dataclasses

    import numpy as np

    from inspectnet.analysis.explain.sanity import THRESHOLD, cascade_blocks, randomise, spearman

    x, y, _ = _squares(16, 2)
    rows = torch.arange(len(y))
    before = explain_tokens(trained, x).evidence[rows, y].numpy()
    copied = dataclasses.replace(trained, model=copy.deepcopy(trained.model))
    assert np.mean([spearman(a, b) for a, b in zip(before, explain_tokens(copied, x).evidence[rows, y].numpy())]) \
        == pytest.approx(1.0)
    blocks = cascade_blocks(copied.model, copied.head_name)
    assert blocks[0] == "head" and "blocks.0" in blocks
    for i, name in enumerate(blocks):
        randomise(copied.model.get_submodule(name), seed=i)
    after = explain_tokens(copied, x).evidence[rows, y].numpy()
    assert float(np.mean([abs(spearman(a, b)) for a, b in zip(before, after)])) < THRESHOLD
