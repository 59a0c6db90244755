"""The photos100 source: crops of the ai-benchmark package's 100 photos, labelled by eye with ImageNet classes."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from inspectnet.data import load_data, parse_data_spec
from inspectnet.data.labels import imagenet_names

# the package imports tensorflow: found, never imported
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ai_benchmark") is None,
                                reason="photos100 needs the ai-benchmark package (the examples extra)")

IMAGENET = imagenet_names()
LABELS_CSV = Path(__file__).parent.parent / "inspectnet" / "data" / "photos100_labels.csv"


def test_spec_names_the_label_set_crops_and_seed():
    assert parse_data_spec("photos100:test?labels=all&crops=5&seed=2") == (
        "photos100", "test", {"labels": "all", "crops": "5", "seed": "2"})
    ds = load_data("photos100:train?labels=all&crops=5&seed=2")
    assert (len(ds), len(ds.class_names), ds.label_set) == (400, 100, "all")
    assert ds.spec == "photos100:train?labels=all&crops=5&seed=2"
    for spec, match in (("photos100?labels=likely", "labels=likely is unknown"),
                        ("photos100?label=all", "parameter 'label' is unknown"),
                        ("photos100?crops=1", "crops=1 is too small")):
        with pytest.raises(InspectnetError, match=match):
            load_data(spec)


def test_sure_photos_by_default_all_on_request():
    sure, every = load_data("photos100"), load_data("photos100?labels=all")
    assert (len(sure.class_names), len(sure), sure.label_set) == (82, 820, "sure")
    assert (len(every.class_names), len(every), every.label_set) == (100, 1000, "all")
    assert np.bincount(sure.labels).tolist() == [10] * 82  # one photo per class, ten crops of each
    # 1.jpg (birdhouse) is only "likely" and 12.jpg (a motor boat called canoe) has no fitting class
    assert "n02843684" not in sure.class_names and "n02951358" not in sure.class_names
    assert {"n02843684", "n02951358"} <= set(every.class_names)
    # a photo's crops do not depend on the label set: the sure crops are among all crops
    sure_crops = {(sure.name(i), sure.items[i][1]) for i in range(len(sure))}
    assert sure_crops <= {(every.name(i), every.items[i][1]) for i in range(len(every))}
    # the property survives the audit's subsets and the mapping onto a model's classes
    from inspectnet.data.subsets import spread_subset

    assert spread_subset(sure, 5).aligned_to(IMAGENET).label_set == "sure"
    assert load_data("photos").label_set is None


def test_labels_are_wordnet_ids_mapped_to_the_right_imagenet_classes():
    ds = load_data("photos100:test?labels=all", model_classes=IMAGENET)
    by_photo = {ds.name(i).split("_")[0]: int(ds.labels[i]) for i in range(len(ds))}
    # checked by hand against ImageNet-1k's class list (0-based index: name)
    hand = {"0": 130, "2": 386, "5": 393, "12": 472, "19": 1, "27": 555}
    assert {k: by_photo[k] for k in hand} == hand
    assert [IMAGENET[hand[k]] for k in ("0", "19", "27")] == ["flamingo", "goldfish", "fire engine"]
    with open(LABELS_CSV, encoding="utf-8", newline="") as fh:  # and every row's index column agrees
        assert by_photo == {row["file"].removesuffix(".jpg"): int(row["index"]) for row in csv.DictReader(fh)}


def test_fit_and_eval_crops_never_share_a_crop():
    train, test, whole = (load_data(f"photos100{s}?crops=7&seed=3") for s in (":train", ":test", ""))
    assert (len(train), len(test), len(whole)) == (82 * 6, 82 * 1, 82 * 7)  # round(0.8 * 7) = 6 to fit
    crops = [(k, box) for k, box, _ in whole.items]
    assert len(set(crops)) == len(crops)
    fit, ev = {(k, box) for k, box, _ in train.items}, {(k, box) for k, box, _ in test.items}
    assert not fit & ev and fit | ev == set(crops)
    assert {train.name(i) for i in range(len(train))}.isdisjoint(test.name(i) for i in range(len(test)))
    two = load_data("photos100:test?crops=2")
    assert len(two) == 82  # two crops a photo: one to fit, one to evaluate
    again = load_data("photos100:test?crops=7&seed=3")
    assert np.array_equal(np.asarray(test.image(40)), np.asarray(again.image(40)))
    assert load_data("photos100:test?crops=7&seed=4").items != test.items


@pytest.mark.slow
def test_lite0_top1_on_the_crops_is_what_predict_gives(tmp_path, capsys, lite0_weights):
    """The shipped Lite0's top-1 on the in-memory crops (a probe record, as the audit makes) equals
    ``inspectnet predict`` on the same crops written as files."""
    from inspectnet import run_probe
    from inspectnet.models.zoo import load_model

    spec = "photos100:test?crops=3"
    assert main(["folder", spec, "--out", str(tmp_path / "crops")]) == 0
    files = sorted((tmp_path / "crops").rglob("*.png"))
    capsys.readouterr()
    assert main(["predict", "shipped:efficientnet_lite0", *map(str, files), "--topk", "1", "--json"]) == 0
    top1 = {Path(r["image"]).stem: r["top"][0]["index"] for r in json.loads(capsys.readouterr().out)}
    zm = load_model("shipped:efficientnet_lite0")
    data = load_data(spec, zm.transform(), model_classes=zm.class_names)
    record = run_probe(zm, data, "blocks.6", tmp_path / "rec", show_progress=False)
    assert len(top1) == len(data) == 82
    assert {data.name(i): int(p) for i, p in enumerate(record.predictions)} == top1
    with open(LABELS_CSV, encoding="utf-8", newline="") as fh:
        index = {row["file"].removesuffix(".jpg"): int(row["index"]) for row in csv.DictReader(fh)}
    expected = np.mean([top1[name] == index[name.split("_")[0]] for name in top1])
    assert record.accuracy() == pytest.approx(expected)
    assert 0.5 < record.accuracy() < 1.0  # a real ImageNet model on real photos: mostly, not all, right
    assert record.manifest["data"]["label_set"] == "sure"
