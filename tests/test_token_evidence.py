"""Exact token evidence for transformer heads (ViT class token, registers and mean pooling, DeiT-distilled,
BEiT, torchvision's ViT): the maps and remainder sum to the logits, match a literal per-(layer, head,
token) transcription of the direct-effect decomposition, and hold in ONNX Runtime."""

import io
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from torch import nn

from inspectnet.analysis.explain import token_evidence as te
from inspectnet.analysis.explain.token_evidence import (
    TokenEvidence,
    explain_tokens,
    rank_components,
    remainder_share,
    token_evidence_supported,
)
from inspectnet.core.errors import InspectnetError
from inspectnet.models.zoo import ZooModel, find_head

SIZE = 48          # 3 × 3 patches of 16 px
CLASSES = 7


def _zoo(model: nn.Module) -> ZooModel:
    model.eval()
    return ZooModel(model=model, source="timm", arch=type(model).__name__, num_classes=CLASSES, in_chans=3,
                    class_names=[f"c{i}" for i in range(CLASSES)], data_config={"input_size": (3, SIZE, SIZE)},
                    head_name=find_head(model))


def _non_trivial(model: nn.Module, seed: int) -> nn.Module:
    """Every bias, LayerNorm γ/β, layer scale, token and relative position bias set to random non-zero
    values, and the heads made large, so no term of the decomposition is zero or negligible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.startswith("head"):
                p.copy_(noise)
            elif p.dim() == 1 or name.endswith(("_token", "pos_embed", "bias_table")):  # biases, γ, β, scales
                p.add_(noise * 0.3)
    return model.eval()


def _vit(**kw) -> ZooModel:
    torch.manual_seed(0)
    m = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, depth=2, num_classes=CLASSES, qkv_bias=True,
                          init_values=0.5, **kw)
    return _zoo(_non_trivial(m, 1))


def _deit() -> ZooModel:
    torch.manual_seed(0)
    m = timm.create_model("deit_tiny_distilled_patch16_224", img_size=SIZE, depth=2, num_classes=CLASSES)
    return _zoo(_non_trivial(m, 2))


def _beit() -> ZooModel:
    torch.manual_seed(0)
    m = timm.create_model("beit_base_patch16_224", img_size=SIZE, depth=2, num_classes=CLASSES, embed_dim=96,
                          num_heads=3, mlp_ratio=2.0)
    return _zoo(_non_trivial(m, 3))


def _torchvision_vit() -> ZooModel:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96,
                          num_classes=CLASSES)
    zm = _zoo(_non_trivial(m, 4))
    zm.source = "torchvision"
    return zm


FAMILIES = {"vit": _vit, "torchvision_vit": _torchvision_vit, "deit": _deit, "beit": _beit,
            "vit_registers": lambda: _vit(reg_tokens=2),
            "vit_avg_token_norm": lambda: _vit(global_pool="avg", fc_norm=False)}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    zm = FAMILIES[request.param]()
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    return request.param, zm, x, explain_tokens(zm, x)


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return float((a - b).abs().max()) <= rel * (1.0 + float(b.abs().max()))


def test_token_evidence_sums_to_the_models_own_logits(family):
    name, zm, x, dec = family
    with torch.no_grad():
        want = zm.model(x)
    assert dec.evidence.shape == (3, CLASSES, 3, 3) and dec.remainder.shape == (3, CLASSES)
    assert _close(dec.logits, want)
    assert _close(dec.evidence.sum((2, 3)) + dec.remainder + dec.bias, want)
    assert _close(sum(dec.parts.values()), dec.remainder)
    # no term is negligible: the maps and the remainder both carry a real share of the logits
    assert float(dec.evidence.abs().sum((2, 3)).mean()) > 0.05 and float(dec.remainder.abs().mean()) > 0.05
    assert float(dec.bias.abs().min()) > 0.0 and token_evidence_supported(zm) is None


def _family(model: nn.Module) -> str:
    if type(model).__module__.startswith("torchvision."):
        return "torchvision"
    return "beit" if "Beit" in type(model).__name__ else "vit"


def _model_view(model: nn.Module) -> SimpleNamespace:
    """The model's blocks, final norms, prefix tokens and heads (name, ρ as a function of N, factor)."""
    if _family(model) == "torchvision":
        return SimpleNamespace(blocks=list(model.encoder.layers), norm=model.encoder.ln, fc=None, prefix=1,
                               readouts=lambda n: [("heads.head", {0: 1.0}, 1.0)])
    p = model.num_prefix_tokens
    if getattr(model, "head_dist", None) is not None:
        readouts = lambda n: [("head", {0: 1.0}, 0.5), ("head_dist", {1: 1.0}, 0.5)]  # noqa: E731
    elif model.global_pool == "token":
        readouts = lambda n: [("head", {0: 1.0}, 1.0)]  # noqa: E731
    else:
        readouts = lambda n: [("head", {t: 1.0 / (n - p) for t in range(p, n)}, 1.0)]  # noqa: E731
    fc = model.fc_norm if isinstance(model.fc_norm, nn.LayerNorm) else None
    return SimpleNamespace(blocks=list(model.blocks), norm=model.norm, fc=fc, prefix=p, readouts=readouts)


