"""Sparsity metrics: hand-computed values, parity with scipy, degenerate columns, the command."""

import json
import warnings

import numpy as np
import pytest
from scipy import stats

from inspectnet.analysis.sparsity import excess_kurtosis, hoyer, sparsity_metrics, treves_rolls
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from tests.test_rules import write_record


def test_hoyer_by_hand():
    # [1,2,3,4]: (√4 − 10/√30) / (√4 − 1)
    assert hoyer(np.array([1.0, 2, 3, 4])) == pytest.approx(2 - 10 / np.sqrt(30))
    assert hoyer(np.array([0.0, 0, 5, 0])) == 1.0
    assert hoyer(np.array([2.0, 2, 2, 2])) == 0.0
    assert np.isnan(hoyer(np.zeros(4)))
    assert hoyer(np.array([-1.0, 0, 0])) == 1.0  # on |x|


def test_treves_rolls_by_hand():
    # [1,2,3,4]: a = 2.5² / 7.5 = 5/6, S = (1 − 5/6) / (1 − 1/4) = 2/9
    assert treves_rolls(np.array([1.0, 2, 3, 4])) == pytest.approx(2 / 9)
    assert treves_rolls(np.array([0.0, 7, 0, 0, 0])) == pytest.approx(1.0)
    assert treves_rolls(np.array([3.0, 3, 3])) == pytest.approx(0.0)
    assert np.isnan(treves_rolls(np.zeros(3)))


def test_kurtosis_by_hand_and_scipy():
    # [0,0,0,1]: μ = 1/4, m2 = 3/16, m4 = (3·(1/4)⁴ + (3/4)⁴)/4 = 21/256 → 21/256 / (9/256) − 3 = −2/3
    assert excess_kurtosis(np.array([0.0, 0, 0, 1])) == pytest.approx(-2 / 3)
    rng = np.random.default_rng(0)
    a = rng.gamma(0.3, size=(200, 30))
    for axis in (0, 1):
        np.testing.assert_allclose(excess_kurtosis(a, axis=axis),
                                   stats.kurtosis(a, axis=axis, fisher=True, bias=True), rtol=1e-10)
    m = sparsity_metrics(a)
    assert m.lifetime_kurtosis == pytest.approx(stats.kurtosis(a, axis=0).mean())
    assert m.population_kurtosis == pytest.approx(stats.kurtosis(a, axis=1).mean())


def test_two_element_vectors_have_hoyer_and_treves_rolls_values():
    # n = 2 is the smallest length with a value: [3, 4] gives (√2 − 7/5) / (√2 − 1); [1, 3]: a = 2² / 5 → 0.2 / 0.5
    assert hoyer(np.array([3.0, 4.0])) == pytest.approx((np.sqrt(2) - 7 / 5) / (np.sqrt(2) - 1))
    assert treves_rolls(np.array([1.0, 3.0])) == pytest.approx(0.4)
    # a single value has no sparseness; a tiny vector (‖x‖ < 1) is as sparse as a large one
    assert np.isnan(hoyer(np.array([2.0]))) and np.isnan(treves_rolls(np.array([2.0])))
    assert hoyer(np.array([0.0, 0.25, 0.0])) == 1.0 and treves_rolls(np.array([0.0, 0.25, 0.0])) == pytest.approx(1.0)


def test_kurtosis_is_scale_free_and_excludes_only_truly_constant_vectors():
    # −2/3 of [0, 0, 0, 1] at any scale and offset: the constant test is relative to the values' size
    assert excess_kurtosis(np.array([0.0, 0, 0, 1e-13])) == pytest.approx(-2 / 3, rel=1e-9)
    assert excess_kurtosis(np.array([1.0, 1, 1, 1 + 1e-6])) == pytest.approx(-2 / 3, rel=1e-6)
    # a constant 0.1 (its mean rounds: m2 ≈ 2e-34, not 0) is constant, never a huge kurtosis
    assert np.isnan(excess_kurtosis(np.full(3, 0.1))) and np.isnan(excess_kurtosis(np.full(100, 0.7)))


def test_sparseness_never_exceeds_one_on_near_one_hot_vectors_of_any_scale():
    """(1 − a)/(1 − 1/n) reaches 1 + 2⁻⁵² by rounding on some one-hot vectors: the measures stay in [0, 1]."""
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 100, 513):
        x = np.zeros((5000, n))
        x[np.arange(5000), rng.integers(0, n, 5000)] = rng.exponential(size=5000) * 10.0 ** rng.integers(-30, 30, 5000)
        x += (rng.random((5000, n)) < 0.3) * rng.exponential(size=(5000, n)) * 1e-9
        for measure in (hoyer, treves_rolls):
            v = measure(x, axis=1)
            assert np.nanmax(v) <= 1.0 and np.nanmin(v) >= 0.0, (measure.__name__, n)


