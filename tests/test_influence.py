import numpy as np
import pytest
import torch

from inspectnet import InspectnetError, load_data, load_model
from inspectnet.analysis.heads.influence import InfluenceMap, fit_influence, top_indices, topk_counts
from inspectnet.probe.recorder import run_probe


def naive_algorithm1(acts, labels, num_classes, k1, k2, weight=None):
    """Algorithm 1 written as the paper states it: per sample sorted top-k1, histogram, top-k2."""
    counts = np.zeros((num_classes, acts.shape[1]))
    for a, y in zip(acts, labels):
        if y < 0:
            continue
        if weight is not None:
            a = a * np.abs(weight[y])
        order = sorted(range(len(a)), key=lambda j: -abs(a[j]))[:k1]
        for j in order:
            if a[j] != 0:
                counts[y, j] += 1
    sup = []
    for c in range(num_classes):
        ranked = sorted(range(acts.shape[1]), key=lambda j: (-counts[c, j], j))[:k2]
        sup.append([j for j in ranked if counts[c, j] > 0])
    return counts, sup


def test_counts_hand_computed():
    a = np.array([[3.0, -5.0, 1.0, 0.5], [0.0, 2.0, 4.0, -9.0], [1.0, 0.0, 0.0, 0.0]])
    y = np.array([0, 1, 1])
    # sample 0 top-2 by |.|: 1, 0; sample 1: 3, 2; sample 2: only index 0 is non-zero
    expect = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], dtype=float)
    np.testing.assert_array_equal(topk_counts(a, y, 2, 2), expect)
    assert top_indices(expect, 2) == [[0, 1], [0, 2]]  # ties: lower index first


def test_matches_naive_reference_with_negative_features_and_unlabelled():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(300, 40)).astype(np.float32)
    acts[:, 7] *= 5  # a dominant feature
    labels = rng.integers(-1, 4, size=300)
    counts = topk_counts(acts, labels, 4, 6)
    ref_counts, ref_sup = naive_algorithm1(acts, labels, 4, 6, 3)
    np.testing.assert_array_equal(counts, ref_counts)
    assert counts.dtype == np.float64
    assert top_indices(counts, 3) == ref_sup
    assert all(s[0] == 7 for s in ref_sup)


def test_contribution_score_matches_reference():
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(200, 30)).astype(np.float32)
    labels = rng.integers(0, 3, size=200)
    w = rng.normal(size=(3, 30)).astype(np.float32)
    counts = topk_counts(acts, labels, 3, 4, torch.from_numpy(w))
    ref, ref_sup = naive_algorithm1(acts, labels, 3, 4, 3, weight=w)
    np.testing.assert_array_equal(counts, ref)
    assert top_indices(counts, 3) == ref_sup


def test_large_dims_are_vectorized():
    rng = np.random.default_rng(1)
    acts = rng.random((3000, 4096), dtype=np.float32)
    labels = rng.integers(0, 1000, size=3000)
    counts = topk_counts(acts, labels, 1000, 7)
    assert counts.shape == (1000, 4096) and counts.sum() == 3000 * 7
    np.testing.assert_array_equal(counts.sum(1), 7 * np.bincount(labels, minlength=1000))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    tmp = tmp_path_factory.mktemp("rec")
    train = load_data("digits:train", zm.transform())
    rec = run_probe(zm, train, "layer3", tmp / "train", limit=150, batch_size=75)
    return zm, rec, tmp


def test_fit_on_record_and_json_roundtrip(records, tmp_path):
    zm, rec, _ = records
    imap = fit_influence(rec, k1=8, k2=4)
    _, ref = naive_algorithm1(np.asarray(rec.features), np.asarray(rec.labels), 10, 8, 4)
    assert imap.supports == ref and imap.dim == 512 and imap.num_classes == 10
    assert imap.weights_fingerprint == zm.fingerprint() and imap.record_fingerprint == rec.fingerprint
    n_c = np.bincount(np.asarray(rec.labels), minlength=10)
    assert imap.class_counts == n_c.tolist()
    assert all(0 < f <= 1 for fs in imap.frequencies for f in fs)
    assert len(imap.union()) <= 40 and imap.mask().sum() == sum(len(s) for s in imap.supports)
    imap.save(tmp_path / "m.json")
    assert InfluenceMap.load(tmp_path / "m.json") == imap


def test_influential_filters_at_a_probed_layer(records):
    _, rec, _ = records
    imap = fit_influence(rec, k1=5, k2=3, layer="layer3")
    assert imap.layer == "layer3" and imap.dim == 256
    _, ref = naive_algorithm1(np.asarray(rec.activations("layer3")), np.asarray(rec.labels), 10, 5, 3)
    assert imap.supports == ref


def test_bad_k_and_missing_labels(records):
    zm, rec, tmp = records
    with pytest.raises(InspectnetError, match="k2=6 is larger than k1=5"):
        fit_influence(rec, k1=5, k2=6)
    with pytest.raises(InspectnetError, match="contribution needs the head's weights"):
        fit_influence(rec, k1=5, k2=5, score="contribution")
    w = zm.head.weight.detach()
    assert fit_influence(rec, k1=5, k2=5, score="contribution", weight=w).score == "contribution"
    with pytest.raises(InspectnetError, match="larger than the feature dimension 512"):
        fit_influence(rec, k1=600, k2=5)
    unl = run_probe(zm, load_data("samples", zm.transform()), "layer3", tmp / "unlabelled", limit=3)
    with pytest.raises(InspectnetError, match="has no labels"):
        fit_influence(unl, k1=5, k2=5)