def _block_view(fam: str, blk: nn.Module, shared) -> SimpleNamespace:
    """One block's weights by role, read from its own modules (the layer scales as vectors or 1)."""
    if fam == "torchvision":
        mha = blk.self_attention
        return SimpleNamespace(norm1=blk.ln_1, w=mha.in_proj_weight, b=mha.in_proj_bias, heads=mha.num_heads,
                               scale=mha.head_dim ** -0.5, proj=mha.out_proj, ls1=1.0, ls2=1.0, norm2=blk.ln_2,
                               rel=None, attend=lambda n1: mha(n1, n1, n1, need_weights=False)[0])
    attn = blk.attn
    if fam == "beit":
        return SimpleNamespace(norm1=blk.norm1, w=attn.qkv.weight, b=torch.cat((attn.q_bias, attn.k_bias, attn.v_bias)),
                               heads=attn.num_heads, scale=attn.scale, proj=attn.proj, ls1=blk.gamma_1,
                               ls2=blk.gamma_2, norm2=blk.norm2, attend=lambda n1: attn(n1, shared_rel_pos_bias=shared),
                               rel=attn._get_rel_pos_bias()[0] + (shared[0] if shared is not None else 0.0))
    return SimpleNamespace(norm1=blk.norm1, w=attn.qkv.weight, b=attn.qkv.bias, heads=attn.num_heads, scale=attn.scale,
                           proj=attn.proj, ls1=getattr(blk.ls1, "gamma", 1.0), ls2=getattr(blk.ls2, "gamma", 1.0),
                           norm2=blk.norm2, rel=None, attend=attn)


