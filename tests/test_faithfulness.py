"""Faithfulness metrics (deletion, insertion, ROAD) and the cascading-randomisation sanity check."""

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats
import torch
from torch import nn

from inspectnet.analysis.explain.faithfulness import (
    Curves,
    FaithfulnessConfig,
    auc,
    baseline_images,
    compare_to_control,
    faithfulness_curves,
    linear_imputation,
    pixel_ranks,
    road_fill,
    summarise,
)
from inspectnet.analysis.explain.methods import explanation_maps, random_maps
from inspectnet.analysis.explain.sanity import (
    average_ranks,
    cascade_blocks,
    cascading_randomisation,
    data_randomisation,
    randomise,
    spearman,
)
from inspectnet.core.errors import InspectnetError


def _road_system(image, known):
    """ROAD's linear system on the removed pixels, built entry by entry: (matrix, right-hand side)."""
    h, w = image.shape
    unknown = np.argwhere(~known)
    index = {tuple(p): n for n, p in enumerate(unknown)}
    rows, cols, vals, rhs = [], [], [], np.zeros(len(unknown))
    for n, (i, j) in enumerate(unknown):
        total = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                    continue
                weight = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                total += weight
                if known[ii, jj]:
                    rhs[n] += weight * image[ii, jj]
                else:
                    rows.append(n), cols.append(index[(ii, jj)]), vals.append(-weight)
        rows.append(n), cols.append(n), vals.append(total)
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(unknown), len(unknown))), rhs


def _exact_imputation(image, known):
    """ROAD's linear system solved directly (the reference for the CG solver)."""
    matrix, rhs = _road_system(image, known)
    out = image.copy()
    out[~known] = scipy.sparse.linalg.spsolve(matrix, rhs)
    return out


@pytest.mark.parametrize("size,fraction", [(16, 0.2), (28, 0.8), (40, 0.5)])
def test_linear_imputation_solves_roads_system(size, fraction):
    rng = np.random.default_rng(size)
    image = rng.random((size, size))
    blocky = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(size)),
                                             size=(size, size), mode="bilinear")[0, 0].numpy()
    known = blocky >= np.quantile(blocky, fraction)
    got = linear_imputation(torch.tensor(image)[None, None].double(), torch.tensor(known)[None, None])
    np.testing.assert_allclose(got[0, 0].numpy(), _exact_imputation(image, known), atol=2e-3)
    assert (got[0, 0].numpy()[known] == image[known]).all()  # kept pixels untouched


def test_linear_imputation_stops_within_its_tolerance_of_each_images_range_from_an_interpolated_start():
    rng = np.random.default_rng(7)
    size, tolerance = 40, 1e-4
    # value ranges 0.5 and 100, neither starting at 0: the stopping rule scales with max - min, not max
    images = np.stack([0.5 + 0.5 * rng.random((size, size)), 50 + 100 * rng.random((size, size))])
    blocky = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, generator=torch.Generator().manual_seed(3)),
                                             size=(size, size), mode="bilinear")[0, 0].numpy()
    known = blocky >= np.quantile(blocky, 0.6)
    x, k = torch.tensor(images)[:, None], torch.tensor(known)[None, None].expand(2, 1, size, size)
    got = linear_imputation(x, k, tolerance=tolerance).numpy()[:, 0]
    start = linear_imputation(x, k, max_iterations=0).numpy()[:, 0]  # the solver's starting point
    for image, solved, first in zip(images, got, start):
        matrix, rhs = _road_system(image, known)
        residual = rhs - matrix @ solved[~known]
        span = image.max() - image.min()
        assert np.sqrt(np.mean(residual ** 2)) <= tolerance * span
        # the start interpolates the kept pixels: inside their range and near the solution
        assert image.min() <= first[~known].min() and first[~known].max() <= image.max()
        assert np.abs(first - _exact_imputation(image, known)).mean() < 0.1 * span


def test_road_fill_on_large_inputs_solves_a_coarser_grid():
    x = torch.rand(2, 3, 96, 96)
    removed = torch.zeros(2, 1, 96, 96, dtype=torch.bool)
    removed[:, :, 30:60, 30:60] = True
    filled = road_fill(x, removed, size=24)
    assert filled.shape == x.shape and torch.isfinite(filled).all()
    # inside the hole the fill is smooth: it stays within the range of the image around it
    assert filled[:, :, 40:50, 40:50].min() >= x.min() and filled[:, :, 40:50, 40:50].max() <= x.max()


