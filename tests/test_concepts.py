"""Concept datasets: the shapes source and the user folder formats (per-concept masks, segmentation + legend)."""

import json

import numpy as np
import pytest
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.data import shapes as shapes_mod
from inspectnet.data.concepts import FolderConcepts, load_concepts


def _write_mask_folder(root, *, mask_size=(8, 6), image_size=(8, 6)):
    """Two 6×8 images; concept 'red' on a known block, 'round' only on image b."""
    (root / "images").mkdir(parents=True)
    (root / "concepts.json").write_text(json.dumps({"concepts": {"red": "colour", "round": "shape"}}))
    for name in ("a", "b"):
        Image.new("RGB", image_size, (10, 20, 30)).save(root / "images" / f"{name}.png")
        (root / "masks" / name).mkdir(parents=True)
    red = np.zeros((mask_size[1], mask_size[0]), np.uint8)
    red[1:3, 2:5] = 255
    Image.fromarray(red).save(root / "masks" / "a" / "red.png")
    Image.fromarray(np.full_like(red, 7)).save(root / "masks" / "b" / "round.png")
    return red > 0


def test_shapes_concepts_match_generator():
    ds = load_concepts("shapes?n=6&seed=3")
    _, masks, _ = shapes_mod.generate(6, seed=3)
    assert ds.concepts == list(shapes_mod.CONCEPTS) and len(ds.concepts) == 15
    assert ds.category_names == ["colour", "shape", "colour-shape"]
    assert np.array_equal(ds.masks(4), masks[4])
    img = np.asarray(ds.image(4))
    red = ds.masks(4)[ds.concepts.index("red")]
    assert (img[red] == [255, 0, 0]).all() and not (img[~red] == [255, 0, 0]).all(axis=1).any()


def test_mask_folder_reads_each_concept(tmp_path):
    red = _write_mask_folder(tmp_path)
    ds = load_concepts(str(tmp_path))
    assert isinstance(ds, FolderConcepts) and len(ds) == 2
    assert ds.categories == {"red": "colour", "round": "shape"}
    a, b = ds.masks(0), ds.masks(1)
    assert a.shape == (2, 6, 8) and np.array_equal(a[0], red) and not a[1].any()
    assert not b[0].any() and b[1].all()


def test_mask_size_mismatch_refused_or_resized_with_warning(tmp_path):
    _write_mask_folder(tmp_path, mask_size=(4, 3))
    ds = load_concepts(str(tmp_path))
    with pytest.raises(InspectnetError, match="4×3 but its image is 8×6"):
        ds.masks(0)
    resized = load_concepts(str(tmp_path), resize_masks=True)
    with pytest.warns(UserWarning, match="resized from 4×3"):
        m = resized.masks(0)
    assert m.shape == (2, 6, 8) and m[0].sum() > 0


def test_segmentation_with_rgb_legend(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "segmentations").mkdir()
    cfg = {"concepts": {"red": "colour", "square": "shape", "red-square": "colour-shape"},
           "legend": {"#000000": [], "#FF0000": ["red", "square", "red-square"], "#00ff00": "square"}}
    (tmp_path / "concepts.json").write_text(json.dumps(cfg))
    seg = np.zeros((5, 5, 3), np.uint8)
    seg[0, :2] = (255, 0, 0)
    seg[4, 4] = (0, 255, 0)
    Image.new("RGB", (5, 5)).save(tmp_path / "images" / "x.jpg")
    Image.fromarray(seg).save(tmp_path / "segmentations" / "x.png")
    m = load_concepts(str(tmp_path)).masks(0)
    assert m[0].sum() == 2 and m[0][0, :2].all()
    assert m[1].sum() == 3 and m[1][4, 4]
    assert np.array_equal(m[2], m[0])


def test_segmentation_palette_indices_and_missing_colour(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "segmentations").mkdir()
    cfg = {"concepts": ["sky", "tree"], "legend": {"0": [], "1": ["sky"]}}
    (tmp_path / "concepts.json").write_text(json.dumps(cfg))
    idx = np.zeros((4, 4), np.uint8)
    idx[0] = 1
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "p.png")
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0, 9, 9, 200, 0, 120, 0] + [0] * 759)
    pal.save(tmp_path / "segmentations" / "p.png")
    ds = load_concepts(str(tmp_path))
    assert ds.categories["sky"] == "concept"
    assert ds.masks(0)[0].sum() == 4 and not ds.masks(0)[1].any()
    idx[3, 3] = 2  # a tree pixel the legend does not list
    pal = Image.fromarray(idx, mode="P")
    pal.putpalette([0, 0, 0, 9, 9, 200, 0, 120, 0] + [0] * 759)
    pal.save(tmp_path / "segmentations" / "p.png")
    with pytest.raises(InspectnetError, match="colour '2', which the legend"):
        ds.masks(0)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(InspectnetError, match="no concepts.json"):
        load_concepts(str(tmp_path))
    _write_mask_folder(tmp_path)
    Image.new("L", (8, 6)).save(tmp_path / "masks" / "a" / "blue.png")
    with pytest.raises(InspectnetError, match="names concept 'blue'"):
        load_concepts(str(tmp_path))
    (tmp_path / "masks" / "a" / "blue.png").unlink()
    Image.new("RGB", (8, 6)).save(tmp_path / "images" / "c.png")
    with pytest.raises(InspectnetError, match="no mask folder"):
        load_concepts(str(tmp_path))
    with pytest.raises(InspectnetError, match="no concept masks"):
        load_concepts("digits")
