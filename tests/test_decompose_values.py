"""The decomposition's numbers on hand-made records (features, labels and logits written out here): A_f, A_d, rA,
agreement, per-class accuracy, MACs, the noise ablation's seeded draws, per-class feature means, top contributions."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inspectnet.analysis.heads.decompose import (
    class_feature_means,
    evaluate_decomposition,
    mean_contributions,
    noise_ablation,
    top_contributions,
)
from inspectnet.analysis.heads.influence import InfluenceMap
from inspectnet.models.zoo import load_model

# 3 classes x 4 features; class c's support S_c below. Bias favours class 2 a little.
W = torch.tensor([[2.0, 0.0, 1.0, 0.0],
                  [0.0, 3.0, 0.0, -1.0],
                  [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
B = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
SUPPORTS = [[0], [1], [3]]
F = np.array([[1.0, 0.0, 0.0, 0.0],     # full: [2, 0, 1.5] -> 0; decomposed: [2, 0, 0.5] -> 0
              [0.0, 1.0, 0.0, 0.0],     # full: [0, 3, 1.5] -> 1; decomposed: [0, 3, 0.5] -> 1
              [0.0, 0.0, 1.0, 0.0],     # full: [1, 0, 1.5] -> 2; decomposed: [0, 0, 0.5] -> 2
              [0.0, 0.0, 2.0, 0.0],     # full: [2, 0, 2.5] -> 2; decomposed: [0, 0, 0.5] -> 2, label 0
              [0.0, 0.0, 0.0, 1.0],     # full: [0, -1, 2.5] -> 2; decomposed: [0, 0, 1.5] -> 2
              [1.0, 0.0, 3.0, 0.0]])    # full: [5, 0, 4.5] -> 0; decomposed: [2, 0, 0.5] -> 0, label 2
LABELS = np.array([0, 1, 2, 0, 2, 2])


def _record(features=F, labels=LABELS, weight=W, bias=B):
    logits = np.asarray(features, np.float64) @ weight.numpy().T + bias.numpy()
    return SimpleNamespace(features=np.asarray(features, np.float32), labels=labels, logits=logits.astype(np.float32),
                           root="hand-made")


def _imap(supports=SUPPORTS, empty=()):
    return InfluenceMap.full(3, 4, k1=1, k2=1, supports=supports, frequencies=[[1.0] * len(s) for s in supports],
                             empty_classes=list(empty))


def test_accuracies_retention_and_macs_of_a_hand_made_decomposition():
    ev = evaluate_decomposition(W, B, _imap(), _record())
    # full predictions 0, 1, 2, 2, 2, 0 against labels 0, 1, 2, 0, 2, 2: 4 of 6
    assert ev["accuracy_full"] == pytest.approx(4 / 6)
    # decomposed 0, 1, 2, 2, 2, 0 too: the same
    assert ev["accuracy_decomposed"] == pytest.approx(4 / 6) and ev["rA"] == pytest.approx(1.0)
    assert ev["agreement"] == 1.0
    assert ev["per_class_accuracy_full"] == pytest.approx([1 / 2, 1.0, 2 / 3])
    assert ev["head_macs_full"] == 12 and ev["head_macs_decomposed"] == 3 and ev["head_macs_gathered_dense"] == 9
    assert ev["features_used"] == 3 and ev["union_size"] == 3 and ev["feature_dim"] == 4 and ev["dense_classes"] == 0
    assert ev["recorded_logits_max_abs_diff"] < 1e-6


def test_retention_below_one_where_the_decomposed_head_loses_samples():
    """S = {2}, {1}, {3}: decomposed predictions 2, 1, 0, 0, 2, 0 against labels 0, 1, 2, 0, 2, 2 (3 of 6; the full
    head has 4 of 6): 0 < A_d < A_f, rA = 3/4, agreement 3/6."""
    labels = LABELS
    imap = _imap([[2], [1], [3]])
    rec = _record(labels=labels)
    ev = evaluate_decomposition(W, B, imap, rec)
    masked = W * imap.mask().double()
    pd = (torch.from_numpy(F) @ masked.T + B).argmax(1).numpy()
    pf = (torch.from_numpy(F) @ W.T + B).argmax(1).numpy()
    a_f, a_d = (pf == labels).mean(), (pd == labels).mean()
    assert (a_f, a_d) == (4 / 6, 3 / 6)
    assert ev["accuracy_full"] == pytest.approx(a_f) and ev["accuracy_decomposed"] == pytest.approx(a_d)
    assert ev["rA"] == pytest.approx(0.75) and ev["agreement"] == pytest.approx((pf == pd).mean())
    assert ev["per_class_accuracy_decomposed"] == pytest.approx([((pd == c) & (labels == c)).sum() / (labels == c).sum()
                                                                 for c in range(3)])


def test_a_class_without_eval_samples_has_no_per_class_accuracy():
    ev = evaluate_decomposition(W, B, _imap(), _record(F[:3], np.array([0, 0, 2])))
    assert ev["per_class_accuracy_full"] == [1 / 2, None, 1.0]


def test_noise_ablation_is_the_seeded_replacement_written_out():
    """Influential features ∪ S_c = {0, 1, 3}; only one non-influential feature exists (2), so the note says so."""
    imap = _imap()
    rec = _record()
    got = noise_ablation(W, B, imap, rec, seed=5)
    gen = torch.Generator().manual_seed(5)
    infl, rest = torch.tensor([0, 1, 3]), torch.tensor([2])
    non = rest[torch.randperm(1, generator=gen)[:3]].sort().values
    feats = torch.from_numpy(np.asarray(rec.features, np.float64))
    acc = {}
    for key, cols in (("influential", infl), ("non_influential", non)):
        noisy = feats.clone()
        noisy[:, cols] = torch.randn(len(feats), len(cols), generator=gen, dtype=torch.float64)
        acc[key] = float(((noisy @ W.T + B).argmax(1).numpy() == LABELS).mean())
    assert got["influential"] == pytest.approx(acc["influential"])
    assert got["non_influential"] == pytest.approx(acc["non_influential"])
    assert got["num_influential"] == 3 and got["num_non_influential"] == 1 and got["seed"] == 5
    assert "only 1 non-influential features exist" in got["note"]


def test_class_feature_means_skip_unlabelled_rows_and_empty_classes():
    labels = np.array([0, -1, 2, 0, -1, 1])
    means, counts = class_feature_means(_record(labels=labels), 4)
    assert counts.tolist() == [2.0, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(means.numpy(), [F[[0, 3]].mean(0), F[5], F[2], np.zeros(4)])
    assert mean_contributions(W, means, [[0, 2], [1], [2]]) == [[1.0, 1.0], [0.0], [1.0]]


def test_top_contributions_of_a_dense_head_are_its_largest_terms():
    zm = load_model("resnet18", num_classes=4, in_chans=1, input_size=16, seed=0)
    with torch.no_grad():
        zm.head.bias.normal_()
    x = torch.randn(2, 1, 16, 16)
    top = top_contributions(zm, x)                                   # k = 5 by default
    with torch.no_grad():
        f = zm.model.forward_head(zm.model.forward_features(x), pre_logits=True)
        logits = zm.model(x)
    for i, row in enumerate(top):
        c = int(logits[i].argmax())
        terms = zm.head.weight[c].detach() * f[i]
        vals, idx = terms.topk(5)
        assert row["class"] == c and row["label"] == zm.class_names[c]
        assert row["logit"] == pytest.approx(float(logits[i, c]), rel=1e-5)
        assert row["bias"] == pytest.approx(float(zm.head.bias[c].detach()))
        assert [t["feature"] for t in row["top"]] == idx.tolist()
        assert [t["contribution"] for t in row["top"]] == pytest.approx(vals.tolist(), rel=1e-5)
        assert [t["value"] for t in row["top"]] == pytest.approx(f[i, idx].tolist(), rel=1e-5)


def test_top_contributions_of_a_head_without_bias_report_bias_zero():
    zm = load_model("resnet18", num_classes=4, in_chans=1, input_size=16, seed=0)
    zm.model.fc = torch.nn.Linear(512, 4, bias=False)
    x = torch.randn(1, 1, 16, 16)
    row = top_contributions(zm, x, k=2)[0]
    assert row["bias"] == 0.0 and len(row["top"]) == 2


def test_among_fitted_classes_with_no_eval_sample_of_them_says_so():
    ev = evaluate_decomposition(W, B, _imap(empty=[0]), _record(F[[0, 3]], np.array([0, 0])))
    assert ev["dense_classes"] == 1
    assert ev["among_fitted_classes"] == {"num_classes": 2, "samples": 0,
                                          "why": "no eval sample belongs to a class with fitting data"}


def test_among_fitted_classes_compete_only_with_each_other():
    """Class 0 has no fitting data (dense row); among classes 1 and 2 the full head predicts 1, 2, 2, 2, 2, 2 on the
    eval samples of those classes (rows 1, 2, 4, 5: labels 1, 2, 2, 2): all four right."""
    ev = evaluate_decomposition(W, B, _imap(empty=[0]), _record())
    among = ev["among_fitted_classes"]
    assert among["num_classes"] == 2 and among["samples"] == 4 and among["accuracy_full"] == 1.0


def test_defaults_are_one_epoch_lr_0_1_batches_of_64_and_seed_0():
    import copy

    from inspectnet.analysis.heads.decompose import decompose_head, retrain_head

    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(100, 4)).astype(np.float32), rng.integers(0, 3, 100)
    head = decompose_head(torch.nn.Linear(4, 3), _imap([[0, 2], [1], [3]]))
    a, b = copy.deepcopy(head), copy.deepcopy(head)
    history = retrain_head(a, feats, labels)
    assert history == retrain_head(b, feats, labels, epochs=1, lr=0.1, batch_size=64, seed=0) and len(history) == 1
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert noise_ablation(W, B, _imap(), _record()) == noise_ablation(W, B, _imap(), _record(), seed=0)


def test_retraining_is_seeded_momentum_sgd_on_the_labelled_rows_written_out():
    import copy

    from torch.nn import functional as nnf

    from inspectnet.analysis.heads.decompose import decompose_head, retrain_head

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.integers(-1, 3, 50)                                  # some rows unlabelled
    head = decompose_head(torch.nn.Linear(4, 3), _imap([[0, 2], [1], [3]]))
    ref = copy.deepcopy(head)
    history = retrain_head(head, feats, labels, epochs=2, lr=0.05, batch_size=16, seed=4)
    rows = np.flatnonzero(labels >= 0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(4)
    want = []
    for epoch in range(2):
        order, total = torch.randperm(len(rows), generator=gen), 0.0
        for start in range(0, len(rows), 16):
            pick = rows[order[start:start + 16].numpy()]
            loss = nnf.cross_entropy(ref(torch.from_numpy(feats[pick])), torch.from_numpy(labels[pick]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(pick)
        want.append({"epoch": epoch + 1, "loss": pytest.approx(total / len(rows), rel=1e-6)})
    assert history == want
    torch.testing.assert_close(head.weight, ref.weight * ref.mask)
    assert bool((head.weight[~head.mask] == 0).all())


def test_sweep_keeps_every_pair_with_k2_up_to_k1_and_k1_up_to_the_feature_count():
    from inspectnet.analysis.heads.decompose import sweep

    rec = _record()
    rec.activations = lambda layer: np.abs(rec.features)
    rec.class_names, rec.fingerprint = ["a", "b", "c"], "hand-made"
    rec.manifest = {"identity": {"weights_fingerprint": "hand-made"}}
    rows = sweep(rec, rec, W, B, k1_values=[1, 4, 5], k2_values=[1, 2, 4, 5])
    assert [(r["k1"], r["k2"]) for r in rows] == [(1, 1), (4, 1), (4, 2), (4, 4)]
    every = rows[-1]  # k1 = k2 = 4: each class keeps all 4 features, so the decomposed head is the full one
    assert every["rA"] == 1.0 and every["agreement"] == 1.0 and every["union_size"] == 4
    assert every["accuracy_decomposed"] == every["accuracy_full"] == pytest.approx(4 / 6)