def test_pixel_ranks_order_by_relevance_and_break_ties_at_random():
    maps = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    ranks = pixel_ranks(maps, (2, 2), seed=0)[0]
    assert ranks[1] == 0 and sorted(ranks.tolist()) == [0, 1, 2, 3]
    flat = torch.zeros(1, 8, 8)
    orders = {tuple(pixel_ranks(flat, (8, 8), seed=s)[0].tolist()) for s in range(4)}
    assert len(orders) == 4  # ties are not removed in raster order


class _RegionModel(nn.Module):
    """Class 1's logit grows with the brightness of the top-left quarter, class 0's is constant: the quarter
    is exactly where the evidence for class 1 lies."""

    def forward(self, x):
        s = (x[:, :, :8, :8].mean((1, 2, 3)) - 1.5) * 4.0
        return torch.stack([torch.zeros_like(s), s], dim=1)


def _region_images(n, seed):
    """Dark images whose top-left quarter is bright (+ a little noise)."""
    x = torch.zeros(n, 1, 16, 16)
    x[:, :, :8, :8] = 3.0
    return x + 0.1 * torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _region_maps(n, good):
    m = torch.zeros(n, 4, 4)
    if good:
        m[:, :2, :2] = 1.0
    else:
        m[:, 2:, 2:] = 1.0
    return m + 1e-3 * torch.rand(n, 4, 4, generator=torch.Generator().manual_seed(0))


def test_the_right_map_beats_random_and_the_wrong_one():
    targets = torch.ones(12, dtype=torch.long)
    config = FaithfulnessConfig(steps=8, baseline="mean", road_fractions=(0.25, 0.5))
    model = _RegionModel()
    right = faithfulness_curves(model, _region_images(12, 0), _region_maps(12, True), targets, config)
    wrong = faithfulness_curves(model, _region_images(12, 1), _region_maps(12, False), targets, config)
    control = faithfulness_curves(model, _region_images(12, 2), random_maps(range(12), (4, 4)), targets, config)
    s_right, s_wrong = summarise(right), summarise(wrong)
    assert s_right["deletion_auc"] < summarise(control)["deletion_auc"] < s_wrong["deletion_auc"]
    assert s_right["insertion_auc"] > s_wrong["insertion_auc"]
    assert s_right["road_morf"] < s_right["road_lerf"]  # removing the region hurts, removing the rest does not
    assert compare_to_control(right, control)["beats_control"] and not compare_to_control(wrong, control)["beats_control"]
    assert right.forward_passes == 12 * config.passes_per_image() == 12 * (2 * 8 + 2 * 2)


def test_constant_and_nan_maps_are_reported_not_scored():
    x = torch.rand(3, 1, 16, 16)
    maps = torch.stack([torch.ones(4, 4), torch.full((4, 4), float("nan")), torch.rand(4, 4)])
    c = faithfulness_curves(_RegionModel(), x, maps, torch.ones(3, dtype=torch.long), FaithfulnessConfig(steps=4))
    s = summarise(c)
    assert c.status == ["constant", "nan", "ok"] and (s["evaluated"], s["constant_maps"], s["nan_maps"]) == (1, 1, 1)
    assert np.isnan(c.deletion[:2]).all() and np.isfinite(c.deletion[2]).all()
    assert c.forward_passes == FaithfulnessConfig(steps=4).passes_per_image()  # nothing spent on skipped maps


@pytest.mark.parametrize("curve,fractions,expected", [
    # uneven steps: trapezoid 0.1·0.75 + 0.4·0.5 + 0.5·0.25 = 0.4 (a plain mean of the points gives 0.5)
    ([1.0, 0.5, 0.5, 0.0], [0.0, 0.1, 0.5, 1.0], 0.4),
    # fractions not starting at 0: area 0.2·0.5 + 0.6·0.5 = 0.4 over the span 0.8 (mean of the points: 2/3)
    ([1.0, 0.0, 1.0], [0.2, 0.4, 1.0], 0.5),
    # a curve that falls late: area 0.5·1 + 0.25·0.75 + 0.25·0.25 = 0.75 (mean: 0.6875)
    ([1.0, 1.0, 0.5, 0.0], [0.0, 0.5, 0.75, 1.0], 0.75),
])
def test_auc_is_the_trapezoid_area_over_uneven_fractions(curve, fractions, expected):
    got = auc(np.array([curve, [0.25] * len(curve)]), fractions)
    np.testing.assert_allclose(got, [expected, 0.25], rtol=0, atol=1e-12)


