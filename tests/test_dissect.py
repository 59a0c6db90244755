"""Streaming Network Dissection: quantile sketch, hand-computed IoU, a known red detector, report, bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inspectnet.analysis.dissect.counts import DissectionCounts
from inspectnet.analysis.dissect.dissection import (
    _Items,
    dissect,
    dissection_transform,
    iou_from_counts,
    to_maps,
    unit_overlaps,
)
from inspectnet.analysis.dissect.pages import write_dissection
from inspectnet.analysis.dissect.tail import TailSketch
from inspectnet.analysis.dissect.upsample import CellUpsampler
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


# ---------------------------------------------------------------- one pass = two passes within one bin
@pytest.mark.parametrize("size", [(16, 16, 64, 64), (2, 2, 64, 64), (7, 5, 64, 50), (10, 10, 7, 9), (64, 64, 64, 64)])
def test_cell_upsampler_selects_what_full_upsampling_selects(size):
    h, w, big_h, big_w = size
    torch.manual_seed(0)
    maps = torch.randn(3, 5, h, w).relu()
    maps[0, 0] = 0.7                                                   # a constant map: one flat cell after another
    floors = torch.rand(5) * 0.5
    full = F.interpolate(maps, size=(big_h, big_w), mode="bilinear", align_corners=False)
    expected = full > floors[None, :, None, None]
    got = torch.zeros_like(expected)
    values = torch.zeros_like(full)
    flat = torch.zeros_like(expected)
    for sel in CellUpsampler((h, w), (big_h, big_w)).above(maps, floors):
        got.view(3, 5, -1)[sel.images, sel.units, sel.pixels] = True
        values.view(3, 5, -1)[sel.images, sel.units, sel.pixels] = sel.values
        flat.view(3, 5, -1)[sel.images, sel.units, sel.pixels] = sel.flat
    assert torch.equal(got, expected)
    assert (values[expected] - full[expected]).abs().max() <= 1e-6
    if floors[0] < 0.7:
        assert flat[0, 0].all() and (values[0, 0] == 0.7).all()        # exactly the constant, no rounding above


def _layer_batches(model, data, layer, n, batch_size=32):
    from inspectnet.probe.hooks import Probe

    items = _Items(data, dissection_transform(PLAIN if not hasattr(model, "data_config") else model.data_config),
                   tuple(data.masks(0).shape[1:]), n)
    net = getattr(model, "model", model)
    out = []
    with torch.inference_mode(), Probe(net.eval(), [layer], reducer="full") as probe:
        for x, m, i in torch.utils.data.DataLoader(items, batch_size=batch_size):
            net(x)
            out.append((to_maps(probe.outputs[layer], layer).float().clone(), m, i))
    return out


def _exact_counts(batches, thresholds, mask_size):
    inter, area = 0, 0
    for a, m, _ in batches:
        i_k, a_k = unit_overlaps(a, m.flatten(2), thresholds, mask_size)
        inter, area = inter + i_k, area + a_k
    return inter, area


def _check_within_one_bin(batches, n, mask_size, concepts):
    """The one-pass counts lie between the exact counts at the edges of the bin holding the threshold:
    a fine bin for |S_k|, a concept bin for |S_k ∩ L_c|."""
    counts = DissectionCounts(n, mask_size, concepts, quantile=0.005)
    for a, m, i in batches:
        counts.accumulate({"layer": a}, m, i)
    t = counts.thresholds()["layer"]
    inter, area = counts.overlaps({"layer": t})["layer"]
    s = counts.sketches["layer"]
    fine = s._bin(torch.arange(s.units), t)
    first = fine // s.group * s.group
    edge = lambda b: (s.lo + s.width * b).float()                           # noqa: E731
    area_hi, area_lo = _exact_counts(batches, edge(fine + 1), mask_size)[1], _exact_counts(batches, edge(fine),
                                                                                             mask_size)[1]
    inter_hi, inter_lo = _exact_counts(batches, edge(first + s.group), mask_size)[0], \
        _exact_counts(batches, edge(first), mask_size)[0]
    slack = 1e-6 * (1 + area_lo)
    assert ((area >= area_hi - slack) & (area <= area_lo + slack)).all()
    assert ((inter >= inter_hi - 1e-6) & (inter <= inter_lo + 1e-6)).all()
    exact_inter, exact_area = _exact_counts(batches, t.float(), mask_size)
    return inter, area, exact_inter, exact_area


def test_one_pass_counts_are_the_exact_counts_within_one_bin(shapes_data):
    """Random ResNet-18 on the shapes: flat colour regions give many equal activations (point masses)."""
    from inspectnet.models.zoo import load_model

    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=2, input_size=64)
    for layer in ("layer1", "layer3"):
        batches = _layer_batches(zm, shapes_data, layer, len(shapes_data))
        inter, area, exact_inter, exact_area = _check_within_one_bin(batches, len(shapes_data), (64, 64), 15)
        iou = iou_from_counts(inter, area, torch.tensor(np.stack([shapes_data.masks(i) for i in
                                                                  range(len(shapes_data))]).sum(axis=(0, 2, 3))))
        assert (area > 0).sum() > 0.9 * len(area)                       # the counts are not trivially empty
        assert np.isfinite(iou).all()


def test_one_pass_dissection_equals_two_pass_on_shapes_and_real_lite0(shapes_data, lite0_weights):
    """Same detectors, same concepts, thresholds and IoU within a bin's error of the two-pass dissection (its
    thresholds come from the order-independent sketch, its overlaps are exact)."""
    from inspectnet.models.zoo import load_model

    torch.manual_seed(0)
    cases = [(load_model("resnet18", num_classes=2, input_size=64), "layer1,layer2,layer3,layer4"),
             (load_model("efficientnet_lite0", weights=lite0_weights, input_size=128), "blocks.2,blocks.4,blocks.5")]
    for zm, layers in cases:
        one, two = dissect(zm, shapes_data, layers), dissect(zm, shapes_data, layers, passes=2)
        assert (one.passes, two.passes) == (1, 2)
        for layer in one.layers:
            assert one.layers[layer]["unique_detectors"] == two.layers[layer]["unique_detectors"]
            assert one.layers[layer]["detector_concepts"] == two.layers[layer]["detector_concepts"]
            for u1, u2 in zip(one.layers[layer]["units"], two.layers[layer]["units"]):
                # two sketches' bin widths (each ≤ 2·range/4095, the range a few times the threshold)
                assert abs(u1["threshold"] - u2["threshold"]) <= 5e-3 * max(1.0, abs(u2["threshold"]))
                assert u1["detector"] == u2["detector"]
                if u1["detector"]:
                    assert u1["concept"] == u2["concept"], (layer, u1, u2)
            # within a bin's error (the bracket test above); at most a few hundredths where the threshold
            # cuts a cluster of equal colour-region activations
            diff = np.abs(one.iou[layer] - two.iou[layer])
            assert diff.max() < 0.03 and diff.mean() < 1e-3, (layer, diff.max(), diff.mean())
        assert sum(info["detectors"] for info in one.layers.values()) > 0   # something to agree on


def test_shards_merge_to_the_whole(shapes_data):
    """Counts of two shards, each told the global size, merged: the same result as one pass over all."""
    model = ColourUnits(pool=4)
    batches = _layer_batches(model, shapes_data, "pool", len(shapes_data), batch_size=16)
    n = len(shapes_data)
    whole, left, right = (DissectionCounts(n, (64, 64), 15, quantile=0.01) for _ in range(3))
    for k, (a, m, i) in enumerate(batches):
        whole.accumulate({"pool": a}, m, i)
        (left if k % 2 else right).accumulate({"pool": a}, m, i)
    left._flush(), right._flush()
    left.sketches["pool"].merge(right.sketches["pool"])
    t_whole, t_merged = whole.thresholds()["pool"], left.thresholds()["pool"]
    assert torch.allclose(t_whole, t_merged, atol=float(left.sketches["pool"].width.max()))
    i_whole, a_whole = whole.overlaps({"pool": t_whole})["pool"]
    i_merged, a_merged = left.overlaps({"pool": t_whole})["pool"]
    assert torch.allclose(a_whole, a_merged, rtol=0.05) and torch.allclose(i_whole, i_merged, rtol=0.05, atol=2)


def _gloo_worker(rank, world, port, batches, n, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    counts = DissectionCounts(n, (64, 64), 15, quantile=0.01)
    for k, (a, m, i) in enumerate(batches):
        if k % world == rank:
            counts.accumulate({"pool": a}, m, i)
    counts.all_reduce()
    t = counts.thresholds()["pool"]
    inter, area = counts.overlaps({"pool": t})["pool"]
    torch.save({"t": t, "inter": inter, "area": area, "top": counts.tops["pool"][0], "mask": counts.mask_area},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (~20 s on the loaded 2-core machine)
def test_gloo_all_reduce_matches_one_process(tmp_path, shapes_data):
    import socket

    import torch.multiprocessing as mp

    batches = _layer_batches(ColourUnits(pool=4), shapes_data, "pool", len(shapes_data), batch_size=16)
    n = len(shapes_data)
    one = DissectionCounts(n, (64, 64), 15, quantile=0.01)
    for a, m, i in batches:
        one.accumulate({"pool": a}, m, i)
    t = one.thresholds()["pool"]
    inter, area = one.overlaps({"pool": t})["pool"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_gloo_worker, args=(2, port, batches, n, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["t"], ranks[1]["t"]) and torch.equal(ranks[0]["area"], ranks[1]["area"])
    width = float(one.sketches["pool"].width.max()) * 2
    assert torch.allclose(ranks[0]["t"], t, atol=width)
    assert torch.allclose(ranks[0]["area"], area, rtol=0.05) and torch.allclose(ranks[0]["inter"], inter, rtol=0.05,
                                                                                  atol=2)
    assert torch.equal(ranks[0]["mask"], one.mask_area)
    assert torch.equal(ranks[0]["top"], one.tops["pool"][0])          # the same top activations (ties may swap images)


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
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=2)
    t = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    m = to_maps(t, "blocks.0", vit)
    assert m.shape == (2, 3, 4, 4) and m[0, 1, 0, 1] == t[0, 2, 1]


def test_vit_model_dissects(shapes_data):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=2)
    d = dissect(vit, shapes_data, "blocks.0", data_config=PLAIN, limit=8, batch_size=8)
    assert d.layers["blocks.0"]["map_size"] == [4, 4] and d.layers["blocks.0"]["num_units"] == 192


# ---------------------------------------------------------------- bad input
def test_passes_must_be_one_or_two(shapes_data):
    with pytest.raises(InspectnetError, match="passes= must be 1 or 2, got 3"):
        dissect(ColourUnits(), shapes_data, "conv", data_config=PLAIN, limit=4, passes=3)


def test_one_pass_refuses_concept_counts_too_large_for_memory(shapes_data, monkeypatch):
    import inspectnet.analysis.dissect.counts as counts

    monkeypatch.setattr(counts, "MAX_CONCEPT_COUNT_BYTES", 1000)
    with pytest.raises(InspectnetError, match="layer 'conv'.*passes=2"):
        dissect(ColourUnits(), shapes_data, "conv", data_config=PLAIN, limit=4)
    assert dissect(ColourUnits(), shapes_data, "conv", data_config=PLAIN, limit=4, passes=2).passes == 2


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


class PositionUnits(nn.Module):
    """Maps that ignore the image: unit 0 is each pixel's raster position (0 … 4095 on 64×64, the same in every
    image), unit 1 its square (a skewed distribution); their quantiles over the dataset are known exactly."""

    def __init__(self):
        super().__init__()
        self.ramp = nn.Identity()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        pos = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(len(x), 1, 64, 64)
        maps = self.ramp(torch.cat([pos, pos ** 2 / 4095], dim=1) + 0 * x[:, :1])
        return self.fc(maps.mean((2, 3)))


@pytest.mark.parametrize("passes", [1, 2])
def test_default_threshold_keeps_the_top_half_percent_of_known_activations(shapes_data, passes):
    """T_k is the 0.995 quantile of every pixel's activation: positions 0 … 4095 (each in all images) give
    T = 4074.525 (numpy, linear); the squares give that value's square / 4095. The top 0.5 % are the last 20 or
    21 positions of every image (T within one bin): the unit's region is the same pixels in all 40 images."""
    d = dissect(PositionUnits(), shapes_data, "ramp", data_config=PLAIN, batch_size=20, limit=40, passes=passes)
    assert d.quantile == 0.005
    pos = np.arange(4096.0)
    expected = np.quantile(pos, 0.995)
    units = d.layers["ramp"]["units"]
    assert units[0]["threshold"] == pytest.approx(expected, abs=4096 / 4095 + 1e-6)       # within one fine bin
    assert units[1]["threshold"] == pytest.approx(np.quantile(pos ** 2 / 4095, 0.995), abs=4096 / 4095 + 1e-6)
    # the same pixels, whichever concept: IoU with each concept follows from the last 20 positions alone
    masks = np.stack([shapes_data.masks(i) for i in range(40)]).reshape(40, len(d.concepts), -1)
    active = pos > units[0]["threshold"]
    assert active.sum() in (20, 21) and active[-1] and not active[-22]
    inter = masks[:, :, active].sum(axis=(0, 2))
    union = 40 * active.sum() + masks.sum(axis=(0, 2)) - inter
    np.testing.assert_allclose(d.iou["ramp"][0], inter / np.maximum(union, 1), atol=1e-6)


