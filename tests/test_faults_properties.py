"""Property-based part of the fault table: random folder trees (names in either Unicode normal
form, nested folders) changed at random, and random corruptions of an exported file's metadata.

Whatever the draw: a folder's content identity changes exactly when a file's path or content
changes, and names the first changed file; a probe record of a changed folder is refused in one
line naming it (exit 2) and left as it was; ``inspectnet run`` on corrupted metadata exits 0 or 2
with one line, never 1.
"""

import json
import os
import shutil
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from inspectnet.cli import main
from tests.test_faults import _snapshot, check_outcome

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# a name: a few letters, possibly accented, in NFC or NFD (different files on Linux, both valid)
_letters = st.sampled_from(["a", "b", "é", "ü", "x", "ç"])
_name = st.tuples(st.lists(_letters, min_size=1, max_size=4).map("".join), st.sampled_from(["NFC", "NFD"])).map(
    lambda t: unicodedata.normalize(t[1], t[0]))
_file = st.tuples(st.lists(_name, max_size=2), _name)  # (nested folders, file stem)
_tree = st.lists(st.tuples(st.sampled_from(["0", "1", "2"]), _file), min_size=3, max_size=10)
_change = st.sampled_from(["touch", "rewrite", "add", "remove"])


def _build(root: Path, tree: list) -> list[Path]:
    """Write the tree (one grey PNG per file, each its own shade; every class gets a file)."""
    paths = sorted({root / cls / Path(*parts) / f"{stem}.png" for cls, (parts, stem) in tree}
                   | {root / c / "base.png" for c in "012"})
    for k, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), k * 7 % 256).save(path)
    return paths


def _apply(change: str, paths: list[Path], root: Path, pick: int) -> str | None:
    """Change one file; returns the relative path a first-change report must name (None for a touch)."""
    path = paths[pick % len(paths)]
    rel = path.relative_to(root).as_posix()
    st_ = path.stat()
    if change == "touch":
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
        return None
    if change == "rewrite":
        Image.new("L", (9, 9), 255).save(path)
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
        return f"{rel} changed"
    if change == "remove":
        if path.name == "base.png":
            return _apply("rewrite", paths, root, pick)
        path.unlink()
        return f"{rel} was removed"
    new = path.with_name(path.stem + "z.png")
    Image.new("L", (8, 8), 3).save(new)
    return f"{new.relative_to(root).as_posix()} was added"


@SETTINGS
@given(tree=_tree, change=_change, pick=st.integers(0, 100))
def test_content_identity_changes_exactly_with_the_contents_and_names_the_file(tree, change, pick):
    from inspectnet.data.datasets import FolderDataset
    from inspectnet.data.index import image_folder_files, index_folder

    root = Path(tempfile.mkdtemp())
    try:
        paths = _build(root / "d", tree)
        before = index_folder(root / "d")
        assert [r[0] for r in before.files] == [p.relative_to(root / "d").as_posix() for p in paths]
        assert FolderDataset(root / "d").files == image_folder_files(root / "d")  # what is read is what is indexed
        expected = _apply(change, paths, root / "d", pick)
        after = index_folder(root / "d", before)
        assert (after.digest == before.digest) == (expected is None)
        assert after.first_change(before) == expected
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from inspectnet import load_model, save_model

    zm = load_model("test_resnet", num_classes=3, in_chans=1, input_size=8, seed=0)
    return save_model(zm, tmp_path_factory.mktemp("model") / "m")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_tree, change=_change, pick=st.integers(0, 100))
def test_a_record_of_a_changed_tree_is_refused_in_one_line_and_kept(model, capfd, tree, change, pick):
    root = Path(tempfile.mkdtemp())
    try:
        paths = _build(root / "d", tree)
        args = ["probe", str(model), str(root / "d"), "--layers", "layer4", "--out", str(root / "rec")]
        assert main(args) == 0
        expected = _apply(change, paths, root / "d", pick)
        kept = _snapshot(root / "rec")
        capfd.readouterr()
        code = main(args)
        out, err = capfd.readouterr()
        if expected is None:
            assert code == 0, err
        else:
            check_outcome(code, out, err, 2, expected)
            assert _snapshot(root / "rec") == kept
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    from inspectnet import export_onnx, load_model

    root = tmp_path_factory.mktemp("onnx")
    Image.new("L", (12, 12), 90).save(root / "x.png")
    return Path(export_onnx(load_model(str(model)), root / "m.onnx", latency=False).path), root / "x.png"


_json_value = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
                        st.text(max_size=5), st.lists(st.floats(-2, 2), max_size=4),
                        st.lists(st.integers(-1, 40), max_size=4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["input_size", "mean", "std", "crop_pct", "interpolation", "crop_mode", "class_names"]),
       value=_json_value, drop=st.booleans())
def test_corrupted_metadata_is_run_or_refused_in_one_line_never_an_internal_error(exported, capfd, key, value, drop):
    import onnx

    path, image = exported
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        doc = json.loads(prop.value) if prop.key.startswith("inspectnet.") and prop.key != "inspectnet.format" else None
        if key == "class_names" and prop.key == "inspectnet.class_names":
            prop.value = json.dumps(value)
        elif key != "class_names" and prop.key == "inspectnet.preprocessing":
            doc = {k: v for k, v in doc.items() if k != key} if drop else {**doc, key: value}
            prop.value = json.dumps(doc)
    work = Path(tempfile.mkdtemp())
    try:
        onnx.save(proto, str(work / "bad.onnx"))
        before = _snapshot(work)
        capfd.readouterr()
        code = main(["run", str(work / "bad.onnx"), str(image)])
        out, err = capfd.readouterr()
        assert code in (0, 2), err
        if code == 2:
            check_outcome(code, out, err, 2, "")
        else:
            probs = [float(x) for x in np.asarray(out.split(), dtype=object) if _is_number(x)]
            assert all(np.isfinite(probs)), out
        assert _snapshot(work) == before
    finally:
        shutil.rmtree(work)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