class _BrightCountModel(nn.Module):
    """Logits log(1 + dark pixels), log(1 + bright pixels): class 1's probability is (1 + bright) / (2 + pixels),
    where a pixel is bright above 0.5 (its value in the mean baseline of a half-bright image is 0.5: dark)."""

    def forward(self, x):
        bright = (x > 0.5).flatten(1).sum(1).double()
        return torch.stack([torch.log1p(x[0].numel() - bright), torch.log1p(bright)], dim=1)


class _ChangedPixelModel(nn.Module):
    """Class 1's probability is (1 + k) / (2 + k), k the number of pixels that differ from ``reference``."""

    def __init__(self, reference):
        super().__init__()
        self.reference = reference

    def forward(self, x):
        k = (x - self.reference).abs().flatten(1).gt(1e-6).sum(1).double()
        return torch.stack([torch.zeros_like(k), torch.log1p(k)], dim=1)


def test_deletion_and_road_change_exactly_the_fraction_of_pixels_asked_for():
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 1.0   # no pixel equals the mean
    config = FaithfulnessConfig(steps=4, baseline="mean", road_fractions=(0.25, 0.5), road_noise=0.01)
    c = faithfulness_curves(_ChangedPixelModel(x), x, torch.rand(1, 8, 8), torch.ones(1, dtype=torch.long), config)
    prob = lambda k: (1 + k) / (2 + k)                                              # noqa: E731
    np.testing.assert_allclose(c.deletion[0], [prob(k) for k in (0, 16, 32, 48, 64)], rtol=1e-6)
    np.testing.assert_allclose(c.road_morf[0], [prob(16), prob(32)], rtol=1e-6)
    np.testing.assert_allclose(c.road_lerf[0], [prob(16), prob(32)], rtol=1e-6)


def test_deletion_and_insertion_curves_and_aucs_equal_hand_computed_values():
    """An 8×8 image whose first 32 pixels (raster order) are bright, ranked in raster order by a full-size map:
    deletion removes 0, 16, 32, 48, 64 pixels → 32, 16, 0, 0, 0 bright → p = (33, 17, 1, 1, 1) / 66."""
    x = torch.zeros(1, 1, 8, 8)
    x.view(-1)[:32] = 1.0
    maps = -torch.arange(64.0).view(1, 8, 8)                      # pixel 0 most relevant, then raster order
    c = faithfulness_curves(_BrightCountModel(), x, maps, torch.ones(1, dtype=torch.long),
                            FaithfulnessConfig(steps=4, baseline="mean", road_fractions=(0.5,)))
    assert c.fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(c.deletion[0], np.array([33, 17, 1, 1, 1]) / 66, rtol=1e-6)
    np.testing.assert_allclose(c.insertion[0], np.array([1, 17, 33, 33, 33]) / 66, rtol=1e-6)
    s = summarise(c)
    # trapezoid: 0.25·(25 + 9 + 1 + 1) / 66 and 0.25·(9 + 25 + 33 + 33) / 66 (plain means: 53/330, 117/330)
    assert s["deletion_auc"] == pytest.approx(9 / 66, abs=1e-7)
    assert s["insertion_auc"] == pytest.approx(25 / 66, abs=1e-7)
    # ROAD at 1/2: MoRF removes the bright half, imputed from the dark half alone (0: none bright); LeRF removes
    # the dark half, imputed from the bright half alone (1: all 64 bright); noise 0.01 moves neither across 0.5
    assert s["road_morf"] == pytest.approx(1 / 66, abs=1e-7) and s["road_lerf"] == pytest.approx(65 / 66, abs=1e-7)


def _curves(deletion, insertion, morf, status=None):
    """Curves over the fractions 0 and 1 (each AUC is the mean of a row's two points); LeRF = 1 − MoRF."""
    n = len(deletion)
    morf = np.array(morf, dtype=float).reshape(n, 1)
    return Curves(fractions=[0.0, 1.0], deletion=np.array(deletion, float), insertion=np.array(insertion, float),
                  road_fractions=[0.5], road_morf=morf, road_lerf=1.0 - morf, status=status or ["ok"] * n,
                  forward_passes=0, baseline="mean")


