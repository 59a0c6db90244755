"""Quantization and rule extraction: thresholds by hand, a planted rule recovered exactly, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from inspectnet.analysis.rules.binarize import fit_quantizer
from inspectnet.analysis.rules.tree import extract_rules, fit_rules, format_rule
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.probe.record import ProbeRecord

CLASSES = ["zero", "one", "two"]


def write_record(root: Path, layers: dict[str, np.ndarray], logits: np.ndarray, labels: np.ndarray,
                 class_names: list[str], fingerprint: str = "w0") -> ProbeRecord:
    """A probe record folder in the on-disk format of :mod:`inspectnet.probe.record`, from given arrays."""
    root.mkdir(parents=True)
    (root / "layers").mkdir()
    n = len(labels)
    for name, arr in layers.items():
        np.save(root / "layers" / f"{name}.npy", arr.astype(np.float32))
    np.save(root / "logits.npy", logits.astype(np.float32))
    np.save(root / "labels.npy", labels.astype(np.int64))
    features = np.concatenate(list(layers.values()), axis=1).astype(np.float32)
    np.save(root / "features.npy", features)
    manifest = {"format": "inspectnet-probe-record", "complete": True, "num_samples": n,
                "features_dim": features.shape[1],
                "identity": {"weights_fingerprint": fingerprint, "data": f"synthetic:{root.name}", "num_samples": n},
                "class_names": class_names, "layers": [{"name": k, "shape": [v.shape[1]]} for k, v in layers.items()]}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return ProbeRecord.load(root)


def planted(n: int, seed: int, k: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations with a planted rule on μ+σ atoms: f3 ∧ ¬f7 → 2, ¬f3 ∧ f5 → 1, else 0."""
    rng = np.random.default_rng(seed)
    a = rng.exponential(1.0, size=(n, k))
    # thresholds are fit on the train draw; a large n makes them ≈ those of the eval draw
    def on(j):
        return a[:, j] > 2.0

    pred = np.where(on(3) & ~on(7), 2, np.where(~on(3) & on(5), 1, 0))
    labels = pred.copy()
    flip = rng.random(n) < 0.1
    labels[flip] = (labels[flip] + 1) % 3
    return a, pred, labels


def planted_record(root: Path, n: int, seed: int, fingerprint: str = "w0") -> ProbeRecord:
    a, pred, labels = planted(n, seed)
    # exponential(1) has μ = σ = 1, so μ+σ ≈ 2; force exact agreement by putting the atoms far from it
    a = np.where(a > 2.0, a + 1.0, a * 0.8)
    return write_record(root, {"conv": a}, np.eye(3)[pred], labels, CLASSES, fingerprint)


def test_mean_std_thresholds_by_hand():
    a = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    q = fit_quantizer(a)
    assert q.thresholds[0] == pytest.approx(2.0 + np.sqrt(2.0 / 3.0))
    assert q.constant == [1]
    assert q.transform(a).tolist() == [[False, False], [True, False], [False, False]]
    # thresholds fitted on one matrix apply unchanged to another
    assert q.transform(np.array([[2.9, 9.0]])).tolist() == [[True, False]]


def test_quantile_and_fixed_thresholds():
    a = np.arange(10, dtype=float).reshape(10, 1)
    assert fit_quantizer(a, "quantile", 0.5).thresholds == [4.5]
    assert fit_quantizer(a, "fixed", 7).transform(a)[:, 0].sum() == 2
    with pytest.raises(InspectnetError, match="fixed"):
        fit_quantizer(a, "fixed")
    with pytest.raises(InspectnetError, match="quantile"):
        fit_quantizer(a, "quantile", 1.5)
    with pytest.raises(InspectnetError, match="unknown"):
        fit_quantizer(a, "median")
    with pytest.raises(InspectnetError, match="filters"):
        fit_quantizer(a).transform(np.zeros((2, 3)))


def test_format_rule():
    assert format_rule([(12, True), (40, False), (7, True)], 2, CLASSES) == "f12 ∧ ¬f40 ∧ f7 → 2 (two)"
    assert format_rule([], 3, ["0", "1", "2", "3"]) == "⊤ → 3"


def test_planted_rule_recovered_exactly(tmp_path):
    train = planted_record(tmp_path / "train", 3000, 0)
    test = planted_record(tmp_path / "test", 1000, 1)
    rs, model = extract_rules(train, "conv", test)
    assert rs.fidelity == 1.0 and rs.train_fidelity == 1.0
    assert rs.atom_filters == [3, 5, 7] and rs.atoms == 3
    # a perfect tree needs ≥ 4 leaves; greedy splitting may order the atoms so that it needs 6
    assert 4 <= rs.rules <= 6
    for r in rs.rule_list:  # every rule implies the planted class
        conds = {(c["filter"], c["active"]) for c in r["conditions"]}
        if r["class"] == 2:
            assert {(3, True), (7, False)} <= conds
        if r["class"] == 1:
            assert {(3, False), (5, True)} <= conds
    assert rs.avg_depth == pytest.approx(np.mean([r["depth"] for r in rs.rule_list]))
    assert 2.0 <= rs.avg_depth <= 3.0
    # extracted accuracy is the tree against the labels: here exactly the labels' agreement with the model
    labels, pred = np.asarray(test.labels), test.predictions
    assert rs.extracted_accuracy == pytest.approx((labels == pred).mean())
    assert rs.model_accuracy == pytest.approx((labels == pred).mean())
    assert sum(r["support"] for r in rs.rule_list) == rs.n_train
    assert sum(r["eval_support"] for r in rs.rule_list) == rs.n_eval
    assert all(r["confidence"] == 1.0 for r in rs.rule_list)
    assert rs.selection["method"] == "cost_complexity_pruning"