def test_class_without_samples_is_reported(tmp_path):
    zm = load_model("resnet18", num_classes=12, in_chans=1, input_size=16, class_names=[str(i) for i in range(12)])
    rec = run_probe(zm, load_data("digits:train", zm.transform()), "layer3", tmp_path / "r", limit=60)
    imap = fit_influence(rec, k1=5, k2=5)
    assert imap.empty_classes == [10, 11]
    assert imap.supports[10] == [] and imap.frequencies[11] == [] and imap.class_counts[10] == 0
    assert all(len(s) == 5 for s in imap.supports[:10])


def _small_record(root, labels, class_names=("a", "b", "c")):
    from tests.test_rules import write_record

    acts = np.array([[5.0, 1, 0, 3], [4, 0, 2, 1], [0, 7, 1, 2], [1, 6, 0, 9], [0, 5, 0, 0], [9, 9, 9, 9]])[:len(labels)]
    labels = np.asarray(labels)
    return write_record(root, {"pre_logits": acts}, np.zeros((len(labels), len(class_names))), labels,
                        list(class_names))


def test_supports_frequencies_and_empty_middle_class_by_hand(tmp_path):
    """Class 0: samples 0, 1; class 2: samples 2, 3, 4 (4's second value is 0: not counted); class 1: none;
    an unlabelled sample of all 9s counts nowhere."""
    rec = _small_record(tmp_path / "r", [0, 0, 2, 2, 2, -1])
    imap = fit_influence(rec, k1=2, k2=2)
    # top-2: s0 {0, 3}, s1 {0, 2}, s2 {1, 3}, s3 {3, 1}, s4 {1} → class 0 counts (2, 0, 1, 1), class 2 (0, 3, 0, 2)
    assert imap.supports == [[0, 2], [], [1, 3]]                 # tie between 2 and 3: the lower index
    assert imap.frequencies == [[1.0, 0.5], [], [1.0, pytest.approx(2 / 3)]]
    assert imap.class_counts == [2, 0, 3] and imap.empty_classes == [1]
    # the whole dimension may be taken: k1 = k2 = d; and the smallest sets, k1 = k2 = 1
    full = fit_influence(rec, k1=4, k2=4)
    assert full.supports[0] == [0, 3, 1, 2] and full.supports[2] == [1, 3, 0, 2]
    assert fit_influence(rec, k1=1, k2=1).supports == [[0], [], [1]]


def test_bad_labels_k_and_weights_are_refused_by_name(tmp_path):
    rec = _small_record(tmp_path / "r", [0, 0, 2, 3])
    with pytest.raises(InspectnetError, match="has labels up to 3 but the model has 3 classes"):
        fit_influence(rec, k1=2, k2=2)
    good = _small_record(tmp_path / "g", [0, 1, 2])
    for k1, k2, match in [(0, 1, "at least 1"), (1, 0, "at least 1"), (5, 1, "larger than the feature dimension 4")]:
        with pytest.raises(InspectnetError, match=match):
            fit_influence(good, k1=k1, k2=k2)
    with pytest.raises(InspectnetError, match=r"head weight of shape \(3, 5\) does not match"):
        fit_influence(good, k1=2, k2=2, score="contribution", weight=torch.ones(3, 5))
    with pytest.raises(InspectnetError, match="--score 'size' is unknown"):
        fit_influence(good, k1=2, k2=2, score="size")
    assert fit_influence(good, k1=2, k2=2, score="contribution", weight=torch.ones(3, 4)).score == "contribution"


def test_a_single_labelled_sample_is_counted():
    a = np.array([[3.0, -5.0, 1.0], [9.0, 9.0, 9.0]])
    np.testing.assert_array_equal(topk_counts(a, np.array([1, -1]), 2, 2), [[0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(topk_counts(a[:1], np.array([0]), 2, 1), [[0, 1, 0], [0, 0, 0]])


def test_full_map_uses_every_feature_of_every_class():
    imap = InfluenceMap.full(3, 4)
    assert imap.supports == [[0, 1, 2, 3]] * 3 and imap.frequencies == [[1.0] * 4] * 3
    assert imap.class_counts == [0, 0, 0] and imap.empty_classes == [] and imap.union() == [0, 1, 2, 3]
    assert bool(imap.mask().all()) and (imap.k1, imap.k2, imap.dim, imap.num_classes) == (4, 4, 4, 3)


def test_one_labelled_sample_or_a_single_class_of_label_zero_is_enough_to_fit(tmp_path):
    one = fit_influence(_small_record(tmp_path / "one", [2]), k1=2, k2=1)
    assert one.supports == [[], [], [0]] and one.class_counts == [0, 0, 1] and one.empty_classes == [0, 1]
    zeros = fit_influence(_small_record(tmp_path / "zeros", [0, 0, 0]), k1=1, k2=1)
    assert zeros.supports == [[0], [], []] and zeros.class_counts == [3, 0, 0]  # top-1: 0, 0, 1