def test_summary_and_paired_comparison_equal_hand_computed_means_and_standard_errors():
    nan = float("nan")
    # method: deletion AUCs 0.1, 0.2, 0.35 (and a constant map, not scored); insertion 0.7, 0.6, 0.45
    method = _curves([[0.2, 0], [0.4, 0], [0.7, 0], [nan, nan]], [[0.4, 1], [0.2, 1], [0, 0.9], [nan, nan]],
                     [0.1, 0.2, 0.3, nan], status=["ok", "ok", "ok", "constant"])
    control = _curves([[0.8, 0]] * 4, [[0, 0.8]] * 4, [0.3] * 4)
    s = summarise(method)
    assert (s["images"], s["evaluated"], s["constant_maps"], s["nan_maps"]) == (4, 3, 1, 0)
    se = np.sqrt(0.031666666666666666 / 2 / 3)             # Σ(x − x̄)² = 0.031667 over 3 − 1, / √3: 0.072648
    assert s["deletion_auc"] == pytest.approx(0.65 / 3) and s["deletion_auc_se"] == pytest.approx(se)
    assert s["insertion_auc"] == pytest.approx(1.75 / 3) and s["insertion_auc_se"] == pytest.approx(se)
    assert s["road_morf"] == pytest.approx(0.2) and s["road_lerf"] == pytest.approx(0.8)
    assert s["road_morf_se"] == pytest.approx(0.1 / np.sqrt(3))
    # paired differences: deletion (−0.3, −0.2, −0.05), insertion (0.3, 0.2, 0.05): mean ∓0.18333, SE 0.072648;
    # −0.18333 + 2·0.072648 < 0 < −0.18333 + 3·0.072648: better than the control by more than two SEs
    c = compare_to_control(method, control)
    assert c["paired_images"] == 3
    assert c["deletion_auc"] == pytest.approx(-0.55 / 3) and c["deletion_auc_se"] == pytest.approx(se)
    assert c["insertion_auc"] == pytest.approx(0.55 / 3) and c["insertion_auc_se"] == pytest.approx(se)
    assert c["road_morf"] == pytest.approx(-0.1) and c["road_lerf"] == pytest.approx(0.1)
    assert c["beats_control"]
    # the same deletion gain with an insertion gain (0.3, −0.1, 0.0) inside two SEs does not beat the control
    weaker = _curves(method.deletion, [[0.4, 1], [0, 0.6], [0, 0.8], [nan, nan]], method.road_morf[:, 0],
                     status=method.status)
    assert not compare_to_control(weaker, control)["beats_control"]
    # nor does a deletion gain inside two SEs with the insertion gain above
    assert not compare_to_control(_curves([[0.2, 0], [0.8, 0], [0.8, 0], [nan, nan]], method.insertion,
                                          method.road_morf[:, 0], status=method.status), control)["beats_control"]


def test_standard_errors_need_two_images():
    one = _curves([[0.2, 0]], [[0, 1]], [0.1])
    two = _curves([[0.2, 0], [0.4, 0]], [[0, 1], [0, 0.8]], [0.1, 0.3])
    s1, s2 = summarise(one), summarise(two)
    assert s1["deletion_auc"] == pytest.approx(0.1) and s1["deletion_auc_se"] is None and s1["road_morf_se"] is None
    assert s2["deletion_auc_se"] == pytest.approx(0.05) and s2["insertion_auc_se"] == pytest.approx(0.05)
    c1, c2 = compare_to_control(one, one), compare_to_control(two, _curves([[0.4, 0]] * 2, [[0, 0.8]] * 2, [0.3] * 2))
    assert c1["deletion_auc"] == 0.0 and c1["deletion_auc_se"] is None and not c1["beats_control"]
    assert c2["paired_images"] == 2 and c2["deletion_auc_se"] == pytest.approx(0.05)


