import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from inspectnet import InspectnetError, load_data, load_model, save_model
from inspectnet.analysis.heads.decompose import (
    class_contributions,
    decompose_head,
    decompose_model,
    evaluate_decomposition,
    gathered_logits,
    linear_params,
    noise_ablation,
    retrain_head,
    top_contributions,
)
from inspectnet.analysis.heads.influence import InfluenceMap, fit_influence
from inspectnet.cli import main
from inspectnet.models.heads import DecomposedLinear
from inspectnet.pipelines.decompose import run_decomposition
from inspectnet.probe.recorder import run_probe


def random_map(c, d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    sup = [sorted(torch.randperm(d, generator=g)[:k].tolist()) for _ in range(c)]
    return InfluenceMap.full(c, d, k1=k, k2=k, supports=sup, frequencies=[[1.0] * k for _ in sup])


def test_full_supports_equal_dense_head_exactly():
    torch.manual_seed(0)
    head = nn.Linear(64, 7)
    dec = decompose_head(head, InfluenceMap.full(7, 64))
    x = torch.randn(33, 64)
    assert torch.equal(dec(x), head(x))


def test_masked_forward_is_the_formula_and_gathered_form_agrees():
    torch.manual_seed(1)
    head = nn.Linear(50, 6)
    imap = random_map(6, 50, 4)
    dec = decompose_head(head, imap)
    x = torch.randn(20, 50)
    ref = gathered_logits(x, head.weight, head.bias, imap.supports)
    torch.testing.assert_close(dec(x), ref, rtol=0, atol=1e-5)
    # each class really ignores the features outside its support
    x2 = x.clone()
    off = [j for j in range(50) if j not in imap.supports[2]]
    x2[:, off] = torch.randn(20, len(off))
    assert torch.allclose(dec(x2)[:, 2], dec(x)[:, 2], atol=1e-5)
    assert dec.supports() == imap.supports and dec.macs() == 24
    meta = dec.decomposition()
    assert meta["indices"] == imap.supports
    assert meta["weights"][3] == pytest.approx(head.weight[3, imap.supports[3]].tolist())
    gathered = dec.to_gathered()
    assert gathered[1].in_features == len(imap.union())
    torch.testing.assert_close(gathered(x), dec(x), rtol=0, atol=1e-5)


def test_off_support_weights_are_zero_and_stay_zero_when_retrained():
    torch.manual_seed(2)
    # separable synthetic features: class c is marked by feature 3c
    y = torch.randint(0, 4, (400,))
    f = torch.randn(400, 16) * 0.3
    f[torch.arange(400), 3 * y] += 2.0
    head = nn.Linear(16, 4)
    imap = InfluenceMap.full(4, 16, supports=[[3 * c, 3 * c + 1] for c in range(4)],
                             frequencies=[[1.0, 1.0]] * 4)
    dec = decompose_head(head, imap)
    off = ~dec.mask
    assert (dec.weight[off] == 0).all()
    before = (dec(f).argmax(1) == y).float().mean()
    retrain_head(dec, f.numpy(), y.numpy(), epochs=3, lr=0.1)
    after = (dec(f).argmax(1) == y).float().mean()
    assert (dec.weight[off] == 0).all() and after > 0.95 and after >= before
    assert not torch.equal(dec.weight[~off], head.weight[~off])


def test_contributions_sum_to_logits():
    torch.manual_seed(3)
    head = nn.Linear(10, 3)
    f = torch.randn(5, 10)
    contrib = class_contributions(head, f)
    assert contrib.shape == (5, 3, 10)
    torch.testing.assert_close(contrib.sum(-1) + head.bias, head(f).detach())
    assert contrib[2, 1, 4] == pytest.approx(float(head.weight[1, 4].detach() * f[2, 4]))


def test_non_linear_head_is_refused_by_name():
    zm = load_model("resnet18", num_classes=4, in_chans=1, input_size=16)
    zm.model.fc = nn.Sequential(nn.Linear(512, 4))
    with pytest.raises(InspectnetError, match="head module 'fc'"):
        decompose_model(zm, InfluenceMap.full(4, 512))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    tmp = tmp_path_factory.mktemp("dec")
    tr = run_probe(zm, load_data("digits:train", zm.transform()), "layer4", tmp / "train", limit=150, batch_size=75)
    te = run_probe(zm, load_data("digits:test", zm.transform()), "layer4", tmp / "test", limit=80, batch_size=80)
    return zm, tr, te, tmp


def test_evaluation_full_map_and_hand_counts(setup):
    zm, tr, te, _ = setup
    w, b = linear_params(zm.head)
    full = evaluate_decomposition(w, b, InfluenceMap.full(10, 512), te)
    assert full["accuracy_decomposed"] == full["accuracy_full"] == pytest.approx(te.accuracy())
    assert full["agreement"] == 1.0 and full["recorded_logits_max_abs_diff"] < 1e-4
    imap = fit_influence(tr, 5, 3)
    ev = evaluate_decomposition(w, b, imap, te)
    assert ev["head_macs_full"] == 5120 and ev["head_macs_decomposed"] == sum(map(len, imap.supports))
    assert ev["union_size"] == len(imap.union()) and ev["head_macs_gathered_dense"] == 10 * ev["union_size"]
    labels = np.asarray(te.labels)
    logits = np.asarray(te.features, dtype=np.float64) @ (w * imap.mask()).numpy().T + b.numpy()
    assert ev["accuracy_decomposed"] == pytest.approx((logits.argmax(1) == labels).mean())
    c = int(labels[0])
    assert ev["per_class_accuracy_decomposed"][c] == pytest.approx((logits.argmax(1)[labels == c] == c).mean())


def test_noise_ablation_is_seeded_and_counts_match(setup):
    zm, tr, te, _ = setup
    w, b = linear_params(zm.head)
    imap = fit_influence(tr, 5, 5)
    a = noise_ablation(w, b, imap, te, seed=3)
    assert a == noise_ablation(w, b, imap, te, seed=3)
    assert a["num_influential"] == a["num_non_influential"] == len(imap.union())
    assert 0 <= a["influential"] <= 1 and 0 <= a["non_influential"] <= 1
    assert "decomposed_head" not in a  # noise outside S_c cannot reach a decomposed head: not an ablation


def test_decomposed_model_saves_loads_and_predicts(setup, tmp_path):
    zm, tr, _, _ = setup
    imap = fit_influence(tr, 5, 5)
    dzm = decompose_model(zm, imap)
    assert isinstance(dzm.head, DecomposedLinear) and not isinstance(zm.head, DecomposedLinear)
    save_model(dzm, tmp_path / "m")
    back = load_model(str(tmp_path / "m"))
    assert isinstance(back.head, DecomposedLinear) and back.head.supports() == [sorted(s) for s in imap.supports]
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(back.model(x), dzm.model(x))
    top = top_contributions(back, x, k=3)
    assert len(top) == 4 and all(t["top"][0]["feature"] in imap.supports[t["class"]] or
                                 t["top"][0]["contribution"] == 0 for t in top)
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype("uint8")).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "a.png"), "--topk", "2"]) == 0