def _literal_terms(zm: ZooModel, x: torch.Tensor) -> tuple[list, list, torch.Tensor]:
    """Every term written into the read tokens' residual streams, for one image, one at a time.

    Returns (terms, readouts, real final stream): a term is (kind, read token t, source, vector); source
    is a patch index (0-based over patches) or None (not attributable to a patch).
    """
    model, fam = zm.model, _family(zm.model)
    view = _model_view(model)
    p = view.prefix
    seen = {}
    hooks = [blk.register_forward_pre_hook(lambda mod, a, i=i: seen.__setitem__(i, a[0][0].detach()))
             for i, blk in enumerate(view.blocks)]
    hooks.append(view.norm.register_forward_pre_hook(lambda mod, a: seen.__setitem__("final", a[0][0].detach())))
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    n = seen[0].shape[0]
    readouts = view.readouts(n)
    read = sorted({t for _, rho, _ in readouts for t in rho})
    shared = model.rel_pos_bias() if isinstance(getattr(model, "rel_pos_bias", None), nn.Module) else None
    terms = [("emb", t, t - p if t >= p else None, seen[0][t]) for t in read]
    for layer, blk in enumerate(view.blocks):
        stream, bv = seen[layer], _block_view(fam, blk, shared)
        n1 = bv.norm1(stream)
        q, k, v = (n1 @ bv.w.T + bv.b).chunk(3, dim=-1)
        dh = q.shape[1] // bv.heads
        for h in range(bv.heads):
            sl = slice(h * dh, (h + 1) * dh)
            for t in read:
                scores = torch.stack([(q[t, sl] @ k[j, sl]) * bv.scale for j in range(n)])
                if bv.rel is not None:
                    scores = scores + bv.rel[h, t]
                a = torch.softmax(scores, 0)
                for j in range(n):
                    vec = bv.ls1 * (bv.proj.weight[:, sl] @ (a[j] * v[j, sl]))
                    terms.append((("attn", layer, h), t, j - p if j >= p else None, vec))
        mid = stream + bv.ls1 * bv.attend(n1[None])[0]
        mlp = bv.ls2 * blk.mlp(bv.norm2(mid))
        for t in read:
            terms.append((("bias", layer), t, None, bv.ls1 * bv.proj.bias))
            terms.append((("mlp", layer), t, t - p if t >= p else None, mlp[t]))
    return terms, readouts, seen["final"]


class _Reader:
    """One term τ on read token t, as the head reads it: (τ − mean τ)·γ/σ_t per token, ×ρ_t, then the
    pooled norm's centring and γ/σ, then W (the scales σ taken from this image's real final stream)."""

    def __init__(self, w, rho, final, norm, fc, pooled):
        self.w, self.rho, self.norm, self.fc = w, rho, norm, fc
        self.sigma = {t: torch.sqrt(final[t].var(unbiased=False) + norm.eps) for t in rho} if norm else None
        self.sigma_pool = torch.sqrt(pooled.var(unbiased=False) + fc.eps) if fc else None

    def __call__(self, vec, t, centred=True):
        if self.norm is not None and centred:
            vec = (vec - vec.mean()) * self.norm.weight / self.sigma[t]
        vec = self.rho[t] * vec
        if self.fc is not None:
            vec = (vec - vec.mean()) * self.fc.weight / self.sigma_pool
        return self.w @ vec


