"""Exact token evidence where the terms a slip would drop are present: deeper and oblong models, a large LayerNorm
eps, heads and projections without bias, pooling over prefix tokens, NHWC patch embeddings at another input size,
BEiT's shared relative and absolute position terms; and the blocks that must be refused."""

from functools import partial

import pytest
import timm
import torch
from torch import nn

from inspectnet.analysis.explain.token_evidence import explain_tokens, token_evidence_supported
from inspectnet.models.zoo import ZooModel, find_head
from tests.test_token_evidence import _non_trivial

CLASSES = 5


def _zoo(model: nn.Module, size: tuple[int, int]) -> ZooModel:
    model = _non_trivial(model, 7)              # biases, γ, β, tokens and positions non-zero; a large head
    return ZooModel(model=model, source="timm", arch=type(model).__name__, num_classes=CLASSES, in_chans=3,
                    class_names=[f"c{i}" for i in range(CLASSES)], data_config={"input_size": (3, *size)},
                    head_name=find_head(model))


def _vit(size=(32, 48), **kw) -> ZooModel:
    torch.manual_seed(0)
    args = {"img_size": size, "patch_size": 16, "embed_dim": 48, "num_heads": 3, "depth": 2, "num_classes": CLASSES,
            "qkv_bias": True, "init_values": 0.5, **kw}
    return _zoo(timm.create_model("vit_tiny_patch16_224", **args), size)


CASES = {
    "three blocks, oblong, LayerNorm eps 0.25": lambda: _vit(depth=3, norm_layer=partial(nn.LayerNorm, eps=0.25)),
    "head and projections without bias": lambda: _vit(proj_bias=False),
    "mean over every token, prefix included": lambda: _vit(depth=3, global_pool="avg", fc_norm=False,
                                                           pool_include_prefix=True, reg_tokens=1),
    "BEiT with shared relative and absolute positions": lambda: _zoo(timm.create_model(
        "beit_base_patch16_224", img_size=(32, 48), depth=2, num_classes=CLASSES, embed_dim=48, num_heads=3,
        mlp_ratio=2.0, use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=True), (32, 48)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_token_evidence_sums_to_the_logits_where_every_term_is_present(case):
    zm = CASES[case]()
    if "without bias" in case:
        zm.model.head = nn.Linear(48, CLASSES, bias=False)
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    dec = explain_tokens(zm, x)
    with torch.no_grad():
        want = zm.model(x)
    scale = 1.0 + float(want.abs().max())
    assert float((dec.logits - want).abs().max()) < 1e-4 * scale
    assert float((dec.evidence.sum((2, 3)) + dec.remainder + dec.bias - want).abs().max()) < 1e-4 * scale
    assert dec.evidence.shape == (2, CLASSES, 2, 3)
    assert float(dec.evidence.abs().sum((2, 3)).mean()) > 0.01      # the maps carry a share of the logits


def test_an_nhwc_patch_embedding_reads_its_grid_from_the_input_not_the_configured_size():
    zm = _vit(size=(48, 48), dynamic_img_size=True)
    x = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(5))
    dec = explain_tokens(zm, x)
    with torch.no_grad():
        want = zm.model(x)
    assert dec.evidence.shape == (2, CLASSES, 2, 4)
    assert float((dec.evidence.sum((2, 3)) + dec.remainder + dec.bias - want).abs().max()) < 1e-4 * (
        1.0 + float(want.abs().max()))


def test_a_vit_normalising_its_attention_output_is_refused():
    zm = _vit(scale_attn_norm=True)
    assert "gates or normalises the attention output" in token_evidence_supported(zm)


def test_a_beit_block_with_plain_attention_is_refused():
    from timm.layers.attention import Attention

    zm = CASES["BEiT with shared relative and absolute positions"]()
    zm.model.blocks[1].attn = Attention(48, num_heads=3, qkv_bias=True)
    assert "block 1 (Block) is not a BEiT pre-norm attention block" in token_evidence_supported(zm)


@pytest.mark.parametrize("attention, reason", [
    (lambda: nn.Identity(), "is not a torchvision pre-norm encoder block"),
    (lambda: nn.MultiheadAttention(48, 3, batch_first=False), "adds key/value biases or zero attention"),
    (lambda: nn.MultiheadAttention(48, 3, batch_first=True, add_bias_kv=True), "adds key/value biases"),
    (lambda: nn.MultiheadAttention(48, 3, batch_first=True, add_zero_attn=True), "zero attention"),
    (lambda: nn.MultiheadAttention(48, 3, batch_first=True, kdim=24, vdim=24), "separate q/k/v widths"),
])
def test_torchvision_blocks_whose_attention_the_decomposition_cannot_read_are_refused(attention, reason):
    from torchvision.models import VisionTransformer

    tv = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96,
                           num_classes=CLASSES)
    zm = _zoo(tv, (32, 32))
    zm.source = "torchvision"
    assert token_evidence_supported(zm) is None
    tv.encoder.layers[1].self_attention = attention()
    assert reason in token_evidence_supported(zm)