def test_fingerprint_mismatch_refused(setup, tmp_path):
    zm, tr, te, _ = setup
    other = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    rec = run_probe(other, load_data("digits:test", other.transform()), "layer4", tmp_path / "o", limit=8)
    with pytest.raises(InspectnetError, match="different models"):
        run_decomposition(tr, rec, tmp_path / "out", zm=zm)
    with pytest.raises(InspectnetError, match="pass the model the records were probed with"):
        run_decomposition(tr, te, tmp_path / "out", zm=other)


def test_command_writes_decomposition_json(setup, tmp_path, capsys):
    zm, tr, te, tmp = setup
    save_model(zm, tmp / "model")
    out = tmp_path / "d"
    rc = main(["decompose", "--fit", str(tr.root), "--eval", str(te.root), "--k1", "5", "--k2", "4",
               "--model", str(tmp / "model"), "--out", str(out), "--retrain-epochs", "1", "--slim",
               "--sweep-k", "2,5", "--data", "digits:test", "--limit", "40"])
    assert rc == 0 and "rA=" in capsys.readouterr().out
    doc = json.loads((out / "decomposition.json").read_text())
    for key in ("k1", "k2", "num_classes", "supports", "accuracy_full", "accuracy_decomposed", "rA",
                "agreement", "union_size", "head_macs_full", "head_macs_decomposed", "noise_ablation",
                "accuracy_retrained"):
        assert key in doc, key
    assert set(doc["noise_ablation"]) >= {"influential", "non_influential"}
    assert doc["k2"] == 4 and len(doc["supports"]) == 10
    assert doc["slim"]["logits_max_abs_diff"] < 1e-4 and doc["slim"]["method"] == "resnet"
    assert (out / "sweep.png").stat().st_size > 1000 and "| 5 | 2 |" in (out / "sweep.md").read_text()
    slim = load_model(str(out / "slim_model"))
    assert slim.head.in_features == doc["union_size"]
    assert main(["decompose", "--fit", str(tr.root), "--eval", str(te.root), "--k1", "3", "--k2", "5",
                 "--model", str(tmp / "model"), "--out", str(tmp_path / "e")]) == 2
    assert "--k2 5 is larger than --k1 3" in capsys.readouterr().err