def _literal(zm: ZooModel, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Logits, evidence (C, Np), remainder (C,) and bias of the first image, transcribed term by term."""
    model, view = zm.model, _model_view(zm.model)
    terms, readouts, final = _literal_terms(zm, x)
    norm = view.norm if isinstance(view.norm, nn.LayerNorm) else None
    fc = view.fc
    npatch = final.shape[0] - view.prefix
    evidence = torch.zeros(CLASSES, npatch)
    remainder, logits, bias = torch.zeros(CLASSES), torch.zeros(CLASSES), torch.zeros(CLASSES)
    for t in range(final.shape[0]):  # the terms rebuild the real final stream of every read token
        parts = [vec for _, tok, _, vec in terms if tok == t]
        if parts:
            assert _close(sum(parts), final[t])
    for head_name, rho, factor in readouts:
        head = model.get_submodule(head_name)
        pooled = sum(rho[t] * (norm(final[t]) if norm else final[t]) for t in rho)
        reader = _Reader(head.weight * factor, rho, final, norm, fc, pooled)
        for _, t, source, vec in terms:
            if t in rho:
                if source is None:
                    remainder += reader(vec, t)
                else:
                    evidence[:, source] += reader(vec, t)
        if norm is not None:  # β of the per-token norm: added after its centring and scaling
            for t in rho:
                remainder += reader(norm.bias, t, centred=False)
        if fc is not None:
            remainder += factor * (head.weight @ fc.bias)
        logits += factor * head(fc(pooled) if fc else pooled)
        bias += factor * head.bias
    return logits, evidence, remainder, bias


def test_token_evidence_matches_a_literal_per_layer_head_token_transcription(family):
    name, zm, x, dec = family
    with torch.no_grad():
        logits, evidence, remainder, bias = _literal(zm, x)
    assert _close(evidence.sum(1) + remainder + bias, logits)
    assert _close(logits, dec.logits[0]) and _close(bias, dec.bias)
    assert _close(evidence, dec.evidence[0].flatten(1))
    assert _close(remainder, dec.remainder[0])


def test_head_mlp_and_embedding_effects_add_up_to_the_logits(family):
    """Each head's direct effect (all sources) + each MLP's + the embeddings' + the constants = logit − b."""
    name, zm, x, dec = family
    assert dec.heads.shape == (3, 2, 3, CLASSES) and dec.mlps.shape == (3, 2, CLASSES)
    total = dec.heads.sum((1, 2)) + dec.mlps.sum(1) + dec.embeddings + dec.parts["constant"]
    assert _close(total, dec.logits - dec.bias)
    assert float(dec.heads.abs().min()) > 0.0 and float(dec.mlps.abs().min()) > 0.0


def test_rankings_order_layers_and_heads_by_their_share_of_the_predicted_class(family):
    name, zm, x, dec = family
    ranked = rank_components(dec)
    c = dec.logits.argmax(1)
    rows = torch.arange(3)
    per_head = dec.heads[rows, :, :, c].mean(0)
    assert len(ranked["heads"]) == per_head.numel() and len(ranked["layers"]) == per_head.shape[0]
    best = ranked["heads"][0]
    assert abs(best["contribution"]) == pytest.approx(float(per_head.abs().max()), rel=1e-6)
    assert best["contribution"] == pytest.approx(float(per_head[best["layer"], best["head"]]), rel=1e-6)
    sizes = [abs(e["total"]) for e in ranked["layers"]]
    assert sizes == sorted(sizes, reverse=True)
    for e in ranked["layers"]:
        assert e["total"] == pytest.approx(e["attention"] + e["mlp"], rel=1e-5, abs=1e-6)
        assert e["mlp"] == pytest.approx(float(dec.mlps[rows, e["layer"], c].mean()), rel=1e-5, abs=1e-6)
    assert len(rank_components(dec, classes=torch.tensor([6, 5, 4]), top=2)["heads"]) == 2


def test_remainder_share_is_the_remainders_part_of_the_absolute_mass():
    evidence = torch.tensor([[[[1.0, -2.0]], [[0.5, 0.5]]]])                    # (1, 2 classes, 1, 2)
    dec = te.TokenDecomposition(logits=torch.tensor([[0.0, 5.0]]), evidence=evidence,
                                remainder=torch.tensor([[3.0, -1.0]]), bias=torch.zeros(2), parts={},
                                heads=torch.zeros(1, 1, 1, 2), mlps=torch.zeros(1, 1, 2), embeddings=torch.zeros(1, 2))
    assert remainder_share(dec).tolist() == pytest.approx([1.0 / (1.0 + 1.0)])        # predicted class 1
    assert remainder_share(dec, torch.tensor([0])).tolist() == pytest.approx([3.0 / (3.0 + 3.0)])
    with pytest.raises(InspectnetError, match="0..1"):
        remainder_share(dec, torch.tensor([2]))


def test_invariant_fails_when_the_layernorm_mean_is_not_subtracted(monkeypatch):
    """The sum check can fail: without the mean subtraction moved onto the head, the maps no longer add up."""
    zm = _vit()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(te, "_centre", lambda w: w)
    dec = explain_tokens(zm, x)
    assert not _close(dec.total(), dec.logits)
    assert "evidence sums" in token_evidence_supported(zm)


@pytest.mark.parametrize("make", [_vit, _deit, _beit, _torchvision_vit], ids=["vit", "deit", "beit", "torchvision"])
def test_onnx_runtime_gives_the_same_three_outputs_and_they_sum_to_the_logits(make):
    from inspectnet.runtime.classifier import make_session

    zm = make()
    module = TokenEvidence(zm).eval()
    names = ["logits", "evidence", "remainder"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 3, SIZE, SIZE),), buf, dynamo=False, input_names=["input"],
                          output_names=names, dynamic_axes={k: {0: "batch"} for k in ["input", *names]},
                          opset_version=17)
    session = make_session(buf.getvalue())
    bias = module.bias().detach().numpy()
    for batch in (1, 3):
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
        got = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            want = module(x)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape)
            assert np.abs(g - w.numpy()).max() <= 1e-4 * (1 + np.abs(w.numpy()).max())
        logits, evidence, remainder = got
        assert np.abs(evidence.sum((2, 3)) + remainder + bias - logits).max() <= 1e-4 * (1 + np.abs(logits).max())


