"""Fault table, second part: stale caches, images read as shown, bad weights and metadata, two
writers, full or read-only disks, outputs inside the data.

:data:`TABLE` rows run exactly like those of :mod:`tests.test_faults` (one error line holding the
fragment, the expected exit code, the user's files unchanged, nothing written outside ``--out``,
nothing left that a later command accepts). The tests below the table check the values: a changed
folder recomputes the audit, each image mode reads as a viewer shows it, two real processes meet
the lock, a real full (or read-only) tmpfs gives one line.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inspectnet.cli import main
from tests import test_faults
from tests.test_faults import Assets, _accepted_by_a_later_command, check_outcome

assets = test_faults.assets  # the shared model, records and ONNX file (a module fixture)


# ---------------------------------------------------------------- data builders
def _digit_folder(root: Path, per_class: int = 2) -> Path:
    """``root/0 .. root/9``, ``per_class`` PNG digits each (the shared model's ten classes, index order)."""
    from inspectnet import load_data

    ds = load_data("digits:test")
    for c in range(10):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(ds.labels == c)[:per_class]):
            ds.image(int(i)).save(root / str(c) / f"{k}.png")
    return root


def _rewrite(path: Path, value: int) -> None:
    """New pixels under the same name, and a later time (a same-size rewrite within one clock tick would keep it)."""
    Image.new("L", (8, 8), value).save(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _probed_then(change: Callable[[Path], object]) -> Callable[[Path, Assets], None]:
    """A digit folder probed into ``ws/out``, then changed."""
    def build(ws: Path, a: Assets) -> None:
        folder = _digit_folder(ws / "imgs")
        assert main(["probe", str(a.model), str(folder), "--layers", "layer4", "--out", str(ws / "out")]) == 0
        change(folder)
    return build


def _float_tiff(values: np.ndarray, name: str = "f.tif") -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        folder = _digit_folder(ws / "imgs", per_class=1)
        Image.fromarray(values.astype(np.float32), mode="F").save(folder / "3" / name)
    return build


def _int_weights(ws: Path, a: Assets) -> None:
    from inspectnet import load_model

    state = load_model(str(a.model)).model.state_dict()
    state["fc.weight"] = (state["fc.weight"] * 100).to(torch.int64)
    torch.save(state, ws / "w.pt")


def _tampered_onnx(key: str, change: Callable[[object], object]) -> Callable[[Path, Assets], None]:
    def build(ws: Path, a: Assets) -> None:
        import onnx

        proto = onnx.load(str(a.onnx))
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = json.dumps(change(json.loads(prop.value)))
        onnx.save(proto, str(ws / "m.onnx"))
        Image.new("L", (16, 16), 90).save(ws / "x.png")
    return build


def _lock_held_by_a_live_process(ws: Path, a: Assets) -> None:
    _digit_folder(ws / "imgs", per_class=1)
    (ws / ".out.lock").write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "command": "inspectnet audit",
                                              "started": "2026-01-01T00:00:00Z"}))


def _data_inside_out(ws: Path, _a: Assets) -> None:
    _digit_folder(ws / "out" / "imgs", per_class=1)


BAD_INPUTS: dict[str, Callable[[Path, Assets], None]] = {
    "nothing": lambda ws, a: None,
    "digit folder": lambda ws, a: _digit_folder(ws / "imgs", per_class=1) and None,
    "record of a folder, one image rewritten since": _probed_then(lambda f: _rewrite(f / "3" / "1.png", 7)),
    "record of a folder, one image added since": _probed_then(lambda f: _rewrite(f / "5" / "new.png", 7)),
    "record of a folder, one image removed since": _probed_then(lambda f: (f / "8" / "0.png").unlink()),
    "float TIFF with samples in [-3, 2]": _float_tiff(np.linspace(-3, 2, 64).reshape(8, 8)),
    "float TIFF holding NaN": _float_tiff(np.full((8, 8), np.nan)),
    "integer fc.weight": _int_weights,
    "ONNX std [0.0]": _tampered_onnx("inspectnet.preprocessing", lambda p: {**p, "std": [0.0]}),
    "ONNX without mean": _tampered_onnx("inspectnet.preprocessing", lambda p: {k: v for k, v in p.items() if k != "mean"}),
    "ONNX mean of 3 channels": _tampered_onnx("inspectnet.preprocessing", lambda p: {**p, "mean": [0.5] * 3}),
    "ONNX input size 20": _tampered_onnx("inspectnet.preprocessing", lambda p: {**p, "input_size": [1, 20, 20]}),
    "ONNX 3 class names for 10 outputs": _tampered_onnx("inspectnet.class_names", lambda n: n[:3]),
    "ONNX crop_pct 0": _tampered_onnx("inspectnet.preprocessing", lambda p: {**p, "crop_pct": 0}),
    "ONNX unknown interpolation": _tampered_onnx("inspectnet.preprocessing", lambda p: {**p, "interpolation": "cubic"}),
    "lock held by a live process": _lock_held_by_a_live_process,
    "data folder inside --out": _data_inside_out,
}