def test_fixed_depth_and_constant_filters():
    a, pred, _ = planted(2000, 2)
    a[:, 0] = 4.0  # a constant filter: skipped and counted, never an atom
    model, sel = fit_rules(a, pred, max_depth=1)
    assert sel["method"] == "fixed_depth"
    assert model.tree.get_depth() == 1 and model.tree.get_n_leaves() == 2
    assert model.quantizer.constant == [0] and 0 not in model.filters


def test_bad_input(tmp_path):
    a, pred, _ = planted(200, 3)
    with pytest.raises(InspectnetError, match="single class"):
        fit_rules(a, np.zeros(200, dtype=int))
    with pytest.raises(InspectnetError, match="every filter"):
        fit_rules(np.ones((50, 4)), np.arange(50) % 2)
    train = planted_record(tmp_path / "train", 300, 0)
    other = planted_record(tmp_path / "other", 300, 1, fingerprint="w1")
    with pytest.raises(InspectnetError, match="different models"):
        extract_rules(train, "conv", other)
    with pytest.raises(InspectnetError, match="no layer 'conv9'"):
        extract_rules(train, "conv9")
    (train.root / "logits.npy").unlink()
    with pytest.raises(InspectnetError, match="no model predictions"):
        extract_rules(train, "conv")


def test_rules_command(tmp_path, capsys):
    planted_record(tmp_path / "train", 1500, 0)
    planted_record(tmp_path / "test", 500, 1)
    out = tmp_path / "out"
    assert main(["rules", str(tmp_path / "train"), "--layer", "conv", "--eval", str(tmp_path / "test"),
                 "--out", str(out)]) == 0
    doc = json.loads((out / "rules.json").read_text())
    for key in ("extracted_accuracy", "fidelity", "atoms", "rules", "avg_depth", "rules_text"):
        assert key in doc
    assert doc["fidelity"] == 1.0 and doc["atoms"] == 3
    assert (out / "tree.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "∧ ¬f7" in (out / "rules.txt").read_text()
    assert "fidelity 1.0000" in capsys.readouterr().out
    assert main(["rules", str(tmp_path / "train"), "--layer", "nope", "--out", str(out)]) == 2
    assert "no layer 'nope'" in capsys.readouterr().err


def test_tree_fits_a_bounded_spread_sample_and_evaluates_every_row(tmp_path):
    train = planted_record(tmp_path / "train", 3000, 0)
    test = planted_record(tmp_path / "test", 1000, 1)
    rs, _ = extract_rules(train, "conv", test, fit_samples=800)
    assert rs.n_train == 800 and rs.n_eval == 1000 and rs.fidelity == 1.0
    assert sum(r["support"] for r in rs.rule_list) == 800 and sum(r["eval_support"] for r in rs.rule_list) == 1000


def test_readable_depth_is_the_smallest_within_the_margin_of_the_best():
    """Class = 4 binary atoms read as a number mod 10: depth 4 reaches 100 % held-out fidelity, depth
    2 and 3 cannot (they see at most 3 atoms on any path); a margin of 0 picks depth 4, a wide margin
    the smallest depth on the curve."""
    from inspectnet.analysis.rules.tree import select_depth

    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(2000, 12)).astype(np.uint8)
    y = (x[:, :4] @ np.array([1, 2, 4, 8])) % 10
    depth, how = select_depth(x, y, 0.0)
    fid = {r["depth"]: r["val_fidelity"] for r in how["curve"]}
    assert depth == 4 and fid[4] == 1.0 and fid[3] < 1.0 and fid[2] < fid[3]
    assert how["n_val"] == 500 and how["curve"][-1]["depth"] is None
    assert select_depth(x, y, 0.99)[0] == 2
    capped, how = select_depth(x, y, 0.0, depths=(2, 3))  # the unlimited tree is better than any of them
    assert not how["within_margin"] and capped == 3 and how["best_val_fidelity"] == 1.0
    with pytest.raises(InspectnetError, match="margin"):
        select_depth(x, y, 1.5)


def test_tree_picture_boxes_do_not_overlap_with_many_classes():
    """The drawn levels of a deep 10-class tree: every node box lies apart from every other."""
    import itertools

    from matplotlib.text import Text

    rng = np.random.default_rng(1)
    a = rng.normal(size=(800, 40))
    pred = (a[:, :8] > 0.7).astype(int) @ np.arange(1, 9) % 10
    model, _ = fit_rules(a, pred, class_names=[f"a long class name {c}" for c in range(10)], max_depth=8)
    assert model.tree.get_depth() > 4
    fig, boxes = model.figure(max_depth=3)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    extents = [(b.get_bbox_patch() or b).get_window_extent(renderer) if b.get_bbox_patch()
               else Text.get_window_extent(b, renderer) for b in boxes]
    assert len(extents) >= 15
    assert not [(i, j) for (i, p), (j, q) in itertools.combinations(enumerate(extents), 2) if p.overlaps(q)]
    assert all("value" not in b.get_text() for b in boxes)
    assert fig.get_size_inches()[0] * 100 <= 1400  # a readable width at the saved dpi