def test_a_gain_of_exactly_two_standard_errors_does_not_beat_the_control():
    """Paired differences (−0.75, −0.25): mean −0.5, SE 0.25 (dyadic, exact): −0.5 + 2·0.25 = 0 is not below 0."""
    control = _curves([[1, 0.5]] * 2, [[0.5, 0]] * 2, [0.5] * 2)          # deletion AUC 0.75, insertion 0.25
    clear_deletion, clear_insertion = [[0, 0], [0, 0]], [[1, 1], [1, 1]]  # differences −0.75, −0.75 / 0.75, 0.75
    edge = compare_to_control(_curves([[0, 0], [1, 0]], clear_insertion, [0.5] * 2), control)
    assert (edge["deletion_auc"], edge["deletion_auc_se"]) == (-0.5, 0.25) and not edge["beats_control"]
    edge = compare_to_control(_curves(clear_deletion, [[1, 1], [1, 0]], [0.5] * 2), control)
    assert (edge["insertion_auc"], edge["insertion_auc_se"]) == (0.5, 0.25) and not edge["beats_control"]
    assert compare_to_control(_curves(clear_deletion, clear_insertion, [0.5] * 2), control)["beats_control"]


@pytest.mark.parametrize("kwargs,match", [({"steps": 0}, "at least 1"), ({"steps": -3}, "at least 1"),
                                          ({"baseline": "zeros"}, "blur or mean"),
                                          ({"road_fractions": (0.5, 1.0)},
                                           r"every value of road_fractions= must be within \(0, 1\)")])
def test_bad_faithfulness_settings_are_refused(kwargs, match):
    with pytest.raises(InspectnetError, match=match):
        faithfulness_curves(_RegionModel(), torch.rand(1, 1, 8, 8), torch.rand(1, 2, 2), torch.ones(1, dtype=torch.long),
                            FaithfulnessConfig(**kwargs))


def test_baselines_keep_flat_images_and_remove_detail():
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(baseline_images(flat, "blur"), flat) and torch.allclose(baseline_images(flat, "mean"), flat)
    noisy = torch.rand(1, 3, 32, 32)
    assert baseline_images(noisy, "blur").std() < 0.3 * noisy.std()
    assert torch.allclose(baseline_images(noisy, "mean")[0, :, 0, 0], noisy.mean((2, 3))[0])


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (40, 24)])
def test_blur_baseline_is_a_gaussian_of_an_eighth_of_the_shorter_side_with_reflected_borders(size):
    """Parity with scipy: σ = min(H, W)/8, kernel radius ⌈3σ⌉ (scipy's truncate = 3 gives the same radius),
    reflection about the edge pixel (scipy's 'mirror')."""
    import scipy.ndimage

    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = baseline_images(x, "blur").numpy()
    sigma = min(size) / 8
    for b in range(2):
        for c in range(3):
            want = scipy.ndimage.gaussian_filter(x[b, c].numpy(), sigma, mode="mirror", truncate=3.0)
            np.testing.assert_allclose(got[b, c], want, rtol=0, atol=1e-12)


def test_blur_baseline_of_tiny_images_keeps_its_kernel_inside_the_image():
    """The radius ⌈3σ⌉ is capped at the shorter side − 1 (reflection needs it): a 3×3 image keeps radius 2
    (scipy with truncate = 2/σ), a 1-pixel-high strip radius 0 (itself)."""
    import scipy.ndimage

    x = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want = scipy.ndimage.gaussian_filter(x[0, 0].numpy(), 3 / 8, mode="mirror", truncate=2 / (3 / 8))
    np.testing.assert_allclose(baseline_images(x, "blur")[0, 0].numpy(), want, rtol=0, atol=1e-12)
    strip = torch.rand(1, 2, 1, 8, dtype=torch.float64)
    assert torch.equal(baseline_images(strip, "blur"), strip)


def test_default_faithfulness_settings_and_the_smallest_accepted_ones():
    c = FaithfulnessConfig()
    assert (c.steps, c.baseline, c.road_fractions, c.road_noise, c.road_size, c.batch_size, c.seed) == \
        (10, "blur", (0.2, 0.4, 0.6, 0.8), 0.01, 32, 64, 0)
    assert c.passes_per_image() == 2 * 10 + 2 * 4
    small = FaithfulnessConfig(steps=1, batch_size=1, road_fractions=(0.01, 0.99))  # validated when built
    curves = faithfulness_curves(_BrightCountModel(), torch.rand(2, 1, 8, 8), torch.rand(2, 8, 8),
                                 torch.ones(2, dtype=torch.long), small)
    assert curves.fractions == [0.0, 1.0] and curves.forward_passes == 2 * small.passes_per_image()
    with pytest.raises(InspectnetError, match="batch_size= must be at least 1"):
        FaithfulnessConfig(batch_size=0)