# (command, bad input, arguments, expected fragment of the one error line, expected exit code)
PROBE = ("probe", "{model}", "{ws}/imgs", "--layers", "layer4", "--out", "{ws}/out")
AUDIT = ("audit", "{model}", "{ws}/imgs", "--layers", "layer4", "--out", "{ws}/out")
RUN = ("run", "{ws}/m.onnx", "{ws}/x.png")
TABLE: list[tuple[str, str, tuple[str, ...], str, int]] = [
    # --- a record opened for appending is refused when its folder changed
    ("probe", "record of a folder, one image rewritten since", PROBE, "3/1.png changed since", 2),
    ("probe", "record of a folder, one image added since", PROBE, "5/new.png was added since", 2),
    ("probe", "record of a folder, one image removed since", PROBE, "8/0.png was removed since", 2),
    # --- images
    ("probe", "float TIFF with samples in [-3, 2]", PROBE, "float samples span [-3, 2]; expected [0, 1] or [0, 255]", 2),
    ("predict", "float TIFF holding NaN", ("predict", "{model}", "{ws}/imgs/3/f.tif"), "include NaN or infinity", 2),
    ("run", "float TIFF holding NaN", ("run", "{onnx}", "{ws}/imgs/3/f.tif"), "include NaN or infinity", 2),
    # --- weights and metadata
    ("layers", "integer fc.weight", ("layers", "test_resnet", "--in-chans", "1", "--num-classes", "10", "--weights",
                                     "{ws}/w.pt"), "'fc.weight' holds int64 values", 2),
    ("run", "ONNX std [0.0]", RUN, "inspectnet.preprocessing std is [0.0]; a zero std", 2),
    ("run", "ONNX without mean", RUN, "inspectnet.preprocessing lacks mean", 2),
    ("run", "ONNX mean of 3 channels", RUN, "inspectnet.preprocessing mean is [0.5, 0.5, 0.5]; expected 1", 2),
    ("run", "ONNX input size 20", RUN, "input_size is [1, 20, 20] but the graph takes [1, 16, 16]", 2),
    ("run", "ONNX 3 class names for 10 outputs", RUN, "class_names lists 3 names but the graph has 10 outputs", 2),
    ("run", "ONNX crop_pct 0", RUN, "crop_pct is 0; expected a number in (0, 1]", 2),
    ("run", "ONNX unknown interpolation", RUN, "interpolation is 'cubic'", 2),
    # --- one writer per output
    ("audit", "lock held by a live process", AUDIT, "being written by another inspectnet command (inspectnet audit, "
                                                    "pid 1", 2),
    ("probe", "lock held by a live process", PROBE, "being written by another inspectnet command", 2),
    # --- outputs never inside the inputs
    ("audit", "digit folder", (*AUDIT[:-1], "{ws}/imgs/audit"), "lies inside the data folder DATA", 2),
    ("probe", "digit folder", (*PROBE[:-1], "{ws}/imgs/3/rec"), "lies inside the data folder DATA", 2),
    ("audit", "digit folder", ("audit", "{model}", "digits", "--eval", "{ws}/imgs", "--out", "{ws}/imgs"),
     "lies inside the data folder --eval-data", 2),
    ("export", "digit folder", ("export", "{model}", "--int8", "--calibration", "{ws}/imgs", "--no-latency", "--out",
                                "{ws}/imgs/m.onnx"), "lies inside the data folder --calibration", 2),
    ("train", "digit folder", ("train", "{model}", "{ws}/imgs", "--out", "{ws}/imgs/0/model"), "lies inside", 2),
    ("probe", "data folder inside --out", ("probe", "{model}", "{ws}/out/imgs", "--layers", "layer4", "--out", "{ws}/out"),
     "holds the data folder DATA", 2),
]


def _case_id(row: tuple) -> str:
    return f"{row[0]}: {row[1] if row[1] not in ('nothing', 'digit folder') else ' '.join(row[2][1:])[-60:]}"