def test_a_head_with_large_logits_is_read_exactly_relative_to_its_scale():
    """Logits in the thousands: float rounding makes absolute differences of about 1e-4, a relative 1e-7."""
    zm = _vit(size=(32, 32))
    with torch.no_grad():
        zm.model.head.weight.mul_(1000.0)
        zm.model.head.bias.mul_(1000.0)
    assert token_evidence_supported(zm) is None
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    dec = explain_tokens(zm, x)
    with torch.no_grad():
        want = zm.model(x)
    assert float(want.abs().max()) > 1000
    assert float((dec.evidence.sum((2, 3)) + dec.remainder + dec.bias - want).abs().max()) < 1e-5 * float(
        want.abs().max())


def test_the_token_form_is_chosen_only_where_the_reading_is_checked_exact():
    from inspectnet.analysis.explain.exact_evidence import POOLED, TOKENS, evidence_form
    from inspectnet.models.zoo import load_model

    zm = _vit(size=(32, 32))
    assert evidence_form(zm) == TOKENS
    hook = zm.model.blocks[0].register_forward_hook(lambda _m, _i, out: out + 0.5)   # a block not computed as read
    try:
        assert "does not compute its tokens as read" in token_evidence_supported(zm)
        assert evidence_form(zm) == POOLED
    finally:
        hook.remove()
    assert evidence_form(load_model("resnet18", num_classes=3, input_size=32)) == POOLED


def test_a_pooled_head_refusal_names_the_token_forms_reason_only_where_there_is_one():
    from inspectnet.analysis.explain.evidence import pooled_head
    from inspectnet.analysis.explain.exact_evidence import pooled_evidence_head
    from inspectnet.core.errors import InspectnetError
    from inspectnet.models.zoo import load_model

    def refusal(zm):
        with pytest.raises(InspectnetError) as caught:
            pooled_evidence_head(zm)
        with pytest.raises(InspectnetError) as own:
            pooled_head(zm)
        return str(caught.value), str(own.value)

    got, own = refusal(_vit(size=(32, 32)))                      # the token form applies: the pooled reason alone
    assert got == own
    cnn = load_model("resnet18", num_classes=3, input_size=32)
    cnn.model.fc = nn.Sequential(nn.Linear(512, 8), nn.ReLU(), nn.Linear(8, 3))
    cnn.head_name = "fc"
    got, own = refusal(cnn)                                      # not a token model: the pooled reason alone
    assert got == own
    cait = _zoo(timm.create_model("cait_xxs24_224", depth=1, depth_token_only=1, img_size=32, num_classes=CLASSES),
                (32, 32))
    got, own = refusal(cait)
    assert got.startswith(own + "; ") and "class-attention layers (CaiT)" in got


def test_token_class_evidence_gives_the_top_class_by_default_and_its_offset_closes_the_sum():
    from inspectnet.analysis.explain.exact_evidence import TokenClassEvidence, token_class_evidence
    from inspectnet.analysis.explain.token_evidence import TokenEvidence
    from inspectnet.core.errors import InspectnetError

    zm = _vit(size=(32, 32))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    module = token_class_evidence(zm)
    logits, evidence, classes, remainder = module(x)
    assert evidence.shape == (2, 1, 2, 2) and torch.equal(classes[:, 0], logits.argmax(1))
    assert TokenClassEvidence(TokenEvidence(zm)).k == 1
    chosen = torch.tensor([[3, 1], [0, 4]])
    ev = module.evidence(x, chosen)
    assert torch.equal(ev.classes, chosen)
    closed = ev.maps.sum((2, 3)) + ev.offset
    assert float((closed - logits.gather(1, chosen)).abs().max()) < 1e-4 * (1 + float(logits.abs().max()))
    zm.model.blocks[0].register_forward_hook(lambda _m, _i, out: out + 0.5)
    with pytest.raises(InspectnetError, match="does not compute its tokens as read"):
        token_class_evidence(zm)
