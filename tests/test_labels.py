"""Label alignment: a dataset's classes are mapped onto a model's classes by WordNet id, name or
class map, never by silent folder order; what cannot be mapped is refused with one line naming it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from inspectnet import InspectnetError, load_data, load_model
from inspectnet.cli import main
from inspectnet.data.datasets import FolderDataset, write_folder
from inspectnet.data.labels import (
    align_classes,
    imagenet_names,
    is_placeholder,
    normalize,
    placeholder_names,
    read_class_map,
)
from inspectnet.data.sources import LABELLED_PHOTOS
from inspectnet.probe.recorder import run_probe

IMAGENET = imagenet_names()


def test_imagenet_names_are_timms_descriptions_read_without_importing_timm():
    import timm.data

    info = timm.data.ImageNetInfo()
    assert IMAGENET == [info.index_to_description(i).split(",")[0] for i in range(1000)]
    code = ("import sys\nfrom inspectnet.data.labels import align_classes, imagenet_names\n"
            "m = align_classes(['n02123045', 'tabby cat'], imagenet_names(), class_map={'tabby cat': 282})\n"
            "assert m.indices == [281, 282], m.indices\n"
            "assert not any(k.split('.')[0] in ('torch', 'timm') for k in sys.modules), 'torch or timm imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("folder, index, via", [
    ("n02123045", 281, "WordNet id"), ("tabby", 281, "model class name"), ("Tabby_Cat", 281, "ImageNet synonym"),
    ("tabby cat", 281, "ImageNet synonym"), ("Egyptian_cat", 285, "model class name"),
    ("egyptian-cat", 285, "model class name"), ("espresso", 967, "model class name"),
])
def test_imagenet_folders_map_by_wnid_name_or_synonym(folder, index, via):
    m = align_classes([folder], IMAGENET)
    assert (m.indices, m.via, m.method) == ([index], [via], "by name")


def test_mapping_applies_to_labels_and_describes_itself():
    m = align_classes(["n07920052", "n02123045"], IMAGENET)
    assert m.apply(np.array([0, 1, -1, 1])).tolist() == [967, 281, -1, 281]
    assert m.describe()["classes"][1] == {"data": "n02123045", "index": 281, "model_class": "tabby",
                                          "via": "WordNet id"}
    assert m.identity() == {"method": "by name", "classes": {"n07920052": 967, "n02123045": 281},
                            "num_model_classes": 1000}


def test_placeholder_names_keep_index_order_only_for_equal_counts():
    m = align_classes(["b", "a", "c"], placeholder_names(3))
    assert m.indices == [0, 1, 2] and m.index_order and m.method == "index order"
    assert is_placeholder(placeholder_names(4)) and not is_placeholder(["a"])
    with pytest.raises(InspectnetError, match=r"placeholder class names .* index order needs exactly 4"):
        align_classes(["a", "b", "c"], placeholder_names(4))


def test_unmatched_classes_are_refused_naming_them_and_the_closest_names():
    with pytest.raises(InspectnetError) as err:
        align_classes(["n02123045", "tabbby", "espreso_cup"], IMAGENET, what="data 'photos/'")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data 'photos/': 2 classes 'tabbby'")
    assert "closest: tabby (281, n02123045)" in msg and "espresso (967, n07920052)" in msg
    assert "--class-map" in msg and "n02123045'" not in msg


def test_names_of_several_classes_are_refused_as_ambiguous():
    with pytest.raises(InspectnetError, match=r"'crane' could be crane \(134, n02012849\) or crane \(517, n03126707\)"):
        align_classes(["crane"], IMAGENET)


def test_two_folders_on_one_class_are_refused_unless_the_class_map_says_so():
    with pytest.raises(InspectnetError, match=r"classes 'n02123045', 'tabby' all map to model class tabby \(281"):
        align_classes(["n02123045", "tabby"], IMAGENET)
    m = align_classes(["n02123045", "tabby"], IMAGENET, class_map={"n02123045": 281, "tabby": "tabby cat"})
    assert m.indices == [281, 281] and m.via == ["class map", "class map"]


def test_class_map_indices_names_and_mistakes():
    m = align_classes(["cats", "cups"], IMAGENET, class_map={"cats": 285, "cups": "n07930864"})
    assert m.indices == [285, 968]
    with pytest.raises(InspectnetError, match=r"'cats' maps to index 1000, but the model has 1000 classes \(0-999\)"):
        align_classes(["cats"], IMAGENET, class_map={"cats": 1000})
    with pytest.raises(InspectnetError, match="maps to True; expected a model class index or name"):
        align_classes(["cats"], IMAGENET, class_map={"cats": True})
    with pytest.raises(InspectnetError, match=r"'cats' maps to 'kitten', which matches no class"):
        align_classes(["cats"], IMAGENET, class_map={"cats": "kitten"})
    with pytest.raises(InspectnetError, match=r"--class-map names 'dogs', which data does not have"):
        align_classes(["cats"], IMAGENET, class_map={"cats": 281, "dogs": 207})
    # evaluation data may hold only some of the classes the map names
    assert align_classes(["cats"], IMAGENET, class_map={"cats": 281, "dogs": 207}, strict=False).indices == [281]


def test_class_map_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "map.json"
    bad.write_text("{not json")
    with pytest.raises(InspectnetError, match="is not valid JSON"):
        read_class_map(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InspectnetError, match="must be a non-empty JSON object"):
        read_class_map(bad)
    bad.write_text('{"cats": 281}')
    assert read_class_map(bad) == {"cats": 281}


def _folder(root, classes, per_class=2, size=20):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(10 * c + i)
            Image.fromarray(rng.integers(0, 255, (size, size + 3, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_record_probed_with_one_mapping_is_not_reused_with_another(tmp_path):
    torch.manual_seed(0)
    zm = load_model("resnet18", input_size=16)  # 1000 ImageNet-named classes
    root = _folder(tmp_path / "data", ["n02123045", "n07920052"])
    rec = run_probe(zm, load_data(str(root), zm.transform(), model_classes=zm.class_names), "layer4", tmp_path / "r")
    assert sorted(set(rec.labels.tolist())) == [281, 967] and rec.manifest["label_mapping"]["method"] == "by name"
    assert rec.manifest["data_class_names"] == ["n02123045", "n07920052"]
    other = load_data(str(root), zm.transform(), model_classes=zm.class_names,
                      class_map={"n02123045": 282, "n07920052": 967})
    with pytest.raises(InspectnetError, match="holds a different probe record .*label_mapping"):
        run_probe(zm, other, "layer4", tmp_path / "r")


def test_python_api_maps_data_itself_and_refuses_unmappable_data(tmp_path):
    zm = load_model("resnet18", input_size=16)
    root = _folder(tmp_path / "data", ["0", "1"])
    with pytest.raises(InspectnetError, match=r"data '.*data': 2 classes '0'; '1' match no class of the model"):
        run_probe(zm, load_data(str(root), zm.transform()), "layer4", tmp_path / "r")
    assert not (tmp_path / "r").exists()
    from inspectnet.training.loop import evaluate
    with pytest.raises(InspectnetError, match="match no class of the model"):
        evaluate(zm, load_data(str(root), zm.transform()))


def test_cli_refuses_bad_class_maps_with_one_line(capsys, tmp_path):
    root = _folder(tmp_path / "data", ["cats", "cups"])
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"cats": 281, "cups": 1000}))
    code = main(["probe", "resnet18", str(root), "--input-size", "16", "--layers", "layer4", "--out",
                 str(tmp_path / "r"), "--class-map", str(cmap)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'cups' maps to index 1000, but the model has 1000 classes" in err
    cmap.write_text(json.dumps({"cats": "tabby", "cups": "espresso"}))
    code = main(["probe", "resnet18", str(root), "--input-size", "16", "--layers", "layer4", "--out",
                 str(tmp_path / "r"), "--class-map", str(cmap)])
    out = capsys.readouterr().out
    assert code == 0 and "accuracy" in out


def test_train_adopts_folder_names_only_in_index_order(capsys, tmp_path):
    root = _folder(tmp_path / "data", ["zq_one", "zq_two"], per_class=3)  # ("ant", "bee" are ImageNet classes)
    assert main(["train", "resnet18", str(root), "--num-classes", "2", "--input-size", "16", "--epochs", "1",
                 "--batch-size", "4", "--out", str(tmp_path / "m")]) == 0
    assert load_model(str(tmp_path / "m")).class_names == ["zq_one", "zq_two"]
    # a 1000-class ImageNet model is not retrained on folders it cannot name
    code = main(["train", "resnet18", str(root), "--input-size", "16", "--epochs", "1", "--out", str(tmp_path / "x")])
    assert code == 2 and "'zq_one'" in capsys.readouterr().err and not (tmp_path / "x" / "config.json").exists()


def test_photos_source_crops_are_labelled_by_wordnet_id_and_never_shared():
    train, test, whole = (load_data(f"photos{s}?n=40&seed=3") for s in (":train", ":test", ""))
    assert train.class_names == [w for _, w in LABELLED_PHOTOS] and (len(train), len(test), len(whole)) == (32, 8, 40)
    assert not {train.name(i) for i in range(len(train))} & {test.name(i) for i in range(len(test))}
    boxes = [item[:2] for item in whole.items]
    assert len(set(boxes)) == len(boxes)
    assert np.bincount(whole.labels).tolist() == [10, 10, 10, 10]
    again = load_data("photos:train?n=40&seed=3")
    assert np.array_equal(np.asarray(train.image(5)), np.asarray(again.image(5)))
    assert load_data("photos?n=40&seed=4").items != whole.items
    with pytest.raises(InspectnetError, match="n=3 is too small"):
        load_data("photos?n=3")


def test_written_folder_reads_back_the_same_images(tmp_path, capsys):
    assert main(["folder", "photos:test?n=16", "--out", str(tmp_path / "f")]) == 0
    assert "wrote 4 images in 4 class folders" in capsys.readouterr().out
    ds, back = load_data("photos:test?n=16"), FolderDataset(tmp_path / "f")
    assert back.class_names == sorted(w for _, w in LABELLED_PHOTOS)
    for i in range(len(ds)):
        j = [f.stem for f in back.files].index(ds.name(i))
        assert np.array_equal(np.asarray(ds.image(i)), np.asarray(back.image(j).convert("RGB")))
        assert back.class_names[back.labels[j]] == ds.class_names[ds.labels[i]]
    with pytest.raises(InspectnetError, match="is not an empty folder"):
        write_folder(ds, tmp_path / "f")
    with pytest.raises(InspectnetError, match="is unlabelled"):
        write_folder(load_data("samples"), tmp_path / "g")


def _imagenet_wnids():
    from inspectnet.data.labels import imagenet_synsets

    return [w for w, _ in imagenet_synsets()]


def test_all_1000_wordnet_ids_in_shuffled_order_map_to_the_models_own_indices():
    wnids = _imagenet_wnids()
    order = np.random.default_rng(0).permutation(1000)
    m = align_classes([wnids[i] for i in order], IMAGENET)
    assert m.indices == order.tolist() and set(m.via) == {"WordNet id"} and m.method == "by name"
    # the sorted folder names of a full ImageNet tree are already in model order: the mapping is the identity
    assert align_classes(sorted(wnids), IMAGENET).indices == list(range(1000))
    # data label k is the model's class order[k]: the labels change, not only their names
    assert m.apply(np.arange(1000)).tolist() == order.tolist()


def test_all_unique_imagenet_names_in_shuffled_order_map_to_the_models_own_indices():
    keys = [normalize(n) for n in IMAGENET]
    unique = [i for i, k in enumerate(keys) if keys.count(k) == 1]
    assert len(unique) > 980                                  # only a few names (crane, cardigan) name two classes
    order = np.random.default_rng(1).permutation(unique)
    m = align_classes([IMAGENET[i].upper().replace(" ", "_") for i in order], IMAGENET)
    assert m.indices == order.tolist() and set(m.via) == {"model class name"}
    # the same 1000 classes, named by name where the name is unique and by WordNet id where it is not
    wnids = _imagenet_wnids()
    full = np.random.default_rng(2).permutation(1000)
    names = [IMAGENET[i] if keys.count(keys[i]) == 1 else wnids[i] for i in full]
    assert align_classes(names, IMAGENET).indices == full.tolist()


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def test_ten_named_classes_in_another_order_map_to_the_models_own_indices():
    folders = sorted(DIGIT_NAMES)                             # eight, five, four, nine, one, seven, six, three, two, zero
    m = align_classes(folders, DIGIT_NAMES)
    assert m.indices == [8, 5, 4, 9, 1, 7, 6, 3, 2, 0] and m.method == "by name"
    shuffled = [DIGIT_NAMES[i] for i in (3, 9, 0, 6, 1, 8, 2, 5, 7, 4)]
    assert align_classes([n.capitalize() for n in shuffled], DIGIT_NAMES).indices == [3, 9, 0, 6, 1, 8, 2, 5, 7, 4]


def test_folder_labels_of_a_named_ten_class_model_are_its_own_indices(tmp_path):
    zm = load_model("resnet18", num_classes=10, in_chans=3, input_size=16, class_names=DIGIT_NAMES)
    root = _folder(tmp_path / "data", DIGIT_NAMES, per_class=1, size=8)
    ds = load_data(str(root), zm.transform(), model_classes=zm.class_names)
    got = {ds.name(i): int(ds.labels[i]) for i in range(len(ds))}
    folder_of = {ds.name(i): ds.files[i].parent.name for i in range(len(ds))}
    assert len(got) == 10 and sorted(folder_of.values()) == sorted(DIGIT_NAMES)
    assert all(got[k] == DIGIT_NAMES.index(folder_of[k]) for k in got), (got, folder_of)


def test_unmatched_names_list_the_three_closest_model_classes():
    with pytest.raises(InspectnetError, match=r"'doggo' \(closest: dog \(0\), dogs \(1\), doge \(2\)\) matches no class"):
        align_classes(["doggo"], ["dog", "dogs", "doge", "dodo", "cat"])


def test_class_map_accepts_the_first_and_last_model_index():
    m = align_classes(["first", "last"], IMAGENET, class_map={"first": 0, "last": 999})
    assert m.indices == [0, 999] and m.via == ["class map", "class map"]
    with pytest.raises(InspectnetError, match=r"maps to index -1, but the model has 1000 classes"):
        align_classes(["first"], IMAGENET, class_map={"first": -1})


def test_long_lists_of_unmatched_classes_show_five_and_count_the_rest():
    model = ["alpha", "beta", "gamma"]
    with pytest.raises(InspectnetError) as err:
        align_classes([f"zz{i}" for i in range(7)], model)
    msg = str(err.value)
    assert msg.startswith("data: 7 classes 'zz0'") and "'zz4'" in msg and "'zz5'" not in msg and "and 2 more" in msg
    with pytest.raises(InspectnetError, match="'zz4'.* and 1 more match no class"):
        align_classes([f"zz{i}" for i in range(6)], model)
    with pytest.raises(InspectnetError) as err:
        align_classes([f"zz{i}" for i in range(5)], model)
    assert "'zz4'" in str(err.value) and "more" not in str(err.value)
    stray = {f"s{i}": 0 for i in range(5)}
    with pytest.raises(InspectnetError) as err:
        align_classes(["alpha"], model, class_map=stray)
    assert "'s0', 's1', 's2', 's3', 's4', which data does not have" in str(err.value)
    with pytest.raises(InspectnetError, match=r"'s4' and 1 more, which data does not have"):
        align_classes(["alpha"], model, class_map={**stray, "s5": 0})


def test_without_timm_imagenet_names_are_refused_and_other_names_still_align(monkeypatch):
    import importlib.util

    from inspectnet.data.labels import imagenet_synsets

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a))
    imagenet_synsets.cache_clear()
    try:
        assert imagenet_synsets() is None
        with pytest.raises(InspectnetError, match="ImageNet class names ship with timm, which is not installed"):
            imagenet_names()
        assert align_classes(["b", "a"], ["a", "b"]).indices == [1, 0]
    finally:
        imagenet_synsets.cache_clear()


def test_class_map_names_that_fit_several_classes_are_refused_naming_them():
    with pytest.raises(InspectnetError, match=r"maps to 'crane', which is ambiguous: crane \(134, n02012849\) or crane "
                                              r"\(517, n03126707\)$"):
        align_classes(["birds"], IMAGENET, class_map={"birds": "crane"})


def test_a_class_folder_named_in_decomposed_unicode_matches_the_composed_model_class():
    nfd, nfc = "cafe\u0301", "caf\u00e9"
    mapping = align_classes([nfd, "tea"], ["tea", nfc, "milk"])
    assert list(mapping.indices) == [1, 0]


def test_an_unmatched_class_beside_a_class_map_asks_to_extend_the_map_not_to_pass_one():
    with pytest.raises(InspectnetError, match="add them to the --class-map file") as err:
        align_classes(["tea", "cocoa"], ["tea", "milk", "water"], class_map={"tea": 0})
    assert "pass --class-map" not in str(err.value)
    with pytest.raises(InspectnetError, match="or pass --class-map FILE.json"):
        align_classes(["tea", "cocoa"], ["tea", "milk", "water"])


def test_shared_kind_is_the_last_word_two_imagenet_classes_share_and_none_elsewhere():
    from inspectnet.data.labels import imagenet_names, shared_kind

    names = imagenet_names()
    assert shared_kind(names, 281, 282) == "cat"          # tabby cat / tiger cat
    assert shared_kind(names, 2, 3) == "shark"            # great white shark / tiger shark
    assert shared_kind(names, 281, 281) is None           # one class is not a neighbour of itself
    assert shared_kind(names, 657, 517) is None           # missile / crane: nothing in common
    assert shared_kind(names[::-1], 718, 717) is None     # 1000 names in another order are not ImageNet's classes
    assert shared_kind(["tabby cat", "tiger cat"], 0, 1) is None