@pytest.mark.parametrize("row", TABLE, ids=[_case_id(r) for r in TABLE])
def test_fault(row, assets, tmp_path, capfd, monkeypatch):
    test_faults.run_case(row, BAD_INPUTS, assets, tmp_path, capfd, monkeypatch)


# ---------------------------------------------------------------- content identity of data folders
def test_index_reads_only_files_whose_size_or_time_changed(tmp_path):
    from inspectnet.data.index import _HASHED, index_folder

    folder = _digit_folder(tmp_path / "imgs", per_class=1)
    first = index_folder(folder)
    assert [row[0] for row in first.files] == [f"{c}/0.png" for c in range(10)]
    # a stored hash that is wrong but whose file kept its size and time is trusted: the file is not read
    first.files[0][3] = "planted"
    _HASHED.clear()
    again = index_folder(folder, first)
    assert again.files[0][3] == "planted" and not _HASHED
    # a touched file is read again; its content, and so the folder's identity, did not change
    st = (folder / "1" / "0.png").stat()
    os.utime(folder / "1" / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = index_folder(folder, first)
    assert len(_HASHED) == 1 and touched.files[1][3] == first.files[1][3] and touched.digest == first.digest
    _rewrite(folder / "2" / "0.png", 9)
    assert index_folder(folder, touched).first_change(touched) == "2/0.png changed"


def test_a_changed_folder_recomputes_the_audit_and_the_card_says_since_when(assets, tmp_path):
    from inspectnet import ProbeRecord, load_data, load_model, run_probe
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    folder = _digit_folder(tmp_path / "imgs")
    config = AuditConfig(data=str(folder), layers=["layer4"], attribution_images=1, ig_steps=2, top_units=1)
    out = tmp_path / "audit"
    run_audit(load_model(str(assets.model)), config, out, log=None)
    touched = folder / "4" / "0.png"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same pixels: still cached
    same = run_audit(load_model(str(assets.model)), config, out, log=None)
    assert same["sections"]["probe"]["cached"] and "recomputed" not in same["data"]
    shutil.copy(folder / "7" / "0.png", folder / "4" / "0.png")  # another digit under the same name
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    (folder / "9" / "new.png").write_bytes((folder / "9" / "0.png").read_bytes())
    doc = run_audit(load_model(str(assets.model)), config, out, log=None)
    assert not doc["sections"]["probe"]["cached"] and not doc["sections"]["decomposition"]["cached"]
    assert doc["data"]["recomputed"].startswith("the data changed since 20")
    assert "4/0.png changed" in doc["data"]["recomputed"]
    assert "Recomputed: the data changed since" in (out / "README.md").read_text()
    assert doc["sections"]["probe"]["result"]["train"]["samples"] == 21
    # the audit's record equals a fresh probe of the changed folder
    zm = load_model(str(assets.model))
    fresh = run_probe(zm, load_data(str(folder), zm.transform()), "layer4", tmp_path / "fresh")
    assert np.array_equal(ProbeRecord.load(out / "probe" / "train").logits, fresh.logits)


# ---------------------------------------------------------------- images read as they are shown
def _saved(tmp_path: Path, name: str, save: Callable[[Path], object]) -> Path:
    path = tmp_path / name
    save(path)
    return path


def _palette_with_transparency(path: Path) -> None:
    im = Image.new("P", (4, 4), 0)
    im.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.save(path, transparency=0)


def _animated(path: Path) -> None:
    frames = [Image.new("L", (4, 4), v) for v in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


MODES = {  # file, its mode on disk, pixel (0, 0) and (1, 1) as shown
    "CMYK": ("c.jpg", lambda p: Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(p, quality=100), "CMYK",
             (255, 0, 0), (255, 0, 0)),
    # transparency dropped, the stored colours kept (timm's and torchvision's loaders do the same)
    "P+transparency": ("p.png", _palette_with_transparency, "P", (10, 20, 30), (200, 0, 0)),
    "I;16": ("w.png", lambda p: Image.fromarray(np.array([[0, 257 * 40], [65535, 257 * 7]], np.uint16)).save(p),
             "I;16", 0, 7),
    "F in [0, 1]": ("f.tif", lambda p: Image.fromarray(np.array([[0.5, 1], [0, 0.25]], np.float32), mode="F").save(p),
                    "F", 128, 64),
    "F in [0, 255]": ("g.tif", lambda p: Image.fromarray(np.array([[3, 250.4], [0, 77]], np.float32), mode="F").save(p),
                      "F", 3, 77),
    "LA": ("la.png", lambda p: Image.fromarray(np.array([[[100, 255], [0, 0]], [[0, 0], [50, 128]]], np.uint8),
                                               mode="LA").save(p), "LA", 100, 50),
    "animated GIF": ("a.gif", _animated, "L", (10, 10, 10), (10, 10, 10)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_image_mode_reads_as_a_viewer_shows_it(mode, tmp_path):
    from inspectnet.core.images import open_image

    name, save, stored, first, second = MODES[mode]
    path = _saved(tmp_path, name, save)
    with Image.open(path) as raw:
        assert raw.mode in (stored, "P"), raw.mode
    im = open_image(path)
    assert im.mode in ("L", "RGB")
    assert im.getpixel((0, 0)) == first and im.getpixel((1, 1)) == second


def test_exif_orientation_is_applied_in_data_predict_and_run(assets, tmp_path):
    """A digit stored sideways with orientation tag 6 (rotate 90° clockwise to view) predicts as the upright one."""
    from inspectnet import load_data, load_model, predict
    from inspectnet.runtime.classifier import OnnxClassifier

    digit = np.asarray(load_data("digits:test").image(3).resize((16, 16)))
    Image.fromarray(digit).save(tmp_path / "upright.png")
    stored = Image.fromarray(np.rot90(digit, 1).copy())  # what a camera held sideways stores
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "sideways.png", exif=exif)
    from inspectnet.core.images import open_image
    assert np.array_equal(np.asarray(open_image(tmp_path / "sideways.png")), digit)
    zm = load_model(str(assets.model))
    up, side = predict(zm, [tmp_path / "upright.png", tmp_path / "sideways.png"], topk=3, device="cpu")
    assert up["top"] == side["top"]
    clf = OnnxClassifier(assets.onnx, device="cpu")
    x = clf.preprocess_images([open_image(tmp_path / "upright.png"), open_image(tmp_path / "sideways.png")])
    assert np.array_equal(x[0], x[1])
    raw_sideways = clf.preprocess_images([Image.open(tmp_path / "sideways.png").convert("L").transpose(
        Image.Transpose.TRANSPOSE)])  # the stored pixels, not rotated: a different picture
    assert not np.array_equal(x[0], raw_sideways[0])


def test_a_float_tiff_in_unit_range_reads_as_the_8bit_image(assets, tmp_path):
    from inspectnet import load_data, load_model, predict

    digit = np.asarray(load_data("digits:test").image(3))
    Image.fromarray(digit).save(tmp_path / "d.png")
    Image.fromarray(digit.astype(np.float32) / 255.0, mode="F").save(tmp_path / "d.tif")
    zm = load_model(str(assets.model))
    png, tif = predict(zm, [tmp_path / "d.png", tmp_path / "d.tif"], topk=10, device="cpu")
    assert [t["index"] for t in png["top"]] == [t["index"] for t in tif["top"]]
    assert np.allclose([t["prob"] for t in png["top"]], [t["prob"] for t in tif["top"]], atol=1e-6)


# ---------------------------------------------------------------- one writer per output
def _cli(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspectnet", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holders_lock_is_replaced(assets, tmp_path):
    out = tmp_path / "rec"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom inspectnet.core.locks import output_lock\n"
         "with output_lock(sys.argv[1], 'inspectnet probe'):\n    print('held', flush=True)\n    time.sleep(120)\n",
         str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["probe", str(assets.model), "digits", "--layers", "layer4", "--limit", "8", "--out", str(out)]
        second = _cli(*args)
        check_outcome(second.returncode, second.stdout, second.stderr, 2,
                      f"(inspectnet probe, pid {holder.pid} on {socket.gethostname()}")
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, its process gone
        holder.wait()
    lock = tmp_path / ".rec.lock"
    assert json.loads(lock.read_text())["pid"] == holder.pid
    third = _cli(*args)
    assert third.returncode == 0, third.stderr[-2000:]
    assert not lock.exists()


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    from inspectnet.core.locks import lock_path, output_lock

    monkeypatch.setenv("RANK", "1")
    with output_lock(tmp_path / "out", "inspectnet probe"):
        assert not lock_path(tmp_path / "out").exists()
    monkeypatch.setenv("RANK", "0")
    with output_lock(tmp_path / "out", "inspectnet probe"):
        assert json.loads(lock_path(tmp_path / "out").read_text())["pid"] == os.getpid()


def test_two_processes_writing_one_file_use_their_own_temporary_names(tmp_path):
    code = ("import sys\nfrom inspectnet.core.storage import atomic_write_json\n"
            "for i in range(300):\n    atomic_write_json(sys.argv[1], {'writer': sys.argv[2], 'i': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "state.json"), w]) for w in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert json.loads((tmp_path / "state.json").read_text())["i"] == 299
    assert not list(tmp_path.glob("*.part"))


# ---------------------------------------------------------------- full and read-only disks
@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB tmpfs (and a read-only one) under tmp_path; skipped where mounting is not allowed."""
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(ro)], check=True)
    yield full, ro
    for m in (full, ro):
        subprocess.run(["umount", str(m)], check=False)


SLOW = pytest.mark.slow
DISK_CASES = [
    pytest.param("probe", ("probe", "{model}", "digits", "--layers", "layer4", "--out", "{disk}/out"), id="probe"),
    pytest.param("export", ("export", "{model}", "--no-latency", "--out", "{disk}/out.onnx"), id="export"),
    pytest.param("rules", ("rules", "{varied}", "--layer", "layer4", "--out", "{disk}/out"), id="rules", marks=SLOW),
    pytest.param("train", ("train", "{model}", "digits:train", "--limit", "16", "--epochs", "1", "--out", "{disk}/out"),
                 id="train", marks=SLOW),
    pytest.param("audit", ("audit", "{model}", "digits", "--limit", "16", "--layers", "layer4", "--images", "1",
                           "--ig-steps", "2", "--out", "{disk}/out"), id="audit", marks=SLOW),
]


def _varied_record(assets: Assets, root: Path) -> Path:
    """A record whose model predicts several classes (rules refuse one predicted class before writing)."""
    from inspectnet import load_data, load_model, run_probe
    from inspectnet.data.subsets import spread_subset
    from inspectnet.training.loop import TrainConfig, train

    zm = load_model(str(assets.model))
    data = load_data("digits:train", zm.transform())
    train(zm, spread_subset(data, 160), root / "trained", TrainConfig(epochs=2, batch_size=32, lr=0.05), device="cpu")
    return run_probe(zm, data, "layer4", root / "varied", limit=64).root


@pytest.mark.parametrize("command,argv", DISK_CASES)
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing_accepted(command, argv, small_disk, assets, capfd,
                                                                          tmp_path):
    """Exit 2 naming the path and the cause. A complete probe record an audit wrote before the disk
    filled up is a result (the same command resumes from it), not a partial one: only the card and
    the outputs the command was asked for must not be accepted."""
    full, ro = small_disk
    varied = _varied_record(assets, tmp_path) if command == "rules" else None
    for disk, cause in ((full, "No space left on device"), (ro, "Read-only file system")):
        args = [a.format(disk=disk, model=assets.model, varied=varied) for a in argv]
        capfd.readouterr()
        code = main(args)
        out, err = capfd.readouterr()
        check_outcome(code, out, err, 2, cause)
        assert str(disk) in err
        for path in disk.iterdir():
            accepted = [a for a in _accepted_by_a_later_command(path)
                        if not (command == "audit" and a.startswith("probe record") and a.endswith("/probe/train"))]
            assert not accepted, path
        assert not list(disk.glob(".*.lock"))
        if command == "rules":
            assert not (disk / "out" / "rules.json").exists()


# ---------------------------------------------------------------- strict JSON
def test_json_files_hold_null_for_nan_and_infinity(tmp_path):
    from inspectnet.core.storage import atomic_write_json

    def refuse(constant: str) -> None:
        raise ValueError(f"bare {constant} in the file")

    atomic_write_json(tmp_path / "a.json", {"auc": float("nan"), "curve": np.array([1.0, np.inf, -np.inf]),
                                            "n": np.int64(2)})
    doc = json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse)
    assert doc == {"auc": None, "curve": [1.0, None, None], "n": 2}


def test_the_table_is_wired():
    assert {row[1] for row in TABLE} <= set(BAD_INPUTS)
    assert all(row[4] != 0 for row in TABLE)


@pytest.mark.parametrize("cache", ["a file", "under a file"])
def test_an_unwritable_data_cache_costs_one_warning_line_and_the_command_still_works(tmp_path, cache):
    (tmp_path / "f").write_text("a file of the user's\n")
    where = tmp_path / "f" if cache == "a file" else tmp_path / "f" / "cache"
    done = _cli("folder", "digits", "--limit", "4", "--out", str(tmp_path / "out"), env={"INSPECTNET_CACHE": str(where)})
    assert done.returncode == 0, done.stderr[-2000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("inspectnet: warning: data cache not written")]
    assert len(warnings) == 1 and "INSPECTNET_CACHE" in warnings[0], done.stderr
    assert "Traceback" not in done.stderr and "UserWarning" not in done.stderr
    assert (tmp_path / "f").read_text() == "a file of the user's\n"
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4