def test_average_ranks_and_spearman_match_scipy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 50).astype(float)
    b = rng.random(50)
    np.testing.assert_allclose(average_ranks(a), scipy.stats.rankdata(a))
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic)
    assert spearman(np.ones(4), np.arange(4.0)) == 0.0 and np.isnan(spearman(np.ones(4), np.ones(4)))


def test_cascade_runs_from_the_head_down(tiny_digits_model):
    blocks = cascade_blocks(tiny_digits_model.model, "fc")
    assert blocks[:3] == ["fc", "layer4.1", "layer4.0"] and blocks[-2:] == ["bn1", "conv1"]


def test_randomise_is_seeded_and_leaves_the_global_generator_alone():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    randomise(a, seed=1)
    randomise(b, seed=1)
    assert torch.equal(a.weight, b.weight) and torch.equal(torch.rand(1), expected)


def test_sanity_check_passes_model_dependent_maps_and_fails_the_random_control():
    from inspectnet.data import load_data
    from inspectnet.models.zoo import load_model

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=128)  # 4x4 maps: 16 positions to rank
    before = zm.fingerprint()
    ds = load_data("digits:test", zm.transform())
    x = torch.stack([ds[i][0] for i in range(6)])
    targets = zm.model(x).argmax(1)
    res = cascading_randomisation(zm, x, targets, ["gradcam", "evidence", "random"], indices=range(6), max_steps=3)
    assert res["blocks"][0] == "fc" and res["blocks"][-1] == "conv1" and res["steps"] == [1, 6, 11]
    methods = res["methods"]
    assert methods["random"]["spearman"] == pytest.approx([1.0, 1.0, 1.0]) and methods["random"]["passes"] is False
    for name in ("evidence", "gradcam"):
        assert methods[name]["passes"] and methods[name]["abs_spearman_final"] < 0.5, methods[name]
    assert zm.fingerprint() == before  # the caller's model is never randomised
    maps = explanation_maps("evidence", zm, x, targets, indices=range(6))
    assert maps.shape == (6, 4, 4)


def test_shuffled_labels_keep_images_and_class_counts_but_not_the_pairing():
    from inspectnet.data import load_data
    from inspectnet.data.subsets import shuffle_labels

    ds = load_data("digits:train")
    shuffled = shuffle_labels(ds, seed=0)
    assert sorted(shuffled.labels.tolist()) == sorted(ds.labels.tolist())
    assert (shuffled.labels != ds.labels).mean() > 0.8  # chance keeps ~1 in 10 in place
    assert np.array_equal(np.asarray(shuffled.image(3)), np.asarray(ds.image(3)))
    assert np.array_equal(shuffle_labels(ds, seed=0).labels, shuffled.labels)
    with pytest.raises(InspectnetError, match="unlabelled"):
        shuffle_labels(load_data("digits:train").subset(np.arange(0), "empty"))


def test_data_randomisation_tells_the_label_shuffled_model_from_the_trained_one(tmp_path):
    import copy

    from inspectnet.data import load_data
    from inspectnet.data.subsets import shuffle_labels, spread_subset
    from inspectnet.models.zoo import load_model
    from inspectnet.training.config import TrainConfig
    from inspectnet.training.loop import train

    models = {}
    for kind in ("true", "shuffled"):  # same architecture, initialisation and recipe; only the labels differ
        zm = load_model("test_resnet", num_classes=10, in_chans=1, input_size=64, seed=0)
        fit = spread_subset(load_data("digits:train", zm.transform()), 96)
        train(zm, shuffle_labels(fit, seed=0) if kind == "shuffled" else fit, tmp_path / kind,
              TrainConfig(epochs=3, batch_size=32, seed=0), device="cpu")
        models[kind] = zm
    test = load_data("digits:test", models["true"].transform())
    x, targets = torch.stack([test[i][0] for i in range(6)]), torch.as_tensor(test.labels[:6])
    methods = ["integrated_gradients", "gradcam", "evidence", "random"]
    res = data_randomisation(models["true"], models["shuffled"], x, targets, methods, indices=range(6))["methods"]
    assert res["random"]["spearman"] == pytest.approx(1.0) and res["random"]["passes"] is False
    for name in ("integrated_gradients", "gradcam", "evidence"):
        assert res[name]["spearman"] < 0.95, (name, res[name])  # the two models' maps differ
    same = data_randomisation(models["true"], copy.deepcopy(models["true"]), x, targets, methods, indices=range(6))
    for name, r in same["methods"].items():  # the measure itself: one model's maps twice are identical
        assert r["spearman"] == pytest.approx(1.0) and r["passes"] is False, (name, r)
    with pytest.raises(InspectnetError, match="same model twice"):
        data_randomisation(models["true"], models["true"], x, targets, methods, indices=range(6))