def test_classes_without_fitting_data_keep_dense_rows_counted_in_the_macs(tmp_path):
    from inspectnet.analysis.heads.decompose import class_feature_means, mean_contributions

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=12, in_chans=1, input_size=16, class_names=[str(i) for i in range(12)])
    rec = run_probe(zm, load_data("digits:train", zm.transform()), "layer4", tmp_path / "r", limit=60)
    imap = fit_influence(rec, k1=3, k2=3)
    assert imap.empty_classes == [10, 11]
    dec = decompose_head(zm.head, imap)
    x = torch.randn(5, 512)
    assert torch.equal(dec(x)[:, 10:], zm.head(x)[:, 10:]) and not torch.equal(dec(x)[:, :10], zm.head(x)[:, :10])
    meta = dec.decomposition()
    assert meta["dense_classes"] == [10, 11] and meta["indices"][11] is None and meta["indices"][0] == imap.supports[0]
    w, b = linear_params(zm.head)
    ev = evaluate_decomposition(w, b, imap, rec)
    assert ev["dense_classes"] == 2 and ev["features_used"] == 512 and ev["union_size"] == len(imap.union()) < 512
    assert ev["head_macs_decomposed"] == sum(len(s) for s in imap.supports) + 2 * 512 == dec.macs()
    assert ev["per_class_accuracy_full"][10] is None and ev["among_fitted_classes"]["num_classes"] == 10
    assert ev["among_fitted_classes"]["samples"] == 60
    # a head that never gets a sample right has no rA: None and the reason, never NaN
    b_wrong = b.clone()
    b_wrong[11] = 1e9
    ev0 = evaluate_decomposition(w, b_wrong, imap, rec)
    assert ev0["accuracy_full"] == 0.0 and ev0["rA"] is None and ev0["rA_undefined"].startswith("A_f = 0")
    # per-class mean contributions from float64 class sums equal the mean of the exact per-sample ones
    means, counts = class_feature_means(rec, 12)
    labels = np.asarray(rec.labels)
    assert counts.tolist() == np.bincount(labels, minlength=12).tolist()
    got = mean_contributions(w, means, imap.supports)
    per_sample = class_contributions(zm.head, torch.from_numpy(np.array(rec.features)))
    for c in range(10):
        ref = per_sample[labels == c, c].double().mean(0)[imap.supports[c]]
        np.testing.assert_allclose(got[c], ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lr, kept", [(1e4, "model"), (1e-9, "retrained_model")])
def test_the_better_of_retrained_and_unretrained_head_is_kept_and_named(setup, tmp_path, lr, kept):
    """A retraining that lowers A_d (a huge step) keeps the un-retrained head; one that changes nothing
    (a tiny step) keeps the retrained one. Both are saved; model_dir names the kept one."""
    zm, tr, te, _ = setup
    doc = run_decomposition(tr, te, tmp_path / "d", zm=zm, retrain_epochs=1, retrain_lr=lr)
    assert (tmp_path / "d" / "model").is_dir() and (tmp_path / "d" / "retrained_model").is_dir()
    assert doc["model_dir"] == str(tmp_path / "d" / kept)
    if kept == "model":
        assert doc["accuracy_retrained"] < doc["accuracy_decomposed"] and "lowered" in doc["model_choice"]
        assert doc["model_form"] == "decomposed head"
    else:
        assert doc["accuracy_retrained"] >= doc["accuracy_decomposed"] and "retrained 1 epochs" in doc["model_form"]
    kept_model = load_model(doc["model_dir"])
    weight, bias = linear_params(kept_model.head)
    imap = InfluenceMap.load(tmp_path / "d" / "influence.json")
    assert evaluate_decomposition(weight, bias, imap, te)["accuracy_decomposed"] == \
        max(doc["accuracy_retrained"], doc["accuracy_decomposed"])


@pytest.fixture(scope="module")
def centroid_setup(tmp_path_factory):
    """A random ResNet-18 whose head is the nearest-centroid classifier of its own digit features (weights the
    class means, biases −½‖mean‖², all non-zero): the full head is right on many eval samples, a 3-feature
    decomposition on fewer but not none (0 < A_d < A_f)."""
    from inspectnet.analysis.heads.decompose import class_feature_means

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    tmp = tmp_path_factory.mktemp("centroid")
    first = run_probe(zm, load_data("digits:train", zm.transform()), "layer4", tmp / "first", limit=200, batch_size=100)
    means, _ = class_feature_means(first, 10)
    with torch.no_grad():
        zm.head.weight.copy_(means.float())
        zm.head.bias.copy_(-0.5 * (means.float() ** 2).sum(1))
    tr = run_probe(zm, load_data("digits:train", zm.transform()), "layer4", tmp / "train", limit=200, batch_size=100)
    te = run_probe(zm, load_data("digits:test", zm.transform()), "layer4", tmp / "test", limit=120, batch_size=120)
    return zm, tr, te


def test_retention_is_decomposed_over_full_accuracy_on_a_real_decomposition(centroid_setup, tmp_path):
    zm, tr, te = centroid_setup
    doc = run_decomposition(tr, te, tmp_path / "d", zm=zm, k1=3, k2=3)
    labels = np.asarray(te.labels)
    w, b = (t.double().numpy() for t in linear_params(zm.head))
    feats = np.asarray(te.features, dtype=np.float64)
    mask = np.zeros_like(w)
    for c, s in enumerate(doc["supports"]):
        mask[c, s] = 1.0
    a_f = ((feats @ w.T + b).argmax(1) == labels).mean()
    a_d = ((feats @ (w * mask).T + b).argmax(1) == labels).mean()
    assert 0 < a_d < a_f and np.abs(b).min() > 0                 # the case where A_d / A_f and A_f / A_d differ
    assert doc["accuracy_full"] == pytest.approx(a_f) and doc["accuracy_decomposed"] == pytest.approx(a_d)
    assert doc["rA"] == pytest.approx(a_d / a_f) and doc["rA"] < 1
    assert doc["agreement"] == pytest.approx(((feats @ w.T + b).argmax(1) == (feats @ (w * mask).T + b).argmax(1)).mean())


def test_among_fitted_accuracy_maps_back_to_classes_that_are_not_the_first_ones(tmp_path):
    """Data of classes 1 and 3 of a 4-class head (0 and 2 have no fitting data, dense rows): the top-1 among the
    fitted classes is taken over logits 1 and 3 and must name class 1 or 3, not positions 0 or 1."""
    from tests.test_rules import write_record

    rng = np.random.default_rng(0)
    labels = np.repeat([1, 3], 30)
    feats = rng.normal(size=(60, 6))
    feats[labels == 1, 0] += 3.0
    feats[labels == 3, 1] += 3.0
    w = rng.normal(size=(4, 6)) * 0.3
    w[1, 0], w[3, 1] = 2.0, 2.0
    w[[0, 2], 2] = 4.0                                        # the dense rows win the top-1 over all classes often
    b = np.array([0.5, -0.2, 0.4, 0.1])
    logits = feats @ w.T + b
    rec = write_record(tmp_path / "r", {"pre_logits": feats}, logits, labels, list("abcd"))
    imap = fit_influence(rec, k1=2, k2=2)
    assert imap.empty_classes == [0, 2]
    ev = evaluate_decomposition(torch.from_numpy(w), torch.from_numpy(b), imap, rec)
    fitted = np.array([1, 3])
    mask = imap.mask().numpy()
    full_pred = fitted[logits[:, fitted].argmax(1)]
    dec_pred = fitted[(feats @ (w * mask).T + b)[:, fitted].argmax(1)]
    among = ev["among_fitted_classes"]
    assert among["samples"] == 60 and among["num_classes"] == 2
    assert among["accuracy_full"] == pytest.approx((full_pred == labels).mean()) and among["accuracy_full"] > 0.8
    assert among["accuracy_decomposed"] == pytest.approx((dec_pred == labels).mean())
    assert among["rA"] == pytest.approx(among["accuracy_decomposed"] / among["accuracy_full"])
    assert ev["accuracy_full"] == pytest.approx((logits.argmax(1) == labels).mean())
    assert ev["accuracy_full"] < among["accuracy_full"]
