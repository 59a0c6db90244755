"""Streaming Network Dissection: quantile sketch, hand-computed IoU, a known red detector, report, bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inspectnet.analysis.dissect.dissection import dissect, iou_from_counts, to_maps, unit_overlaps, write_dissection
from inspectnet.analysis.dissect.sketch import TailSketch
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.data.concepts import ArrayConcepts, load_concepts

PLAIN = {"input_size": (3, 64, 64), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


class ColourUnits(nn.Module):
    """Fixed 1×1 filters on [0, 1] RGB: unit 0 = R − G − B (red), unit 1 = G − R − B (green), unit 2 dead.

    With ``pool`` the maps are average-pooled (lower resolution, so dissection must upsample them).
    """

    def __init__(self, pool: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1., -1, -1], [-1, 1, -1], [0, 0, 0]])[:, :, None, None])
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def shapes_data():
    return load_concepts("shapes?n=96&seed=1")


# ---------------------------------------------------------------- streaming quantile
@pytest.mark.parametrize("q", [0.5, 0.1, 0.005])
def test_streaming_quantile_matches_numpy_within_one_bin(q):
    rng = np.random.default_rng(0)
    batches = []
    for i in range(12):  # the range grows upwards and downwards as batches arrive
        scale = 1.0 + i
        relu = np.maximum(rng.standard_normal(3000) * scale, 0)          # mostly zeros, like ReLU maps
        heavy = rng.standard_cauchy(3000) * 0.1 - i                       # heavy tails, drifting down
        const = np.full(3000, 2.5)                                        # a constant unit
        batches.append(np.stack([relu, heavy, const]).astype(np.float32))
    values = np.concatenate(batches, axis=1)
    sketch = TailSketch(3, values.shape[1], q, bins=2048)
    for b in batches:
        sketch.update(torch.from_numpy(b))
    exact = np.quantile(values.astype(np.float64), 1 - q, axis=1)
    est = sketch.threshold().numpy()
    width = sketch.width.numpy()
    assert np.all(np.abs(est - exact) <= width + 1e-9), (est, exact, width)
    assert est[2] == 2.5
    # only the tail is binned (about q·(1 + ln 12) of the values), never fewer than the top q·N
    kept = sketch.raw.counts.sum(dim=1).numpy()
    assert np.all(kept >= q * values.shape[1]), kept
    if q < 0.5:
        assert kept[1] < 4 * q * values.shape[1], kept


def test_floor_never_passes_the_final_threshold():
    """Sorted data (the largest values last) is the worst case for a floor set from early batches."""
    values = torch.arange(20000, dtype=torch.float32).reshape(1, -1)
    sketch = TailSketch(1, 20000, 0.005, bins=256)
    for chunk in values.split(1000, dim=1):
        sketch.update(chunk)
        assert sketch.floor.item() <= 19900
    assert abs(sketch.threshold().item() - np.quantile(values.numpy(), 0.995)) <= sketch.width.item()
    reversed_sketch = TailSketch(1, 20000, 0.005, bins=256)
    for chunk in values.flip(1).split(1000, dim=1):                      # the largest first: floor set at once
        reversed_sketch.update(chunk)
    assert reversed_sketch.floor.item() >= 19800
    assert reversed_sketch.raw.counts.sum().item() < 200


def test_quantile_sketch_rejects_nan_and_miscounts():
    sketch = TailSketch(1, 4, 0.005, bins=32)
    with pytest.raises(InspectnetError, match="NaN"):
        sketch.update(torch.tensor([[1.0, float("nan")]]))
    sketch = TailSketch(1, 4, 0.005, bins=32)
    sketch.update(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(InspectnetError, match="holds 2 of the 4 values"):
        sketch.threshold()
    with pytest.raises(InspectnetError, match="told of 4 values"):
        sketch.update(torch.tensor([[1.0, 2.0, 3.0]]))


# ---------------------------------------------------------------- IoU by hand
def test_iou_hand_computed_is_dataset_sum_not_mean():
    # two 2×2 images, one unit, threshold 0.5; concept A masks given below
    maps = torch.tensor([[[[1., 0.], [0., 0.]]], [[[1., 1.], [1., 1.]]]])   # active: 1 px, then 4 px
    masks = torch.tensor([[[1., 1., 0., 0.]], [[1., 0., 0., 0.]]])           # concept: 2 px, then 1 px
    inter, area = unit_overlaps(maps, masks, torch.tensor([0.5]), (2, 2))
    assert inter.tolist() == [[2.0]] and area.tolist() == [5.0]
    iou = iou_from_counts(inter, area, masks.sum(dim=(0, 2)))
    # Σ∩ = 1 + 1 = 2, Σ∪ = 2 + 4 = 6 -> 1/3 (the per-image mean would be (1/2 + 1/4) / 2 = 0.375)
    assert iou[0, 0] == pytest.approx(1 / 3)
    empty = iou_from_counts(torch.zeros(1, 1), torch.zeros(1), torch.zeros(1))
    assert empty[0, 0] == 0.0


def test_bilinear_upsampling_is_pinned():
    maps = torch.tensor([[[[0., 1.], [0., 1.]]]])
    inter, area = unit_overlaps(maps, torch.ones(1, 1, 16), torch.tensor([0.5]), (4, 4))
    # align_corners=False: columns sample 0, .25, .75, 1 -> two of four columns exceed 0.5
    assert area.item() == 8.0


# ---------------------------------------------------------------- known detectors
def test_red_unit_detects_exactly_red(shapes_data):
    """Top 10 % of pixels covers every red pixel (≈ 4 % of all) and nothing else: IoU with 'red' is 1."""
    d = dissect(ColourUnits(), shapes_data, "conv", data_config=PLAIN, quantile=0.1, batch_size=32)
    units = d.layers["conv"]["units"]
    assert (units[0]["concept"], units[0]["category"]) == ("red", "colour")
    assert units[0]["iou"] == pytest.approx(1.0) and units[0]["detector"]
    assert units[1]["concept"] == "green" and units[1]["iou"] == pytest.approx(1.0)
    assert not units[2]["detector"] and units[2]["iou"] == 0.0           # the dead unit detects nothing
    assert d.layers["conv"]["unique_detectors"] == 2
    assert d.layers["conv"]["unique_by_category"] == {"colour": 2, "shape": 0, "colour-shape": 0}
    red_sq = d.concepts.index("red-square")
    assert d.iou["conv"][0, red_sq] < 0.6                                   # a part of red, not red itself


def _reference_iou(model, data, layer_maps, q, n):
    """Dissection written plainly: every map in memory, exact numpy quantile, per-image set ops."""
    from inspectnet.analysis.dissect.dissection import dissection_transform

    t = dissection_transform(PLAIN)
    x = torch.stack([t(data.image(i)) for i in range(n)])
    with torch.no_grad():
        maps = layer_maps(x)                                                # (N, K, h, w)
    thr = np.quantile(maps.transpose(0, 1).reshape(maps.shape[1], -1).numpy(), 1 - q, axis=1)
    up = F.interpolate(maps, size=(64, 64), mode="bilinear", align_corners=False).numpy()
    active = up > thr[None, :, None, None]
    masks = np.stack([data.masks(i) for i in range(n)])
    inter = np.einsum("nkhw,nchw->kc", active.astype(np.int64), masks.astype(np.int64))
    union = active.sum(axis=(0, 2, 3))[:, None] + masks.sum(axis=(0, 2, 3))[None, :] - inter
    return inter / np.maximum(union, 1)


def test_upsampled_red_unit_matches_reference_at_default_quantile(shapes_data):
    """Stride-4 maps, q = 0.005: IoU equals a plain all-in-memory implementation, red still wins."""
    model = ColourUnits(pool=4)
    d = dissect(model, shapes_data, "pool", data_config=PLAIN, batch_size=20)
    ref = _reference_iou(model, shapes_data, lambda x: model.pool(model.conv(x)), 0.005, len(shapes_data))
    got = d.iou["pool"]
    assert np.abs(got[:2] - ref[:2]).max() < 0.02, (got[:2].max(1), ref[:2].max(1))
    assert d.layers["pool"]["units"][0]["concept"] in ("red", "red-square", "red-circle", "red-triangle")
    assert d.layers["pool"]["units"][0]["category"] in ("colour", "colour-shape")
    assert d.concepts[int(ref[0].argmax())] == d.layers["pool"]["units"][0]["concept"]


def test_same_result_with_any_batch_size(shapes_data):
    a = dissect(ColourUnits(pool=2), shapes_data, "pool", data_config=PLAIN, batch_size=7, limit=40)
    b = dissect(ColourUnits(pool=2), shapes_data, "pool", data_config=PLAIN, batch_size=40, limit=40)
    assert np.allclose(a.iou["pool"], b.iou["pool"], atol=1e-3)
    assert a.num_images == 40


def test_vit_tokens_reshaped_to_grid():
    t = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    m = to_maps(t, "blocks.0", prefix_tokens=1)
    assert m.shape == (2, 3, 4, 4) and m[0, 1, 0, 1] == t[0, 2, 1]


def test_vit_model_dissects(shapes_data):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=2)
    d = dissect(vit, shapes_data, "blocks.0", data_config=PLAIN, limit=8, batch_size=8)
    assert d.layers["blocks.0"]["map_size"] == [4, 4] and d.layers["blocks.0"]["num_units"] == 192


# ---------------------------------------------------------------- bad input
def test_layer_without_spatial_maps_is_refused(shapes_data):
    with pytest.raises(InspectnetError, match="no spatial maps"):
        dissect(ColourUnits(), shapes_data, "fc", data_config=PLAIN, limit=4)
    with pytest.raises(InspectnetError, match="pre_logits"):
        dissect(ColourUnits(), shapes_data, "pre_logits", data_config=PLAIN, limit=4)


def test_concept_without_pixels_is_reported_not_divided(shapes_data):
    images = np.stack([np.asarray(shapes_data.image(i)) for i in range(16)])
    masks = np.stack([shapes_data.masks(i) for i in range(16)])
    masks[:, 0] = False                                                      # 'red' never present
    data = ArrayConcepts("no-red", images, masks, shapes_data.concepts, shapes_data.categories)
    with pytest.warns(UserWarning, match="without positive pixels.*red"):
        d = dissect(ColourUnits(), data, "conv", data_config=PLAIN, quantile=0.1)
    assert d.empty_concepts == ["red"]
    assert np.isfinite(d.iou["conv"]).all() and (d.iou["conv"][:, 0] == 0).all()
    assert d.layers["conv"]["units"][0]["concept"] != "red"


# ---------------------------------------------------------------- report and command
def test_report_files_and_escaping(tmp_path, shapes_data):
    cats = {c: ("<script>alert(1)</script>" if c == "red" else k) for c, k in shapes_data.categories.items()}
    images = np.stack([np.asarray(shapes_data.image(i)) for i in range(24)])
    masks = np.stack([shapes_data.masks(i) for i in range(24)])
    data = ArrayConcepts("shapes & <b>", images, masks, shapes_data.concepts, cats)
    d = dissect(ColourUnits(), data, "conv", data_config=PLAIN, quantile=0.1)
    paths = write_dissection(d, tmp_path, model=ColourUnits(), data=data, data_config=PLAIN)
    doc = json.loads(paths["json"].read_text())
    assert doc["layers"]["conv"]["units"][0]["concept"] == "red" and "iou" not in doc
    page = (tmp_path / "dissection_conv.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "shapes &amp; &lt;b&gt;" in page and page.count("data:image/png;base64,") >= 3
    assert 'class="sortable"' in page
    assert np.load(paths["iou"])["conv"].shape == (3, 15)
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("layer,unit,concept") and len(rows) == 4


def test_csv_round_trips_names_with_commas_quotes_and_newlines(tmp_path, shapes_data):
    import csv

    cats = {c: 'colour, "warm"\nor not' if c == "red" else k for c, k in shapes_data.categories.items()}
    images = np.stack([np.asarray(shapes_data.image(i)) for i in range(24)])
    masks = np.stack([shapes_data.masks(i) for i in range(24)])
    d = dissect(ColourUnits(), ArrayConcepts("s", images, masks, shapes_data.concepts, cats), "conv",
                data_config=PLAIN, quantile=0.1)
    with open(write_dissection(d, tmp_path)["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    units = d.layers["conv"]["units"]
    assert [(r["layer"], int(r["unit"]), r["concept"], r["category"]) for r in rows] == \
        [("conv", u["unit"], u["concept"], u["category"]) for u in units]
    assert rows[0]["category"] == 'colour, "warm"\nor not'
    assert [float(r["iou"]) for r in rows] == pytest.approx([u["iou"] for u in units], abs=1e-6)


def test_cli_dissect_writes_report(tmp_path, capsys):
    out = tmp_path / "d"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["dissect", "resnet18", "shapes?n=16", "--num-classes", "2", "--input-size", "32",
                   "--layers", "conv1,layer1", "--out", str(out), "--batch-size", "8", "--max-units", "8"])
    assert rc == 0
    assert "conv1:" in capsys.readouterr().out
    doc = json.loads((out / "dissection.json").read_text())
    assert set(doc["layers"]) == {"conv1", "layer1"} and doc["num_images"] == 16
    assert (out / "dissection_layer1.html").is_file()
    assert main(["dissect", "resnet18", "shapes?n=4", "--num-classes", "2", "--input-size", "32",
                 "--layers", "fc", "--out", str(out / "x")]) == 2
    assert "no spatial maps" in capsys.readouterr().err