def test_faithfulness_options_refuse_infinite_noise_and_a_road_side_below_one_by_name():
    assert FaithfulnessConfig(road_size=1, road_noise=0.0).road_size == 1  # the smallest side and no noise are fine
    for bad, name in (({"road_noise": float("inf")}, "road_noise"), ({"road_noise": float("nan")}, "road_noise"),
                      ({"road_size": 0}, "road_size")):
        with pytest.raises(InspectnetError, match=f"{name}= must be"):
            FaithfulnessConfig(**bad)


def test_linear_imputation_of_one_removed_pixel_iterates_until_the_residual_is_within_tolerance():
    rng = np.random.default_rng(11)
    image = 0.5 + 0.25 * rng.random((12, 12))  # a range of 0.25: a bound that multiplied instead of divided would show
    known = np.ones((12, 12), bool)
    known[5, 6] = False
    x, k = torch.tensor(image)[None, None], torch.tensor(known)[None, None]
    start = linear_imputation(x, k, max_iterations=0)[0, 0].numpy()
    matrix, rhs = _road_system(image, known)
    first_rms = abs(float((rhs - matrix @ start[~known])[0]))  # one removed pixel: the RMS is the residual itself
    span = image.max() - image.min()
    # a tolerance the start misses by a factor 1.2: the solver must take its (exact) step
    got = linear_imputation(x, k, tolerance=first_rms / (1.2 * span))[0, 0].numpy()
    assert got[5, 6] == pytest.approx(_exact_imputation(image, known)[5, 6], abs=1e-12)
    assert got[5, 6] != pytest.approx(start[5, 6], abs=1e-6)


@pytest.mark.parametrize("shape,size", [((40, 30), 20), ((100, 4), 20), ((4, 100), 20)])
def test_road_fill_of_a_large_input_is_the_exact_solve_on_the_area_averaged_grid_upsampled(shape, size):
    """The literal recipe: the grid of at most ``size`` a side (sides rounded, at least 1), images area-averaged, a
    cell removed when at least half of it is, the system solved exactly there, the solution upsampled bilinearly
    (pixel centres aligned). Removed columns at odd offsets make cells exactly half removed."""
    h, w = shape
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 2, h, w, dtype=torch.float64, generator=g)
    removed = torch.zeros(1, 1, h, w, dtype=torch.bool)
    removed[..., 3:h - 5, 1:max(2, w // 2 + 1)] = True
    small = (round(h * size / max(h, w)) or 1, round(w * size / max(h, w)) or 1)
    kept = torch.nn.functional.interpolate((~removed).double(), size=small, mode="area")[0, 0].numpy() > 0.5
    coarse = torch.nn.functional.interpolate(x, size=small, mode="area")[0].numpy()
    solved = torch.tensor(np.stack([_exact_imputation(c, kept) for c in coarse]))[None]
    want = torch.nn.functional.interpolate(solved, size=shape, mode="bilinear", align_corners=False)
    got = road_fill(x, removed, size=size)
    assert got.shape == x.shape and torch.allclose(got, want, atol=1e-4)


def test_faithfulness_refuses_a_map_count_other_than_the_image_count():
    x = torch.rand(3, 1, 8, 8)
    with pytest.raises(InspectnetError, match="one map and one target per image"):
        faithfulness_curves(_RegionModel(), x, torch.rand(2, 8, 8), torch.ones(3, dtype=torch.long),
                            FaithfulnessConfig(steps=2))