def test_the_smallest_accepted_matrix_is_two_by_two():
    m = sparsity_metrics(np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert (m.num_samples, m.num_filters) == (2, 2)
    assert m.hoyer == pytest.approx(0.5) and m.treves_rolls_population == pytest.approx(0.5)
    # pooled: 3 ones of 4 values: a = (3/4)² / (3/4) = 3/4 → (1/4) / (3/4)
    assert m.activity_sparseness == pytest.approx(1 / 3)
    with pytest.raises(InspectnetError, match="at least 2"):
        sparsity_metrics(np.ones((2, 1)))


def test_metrics_of_a_small_matrix_by_hand():
    a = np.array([[1.0, 0, 0, 0], [0, 2, 0, 0], [1, 1, 1, 1]])
    m = sparsity_metrics(a)
    assert m.hoyer == pytest.approx((1 + 1 + 0) / 3)
    assert m.treves_rolls_population == pytest.approx((1 + 1 + 0) / 3)
    # lifetime: columns [1,0,1], [0,2,1], [0,0,1], [0,0,1]
    tr_life = [treves_rolls(np.array(c)) for c in ([1.0, 0, 1], [0.0, 2, 1], [0.0, 0, 1], [0.0, 0, 1])]
    assert m.treves_rolls_lifetime == pytest.approx(np.mean(tr_life))
    # pooled: 12 values, Σ = 7, Σ² = 9 → a = (7/12)² / (9/12)
    assert m.activity_sparseness == pytest.approx((1 - (7 / 12) ** 2 / (9 / 12)) / (1 - 1 / 12))


def test_zero_and_constant_columns_are_excluded_and_counted():
    rng = np.random.default_rng(1)
    a = rng.exponential(size=(100, 6))
    a[:, 0] = 0.0
    a[:, 1] = 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero / invalid warnings leak out
        m = sparsity_metrics(a)
    assert m.excluded["lifetime_kurtosis"] == 2 and m.excluded["treves_rolls_lifetime"] == 1
    assert m.lifetime_kurtosis == pytest.approx(stats.kurtosis(a[:, 2:], axis=0).mean())
    # the constant non-zero column has T-R sparseness 0 and counts in the mean
    assert m.treves_rolls_lifetime == pytest.approx(np.mean([0.0, *treves_rolls(a[:, 2:], axis=0)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = sparsity_metrics(np.zeros((5, 4)))
    assert z.hoyer is None and z.treves_rolls_population is None and z.excluded["hoyer"] == 5


def test_sparser_codes_score_higher():
    rng = np.random.default_rng(2)
    dense = rng.uniform(0.5, 1.5, size=(300, 64))
    sparse = np.zeros((300, 64))
    sparse[np.arange(300), rng.integers(0, 64, 300)] = rng.uniform(1, 2, 300)
    d, s = sparsity_metrics(dense), sparsity_metrics(sparse)
    for key in ("hoyer", "treves_rolls_population", "treves_rolls_lifetime", "activity_sparseness",
                "lifetime_kurtosis", "population_kurtosis"):
        assert getattr(s, key) > getattr(d, key), key


def test_bad_shapes():
    with pytest.raises(InspectnetError, match="at least 2"):
        sparsity_metrics(np.ones((1, 5)))
    with pytest.raises(InspectnetError, match="NaN"):
        sparsity_metrics(np.full((3, 3), np.nan))


def test_sparsity_command(tmp_path, capsys):
    rng = np.random.default_rng(3)
    layers = {"a": rng.exponential(size=(40, 8)), "b": rng.exponential(size=(40, 16))}
    write_record(tmp_path / "rec", layers, rng.normal(size=(40, 3)), np.arange(40) % 3, ["x", "y", "z"])
    assert main(["sparsity", str(tmp_path / "rec"), "--layer", "b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["layer"] for d in doc] == ["b"]
    assert doc[0]["hoyer"] == pytest.approx(sparsity_metrics(layers["b"]).hoyer, rel=1e-6)
    assert main(["sparsity", str(tmp_path / "rec")]) == 0
    assert "| a |" in capsys.readouterr().out
    assert main(["sparsity", str(tmp_path / "rec"), "--layer", "c"]) == 2


def test_real_probe_record(tmp_path, tiny_digits_model):
    from inspectnet import load_data, run_probe
    from inspectnet.analysis.sparsity import record_sparsity

    ds = load_data("digits:test", tiny_digits_model.transform())
    rec = run_probe(tiny_digits_model, ds, "layer3,layer4", tmp_path / "rec", limit=48, batch_size=16)
    rows = record_sparsity(rec)
    assert [r.layer for r in rows] == ["layer3", "layer4"]
    for r in rows:
        for key in ("hoyer", "treves_rolls_population", "treves_rolls_lifetime", "activity_sparseness"):
            assert 0.0 <= getattr(r, key) <= 1.0
        assert r.num_samples == 48