# ---------------------------------------------------------------- the one-pass counts' bookkeeping
def test_one_pass_counts_on_oblong_maps_and_masks_lie_within_one_bin_of_the_exact_counts():
    """Maps 6×10 under masks 12×20 (height and width differ everywhere), continuous values, random masks."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, 30, 10):
        a = torch.rand(10, 4, 6, 10, generator=g) ** 2
        m = torch.rand(10, 3, 12, 20, generator=g) < 0.3
        batches.append((a, m, torch.arange(start, start + 10)))
    inter, area, exact_inter, exact_area = _check_within_one_bin(batches, 30, (12, 20), 3)
    assert (exact_area > 0).any() and (exact_inter > 0).any()  # the bracket above is not about empty counts


def test_top_images_keep_the_largest_values_ties_to_the_smaller_index_padding_dropped():
    from inspectnet.analysis.dissect.counts import best_images, no_images, padded_top

    vals = torch.tensor([[1.0, 3.0, float("-inf"), 3.0, 0.5, 2.0]])
    ids = torch.tensor([[0, 9, -1, 2, 7, 4]])           # image 0 is real; -1 is padding
    v, i = best_images(vals, ids, 4)
    assert v.tolist() == [[3.0, 3.0, 2.0, 1.0]] and i.tolist() == [[2, 9, 4, 0]]
    v, i = best_images(vals, ids, 9)                    # more asked than real images: padding never kept
    assert i.tolist() == [[2, 9, 4, 0, 7]]
    assert [t.shape for t in best_images(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), 2)] == [(0, 0)] * 2
    empty = no_images(3, "cpu")
    assert [tuple(t.shape) for t in empty] == [(3, 0), (3, 0)]
    v, i = padded_top((torch.tensor([[5.0, 4.0]]), torch.tensor([[8, 1]])), 4)
    assert v.tolist() == [[5.0, 4.0, float("-inf"), float("-inf")]] and i.tolist() == [[8, 1, -1, -1]]


def test_a_batch_takes_the_bytes_of_its_maps_and_masks():
    from inspectnet.analysis.dissect.counts import _size

    maps = {"a": torch.zeros(2, 3, 4, 5), "b": torch.zeros(2, 1, 2, 2, dtype=torch.float64)}
    assert _size(maps, torch.zeros(2, 7, 8, 9, dtype=torch.bool)) == 2 * 3 * 20 * 4 + 2 * 4 * 8 + 2 * 7 * 72


def test_concept_counts_that_just_fit_the_memory_limit_are_kept_one_byte_more_is_refused(monkeypatch):
    import inspectnet.analysis.dissect.counts as counts
    from inspectnet.analysis.dissect.tail import CONCEPT_GROUP

    units, concepts, bins = 3, 5, 4096
    need = units * concepts * (bins // CONCEPT_GROUP) * 2 * 4       # two int32 counts per unit, concept and group
    batch = ({"conv": torch.rand(2, units, 2, 2)}, torch.ones(2, concepts, 4, 4, dtype=torch.bool), torch.arange(2))
    monkeypatch.setattr(counts, "MAX_CONCEPT_COUNT_BYTES", need)
    counts.DissectionCounts(2, (4, 4), concepts, quantile=0.5, bins=bins).accumulate(*batch)
    monkeypatch.setattr(counts, "MAX_CONCEPT_COUNT_BYTES", need - 1)
    with pytest.raises(InspectnetError, match="one-pass concept counts of 3 units × 5 concepts"):
        counts.DissectionCounts(2, (4, 4), concepts, quantile=0.5, bins=bins).accumulate(*batch)
    # the first of two passes keeps no concept counts: never refused
    counts.DissectionCounts(2, (4, 4), concepts, quantile=0.5, bins=bins, overlaps=False).accumulate(*batch)


def test_batches_wait_until_their_bytes_pass_the_hold_limit(monkeypatch):
    import inspectnet.analysis.dissect.counts as counts

    batch = ({"conv": torch.rand(2, 3, 2, 2)}, torch.ones(2, 1, 4, 4, dtype=torch.bool))
    size = counts._size(*batch)
    monkeypatch.setattr(counts, "HOLD_BYTES", 2 * size)               # two batches may wait, not three
    c = counts.DissectionCounts(8, (4, 4), 1, quantile=0.5)
    held = []
    for start in range(0, 8, 2):
        c.accumulate(*batch, torch.arange(start, start + 2))
        held.append((len(c._held), c._held_bytes))
    assert held == [(1, size), (2, 2 * size), (2, 2 * size), (2, 2 * size)]
    c.thresholds()
    assert (len(c._held), c._held_bytes) == (0, 0)


@pytest.mark.parametrize("bins, group, accepted", [(32, 16, True), (48, 16, True), (4096, 16, True), (16, 16, False),
                                                   (40, 16, False), (48, 12, False), (24, 8, True), (8, 8, False)])
def test_sketch_bins_must_be_a_multiple_of_a_power_of_two_group_and_at_least_two_groups(bins, group, accepted):
    make = lambda: TailSketch(units=1, total=10, quantile=0.5, bins=bins, group=group)  # noqa: E731
    if accepted:
        assert make().bins == bins
    else:
        with pytest.raises(InspectnetError, match=f"multiple of {group} and ≥ {2 * group}, got {bins}"):
            make()


@pytest.mark.parametrize("q", [0.0, 1.0, 1.5, -0.1])
def test_sketch_quantile_outside_zero_one_is_refused(q):
    with pytest.raises(InspectnetError, match="quantile must be within"):
        TailSketch(units=1, total=10, quantile=q)


def test_sketch_defaults_are_4096_bins_in_groups_of_16_thresholds_only():
    s = TailSketch(units=2, total=100, quantile=0.25)
    assert (s.bins, s.group, s.up, s.inside) == (4096, 16, None, None)
    assert s.raw_groups.shape == (2, 256)