def _refused(name: str, **kw) -> str | None:
    return token_evidence_supported(_zoo(timm.create_model(name, num_classes=CLASSES, **kw)))


def test_unsupported_heads_and_blocks_are_refused_naming_the_property():
    from timm.models.vision_transformer import ResPostBlock

    assert "class-attention layers (CaiT)" in _refused("cait_xxs24_224", depth=1, depth_token_only=1, img_size=SIZE)
    assert "channels-last map (Swin)" in _refused("swin_tiny_patch4_window7_224", depths=(1, 1), num_heads=(1, 2),
                                                  embed_dim=16, img_size=32, window_size=4)
    tiny = {"depth": 1, "img_size": SIZE}
    assert "pools its tokens with attention" in _refused("vit_tiny_patch16_224", global_pool="map", **tiny)
    assert "'max' pooling" in _refused("vit_tiny_patch16_224", global_pool="max", **tiny)
    assert "post-norm blocks" in _refused("vit_tiny_patch16_224", block_fn=ResPostBlock, **tiny)
    assert "rotary position embeddings" in _refused("eva02_tiny_patch14_224", depth=1, img_size=28)
    assert "timm.models.resnet.ResNet, not a ViT, DeiT or BEiT" in _refused("resnet18")
    from torchvision.models import VisionTransformer

    tv = VisionTransformer(image_size=SIZE, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8,
                           num_classes=CLASSES, representation_size=4)
    assert "hidden tanh layer (pre_logits)" in token_evidence_supported(_zoo(tv))
    zm = _vit()
    zm.model.norm = nn.RMSNorm(192)
    assert "RMSNorm (norm), not a LayerNorm" in token_evidence_supported(zm)
    zm = _vit()
    zm.model.head = nn.Sequential(nn.Linear(192, 8), nn.ReLU(), nn.Linear(8, CLASSES))
    reason = token_evidence_supported(zm)
    assert "Sequential classifier, not a linear layer" in reason and "\n" not in reason
    with pytest.raises(InspectnetError, match="refused"):
        TokenEvidence(zm)


def test_decomposed_and_gathered_heads_keep_the_evidence_exact():
    """A decomposed head (class c reads only its support) and its export form (gather + Linear) are read as
    the affine maps they are: the sums still equal the model's logits."""
    from inspectnet.models.heads import DecomposedLinear

    zm = _vit()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    mask = torch.rand(CLASSES, 192, generator=torch.Generator().manual_seed(7)) < 0.2
    decomposed = DecomposedLinear.from_linear(zm.model.head, mask)
    for head in (decomposed, decomposed.to_gathered()):
        zm.model.head = head
        dec = explain_tokens(zm, x)
        with torch.no_grad():
            want = zm.model(x)
        assert _close(dec.logits, want) and _close(dec.total(), want)
        assert token_evidence_supported(zm) is None
