"""Fault injection: every command, fed bad input, fails with one line and harms nothing.

:data:`TABLE` is the one table: (command, bad input, arguments, expected message fragment, expected
exit code). The bad input names a builder in :data:`BAD_INPUTS` that makes it in the case's
workspace, next to files of the user's. Every case runs in-process through
``inspectnet.cli.main(argv)`` with stdout and stderr captured at the file-descriptor level, and
must (:func:`check_outcome`):

* exit with the expected non-zero code;
* print exactly one ``inspectnet: error:`` line, holding the fragment, and no ``Traceback``;
* leave every file that existed before (the user's files and the shared model, records and ONNX
  file) unchanged, and write nothing outside the case's ``out`` path;
* leave nothing there that a later command accepts (a probe record, a model folder, a model card
  or an ONNX classifier).

Subprocesses are kept for what only a subprocess shows: kill -9 at random points followed by the
same command (the result is bit for bit that of an uninterrupted run), DataLoader worker processes,
and a plugin whose import fails in a fresh interpreter.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError

ERROR = "inspectnet: error:"


# ---------------------------------------------------------------- shared assets (built once)
@dataclasses.dataclass(frozen=True)
class Assets:
    root: Path
    model: Path      # a saved model folder (timm test_resnet, 1 channel, 16 px, 10 classes)
    other: Path      # another model (other weights)
    train: Path      # probe record of `model` on digits:train (layer4)
    test: Path       # probe record of `model` on digits:test
    other_rec: Path  # probe record of `other`
    onnx: Path       # `model` exported by inspectnet export


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    from inspectnet import export_onnx, load_data, load_model, run_probe, save_model

    root = tmp_path_factory.mktemp("assets")
    paths = {}
    for name, seed in (("model", 0), ("other", 1)):
        zm = load_model("test_resnet", num_classes=10, in_chans=1, input_size=16, seed=seed)
        paths[name] = save_model(zm, root / name)
    zm = load_model(str(paths["model"]))
    for name, spec, limit in (("train", "digits:train", 48), ("test", "digits:test", 32)):
        paths[name] = run_probe(zm, load_data(spec, zm.transform()), "layer4", root / name, limit=limit).root
    other = load_model(str(paths["other"]))
    paths["other_rec"] = run_probe(other, load_data("digits:test", other.transform()), "layer4", root / "other_rec",
                                   limit=16).root
    paths["onnx"] = Path(export_onnx(zm, root / "model.onnx", latency=False).path)
    return Assets(root=root, **paths)


# ---------------------------------------------------------------- bad inputs
def _png(path: Path, size=(20, 20), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def _images(ws: Path) -> Path:
    """A good two-class image folder: ws/imgs/{a,b}/ok{0,1}.png."""
    for cls in "ab":
        for i in range(2):
            _png(ws / "imgs" / cls / f"ok{i}.png", value=60 * i + (cls == "b") * 100)
    return ws / "imgs"


def _bomb(path: Path) -> Path:
    """A 100-byte PNG whose header declares 30000 × 30000 pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _truncated_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bad_in_folder(make: Callable[[Path], object], name: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        make(_images(ws) / "a" / name)
    return build


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _damaged_record(damage: Callable[[Path], object]) -> Callable[[Path, Assets], None]:
    def build(ws: Path, a: Assets) -> None:
        damage(_copy(a.train, ws / "rec"))
    return build


def _damaged_model(damage: Callable[[Path], object]) -> Callable[[Path, Assets], None]:
    def build(ws: Path, a: Assets) -> None:
        damage(_copy(a.model, ws / "mdl"))
    return build


def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


class _RunsCode:
    """A pickle payload that would create a file if it were ever unpickled with arbitrary code."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "pwned"))


def _weights(kind: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, a: Assets) -> None:
        from inspectnet import load_model

        path = ws / ("w.safetensors" if kind == "text safetensors" else "w.pt")
        if kind in ("text", "text safetensors"):
            path.write_text("these are not weights\n")
        elif kind == "truncated":
            torch.save(load_model(str(a.model)).model.state_dict(), path)
            _truncate(path, 2000)
        elif kind == "runs code":
            torch.save({"fc.weight": _RunsCode(ws / "PWNED")}, path)
        elif kind == "wrong shapes":
            torch.save(load_model("test_resnet", num_classes=3, in_chans=1, seed=0).model.state_dict(), path)
    return build


def _concepts(kind: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        root = ws / "cf"
        _png(root / "images" / "x.png", size=(16, 16), value=200)
        if kind == "no config":
            return
        if kind == "config not JSON":
            (root / "concepts.json").write_text("{ not json")
            return
        if kind == "legend":
            (root / "concepts.json").write_text(json.dumps({"concepts": {"red": "colour"},
                                                            "legend": {"#000000": []}}))
            Image.new("RGB", (16, 16), (255, 0, 0)).save(_png(root / "segmentations" / "x.png"))
            return
        (root / "concepts.json").write_text(json.dumps({"concepts": {"red": "colour"}}))
        if kind == "mask size":
            _png(root / "masks" / "x" / "red.png", size=(8, 8), value=255)
        elif kind == "bomb":
            _bomb(root / "images" / "x.png")
            _png(root / "masks" / "x" / "red.png", size=(16, 16), value=255)
    return build


def _foreign_onnx(ws: Path, _a: Assets) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), ws / "foreign.onnx")


def _user_folder(*names: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        for name in names:
            (ws / "out" / name).parent.mkdir(parents=True, exist_ok=True)
            (ws / "out" / name).write_text(f"the user's own {name}\n")
    return build


def _user_file(ws: Path, _a: Assets) -> None:
    (ws / "out").write_text("the user's own file\n")


def _card(ws: Path, _a: Assets) -> None:
    doc = {"schema": "inspectnet-model-card", "schema_version": 1, "model": {}, "data": {}, "sections": {},
           "timing": {}, "reproduce": {}}
    (ws / "card").mkdir()
    (ws / "card" / "card.json").write_text(json.dumps(doc))


def _checkpoint_of_another_run(ws: Path, a: Assets) -> None:
    from inspectnet import load_model

    zm = load_model(str(a.model))
    identity = {"model": zm.spec, "start_weights": "0" * 16, "data": "mnist5k:train", "config": {}}
    (ws / "out").mkdir()
    other = load_model(str(a.other)).model.state_dict()  # not the model as that run left it either
    torch.save({"identity": json.dumps(identity, sort_keys=True), "epoch": 1, "model": other,
                "optimizer": {}, "hooks": {}, "rng": torch.get_rng_state(), "history": "[]"},
               ws / "out" / "checkpoint.pt")


def _audit_state(text: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        (ws / "out").mkdir()
        (ws / "out" / "audit.json").write_text(text)
    return build


def _write(rel: str, text: str) -> Callable[[Path, Assets], None]:
    def build(ws: Path, _a: Assets) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    return build


def _nothing(_ws: Path, _a: Assets) -> None:
    pass


def _manifest(update: dict) -> Callable[[Path], None]:
    def damage(rec: Path) -> None:
        doc = json.loads((rec / "manifest.json").read_text())
        (rec / "manifest.json").write_text(json.dumps({**doc, **update}))
    return damage


OTHER_AUDIT = json.dumps({"format": "inspectnet-audit", "model": "timm:other", "model_fingerprint": "f" * 16,
                          "stages": {}})

BAD_INPUTS: dict[str, Callable[[Path, Assets], None]] = {
    "nothing": _nothing,
    "good images": lambda ws, a: _images(ws) and None,
    "zero-byte image": _bad_in_folder(lambda p: p.write_bytes(b""), "zero.png"),
    "truncated JPEG": _bad_in_folder(_truncated_jpeg, "cut.jpg"),
    "text file named .png": _bad_in_folder(lambda p: p.write_text("hello"), "text.png"),
    "decompression bomb": _bad_in_folder(_bomb, "bomb.png"),
    "symlink loop": _bad_in_folder(lambda p: os.symlink(p.name, p), "loop.png"),
    "empty class folder": lambda ws, a: (_images(ws) / "c").mkdir(),
    "folder without class folders": lambda ws, a: _png(ws / "imgs" / "x.png") and None,
    "only undecodable images": lambda ws, a: (ws / "imgs" / "a").mkdir(parents=True)
    or (ws / "imgs" / "a" / "x.png").write_text("no") and None,
    "bomb file": lambda ws, a: _bomb(ws / "bomb.png") and None,
    "zero-byte file": _write("zero.png", ""),
    "truncated JPEG file": lambda ws, a: _truncated_jpeg(ws / "cut.jpg") and None,
    "text weights": _weights("text"),
    "truncated weights": _weights("truncated"),
    "pickle that runs code": _weights("runs code"),
    "text safetensors": _weights("text safetensors"),
    "weights of other shapes": _weights("wrong shapes"),
    "model folder without config.json": _damaged_model(lambda m: (m / "config.json").unlink()),
    "model config not JSON": _damaged_model(lambda m: (m / "config.json").write_text("{")),
    "truncated model.safetensors": _damaged_model(lambda m: _truncate(m / "model.safetensors")),
    "record without features.npy": _damaged_record(lambda r: (r / "features.npy").unlink()),
    "record with truncated layer array": _damaged_record(lambda r: _truncate(r / "layers" / "layer4.npy", 1000)),
    "record with another array shape": _damaged_record(
        lambda r: np.save(r / "logits.npy", np.zeros((5, 10), np.float32))),
    "incomplete record": _damaged_record(_manifest({"complete": False})),
    "record manifest not JSON": _damaged_record(lambda r: (r / "manifest.json").write_text("[1,")),
    "folder that is no record": lambda ws, a: (ws / "rec").mkdir() or None,
    "concept folder without concepts.json": _concepts("no config"),
    "concepts.json not JSON": _concepts("config not JSON"),
    "segmentation colour missing from the legend": _concepts("legend"),
    "mask size differs from its image": _concepts("mask size"),
    "concept image bomb": _concepts("bomb"),
    "text file named .onnx": _write("model.onnx", "not onnx"),
    "ONNX without inspectnet metadata": _foreign_onnx,
    "--out is a file of the user's": _user_file,
    "--out holds the user's files": _user_folder("notes.txt"),
    "--out holds the user's README.md and probe/mine.txt": _user_folder("README.md", "probe/mine.txt"),
    "--out holds another probe record": lambda ws, a: _copy(a.test, ws / "out") and None,
    "--out holds another training run": _checkpoint_of_another_run,
    "--out holds a damaged checkpoint": _write("out/checkpoint.pt", "garbage"),
    "--out holds another model's audit": _audit_state(OTHER_AUDIT),
    "audit.json not JSON": _audit_state("{"),
    "--out.onnx exists": _write("out.onnx", "the user's own file"),
    "no card.json": lambda ws, a: (ws / "card").mkdir() or None,
    "card.json not JSON": _write("card/card.json", "{"),
    "card.json of another schema": _write("card/card.json", json.dumps({"schema": "other"})),
    "card to copy over the user's folder": lambda ws, a: _card(ws, a) or _user_folder("README.md")(ws, a),
    "card.json without the model's fields": _card,
}

# ---------------------------------------------------------------- the table
# (command, bad input, arguments, expected fragment of the one error line, expected exit code)
# Placeholders: {model} {other} {train} {test} {other_rec} {onnx} (shared assets), {ws} (the case's
# workspace); outputs go to {ws}/out.
M = ("{model}",)
PROBE = ("probe", "{model}", "digits", "--layers", "layer4", "--out", "{ws}/out")
IMGS = "{ws}/imgs"
FT = ("finetune", "{model}", "digits:train", "--limit", "16", "--epochs", "1", "--out", "{ws}/out", "--plugin")
DEC = ("decompose", "--fit", "{ws}/rec", "--eval", "{test}", "--model", "{model}", "--out", "{ws}/out")
AUDIT = ("audit", "{model}", "digits", "--limit", "16", "--out", "{ws}/out")
EXPORT = ("export", "{model}", "--out", "{ws}/out.onnx", "--no-latency")
RUN = ("run", "{onnx}")
CONCEPTS = ("dissect", "{model}", "{ws}/cf", "--layers", "layer1", "--out", "{ws}/out")
TABLE: list[tuple[str, str, tuple[str, ...], str, int]] = [
    # --- models and weights
    ("layers", "nothing", ("layers", "resnet1"), "closest: resnet18", 2),
    ("layers", "nothing", ("layers", "foo:bar"), "unknown source 'foo'", 2),
    ("layers", "text weights", ("layers", "test_resnet", "--weights", "{ws}/w.pt"), "w.pt is not a", 2),
    ("layers", "truncated weights", ("layers", "test_resnet", "--in-chans", "1", "--weights", "{ws}/w.pt"),
     "not a readable torch checkpoint", 2),
    ("layers", "pickle that runs code", ("layers", "test_resnet", "--weights", "{ws}/w.pt"),
     "needs arbitrary code to unpickle and was refused", 2),
    ("layers", "text safetensors", ("layers", "test_resnet", "--weights", "{ws}/w.safetensors"),
     "not a readable safetensors file", 2),
    ("layers", "weights of other shapes", ("layers", "test_resnet", "--in-chans", "1", "--num-classes", "10",
                                           "--weights", "{ws}/w.pt"), "'fc.weight' has shape (3,", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--weights", "{ws}/missing.pt"), "missing.pt does not exist", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--weights", "{ws}"), "is a folder; expected a .safetensors", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--in-chans", "0"), "--in-chans must be at least 1", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--num-classes", "0"), "--num-classes must be at least 1", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--input-size", "0"), "--input-size must be a positive", 2),
    ("layers", "nothing", ("layers", "test_resnet", "--num-classes", "many"), "invalid int value: 'many'", 2),
    ("layers", "model folder without config.json", ("layers", "{ws}/mdl"), "has no config.json", 2),
    ("layers", "model config not JSON", ("layers", "{ws}/mdl"), "is not valid JSON", 2),
    ("layers", "truncated model.safetensors", ("layers", "{ws}/mdl"), "not a readable safetensors file", 2),
    ("layers", "nothing", ("layers", *M, "--num-classes", "3"), "pass --reset-head", 2),
    ("(none)", "nothing", ("frobnicate",), "invalid choice: 'frobnicate'", 2),
    ("(none)", "nothing", (), "the following arguments are required: COMMAND", 2),
    # --- images and data
    ("probe", "zero-byte image", (*PROBE[:2], IMGS, *PROBE[3:]), "zero.png cannot be decoded", 2),
    ("probe", "truncated JPEG", (*PROBE[:2], IMGS, *PROBE[3:]), "cut.jpg cannot be decoded: image file is truncated", 2),
    ("probe", "text file named .png", (*PROBE[:2], IMGS, *PROBE[3:]), "not an image format Pillow knows", 2),
    ("probe", "decompression bomb", (*PROBE[:2], IMGS, *PROBE[3:]), "above the limit of 89,478,485", 2),
    ("probe", "symlink loop", (*PROBE[:2], IMGS, *PROBE[3:]), "loop.png does not exist or is not a file", 2),
    ("probe", "empty class folder", (*PROBE[:2], IMGS, *PROBE[3:]), "imgs/c is empty", 2),
    ("probe", "folder without class folders", (*PROBE[:2], IMGS, *PROBE[3:]), "has no class sub-folders", 2),
    ("probe", "only undecodable images", (*PROBE[:2], IMGS, *PROBE[3:], "--skip-bad"), "none of its 1 files", 2),
    ("probe", "nothing", (*PROBE[:2], "digts", *PROBE[3:]), "did you mean digits", 2),
    ("probe", "nothing", (*PROBE[:2], "digits:val", *PROBE[3:]), "split 'val' is unknown", 2),
    ("probe", "nothing", (*PROBE[:2], "shapes?n", *PROBE[3:]), "'n' is not key=value", 2),
    ("probe", "nothing", (*PROBE[:4], "layer9", *PROBE[5:]), "unknown layer 'layer9'", 2),
    ("probe", "nothing", (*PROBE, "--batch-size", "0"), "--batch-size must be at least 1", 2),
    ("probe", "nothing", (*PROBE, "--limit", "-5"), "--limit must be at least 1, got -5", 2),
    ("probe", "nothing", (*PROBE, "--limit", "0"), "--limit must be at least 1, got 0", 2),
    ("probe", "nothing", (*PROBE, "--workers", "-1"), "--workers: expected 0 or more", 2),
    ("probe", "nothing", (*PROBE, "--device", "cuda:7"), "CUDA", 2),
    ("probe", "nothing", (*PROBE, "--device", "tpu"), "is not a device", 2),
    ("probe", "nothing", (*PROBE, "--reducer", "median"), "invalid choice: 'median'", 2),
    ("probe", "nothing", ("probe", "test_resnet", "digits", "--in-chans", "2", *PROBE[3:]), "2 channels", 2),
    ("probe", "--out is a file of the user's", PROBE, "is a file", 2),
    ("probe", "--out holds the user's files", PROBE, "not empty and holds no probe record", 2),
    ("probe", "--out holds another probe record", PROBE, "differs in: data, num_samples", 2),
    # --- training and fine-tuning
    ("train", "nothing", ("train", *M, "digits:train", "--epochs", "0", "--out", "{ws}/out"), "--epochs must be", 2),
    ("train", "nothing", ("train", *M, "digits:train", "--seed", "4294967296", "--out", "{ws}/out"),
     "--seed must be within [0, 4294967295], got 4294967296", 2),
    ("train", "nothing", ("train", *M, "digits:train", "--lr", "nan", "--out", "{ws}/out"), "--lr must be", 2),
    ("train", "nothing", ("train", *M, "digits:train", "--lr", "-1", "--out", "{ws}/out"), "--lr must be positive", 2),
    ("train", "nothing", ("train", *M, "digits:train", "--limit", "0", "--out", "{ws}/out"),
     "--limit must be at least 1", 2),
    ("train", "nothing", ("train", *M, "samples", "--out", "{ws}/out"), "has no labels to train on", 2),
    ("train", "good images", ("train", "test_resnet", IMGS, "--num-classes", "1", "--out", "{ws}/out"),
     "a head of the data's size (--num-classes 2", 2),
    ("train", "--out is a file of the user's", ("train", *M, "digits:train", "--out", "{ws}/out"), "is a file", 2),
    ("train", "--out holds the user's files", ("train", *M, "digits:train", "--out", "{ws}/out"),
     "holds no training checkpoint", 2),
    ("train", "--out holds another training run", ("train", *M, "digits:train", "--limit", "16", "--epochs", "1",
                                                   "--out", "{ws}/out"), "start_weights: saved '0000", 2),
    ("train", "--out holds a damaged checkpoint", ("train", *M, "digits:train", "--limit", "16", "--out", "{ws}/out"),
     "checkpoint.pt cannot be read", 2),
    ("finetune", "nothing", (*FT, "ebpp"), "unknown plugin 'ebpp' (did you mean ebp?)", 2),
    ("finetune", "nothing", (*FT, "ebp:lam=nan"), "lam=nan is not a finite number", 2),
    ("finetune", "nothing", (*FT, "ebp:lam=inf"), "lam=inf is not a finite number", 2),
    ("finetune", "nothing", (*FT, "ebp:lam=-1"), "below its minimum", 2),
    ("finetune", "nothing", (*FT, "ebp:K=0"), "K=0 is below its minimum 1", 2),
    ("finetune", "nothing", (*FT, "ebp:K=many"), "K='many' is not a valid int", 2),
    ("finetune", "nothing", (*FT, "ebp:foo=1"), "unknown hyperparameter 'foo'", 2),
    ("finetune", "nothing", (*FT, "ebp:K"), "'K' is not key=value", 2),
    ("finetune", "nothing", (*FT, "ebp:layer=layer9"), "plugin ebp: unknown layer 'layer9'", 2),
    ("finetune", "nothing", (*FT, "kwta:k=nan"), "k=nan is not a finite number", 2),
    ("finetune", "nothing", (*FT, "sparseout:p=inf"), "p=inf is not a finite number", 2),
    ("finetune", "nothing", (*FT, "ebp", "--freeze-until", "layer9"), "unknown layer 'layer9'", 2),
    ("finetune", "nothing", (*FT, "ebp", "--resume"), "holds no checkpoint.pt", 2),
    ("finetune", "nothing", (*FT, "ebp", "--weight-decay", "nan"), "--weight-decay must be a finite", 2),
    # --- predict and run
    ("predict", "nothing", ("predict", *M, "{ws}/missing.png"), "missing.png does not exist", 2),
    ("predict", "zero-byte file", ("predict", *M, "{ws}/zero.png"), "zero.png cannot be decoded", 2),
    ("predict", "bomb file", ("predict", *M, "{ws}/bomb.png"), "declares 30000×30000", 2),
    ("predict", "truncated JPEG file", ("predict", *M, "{ws}/cut.jpg"), "image file is truncated", 2),
    ("predict", "good images", ("predict", *M, "{ws}/imgs/a/ok0.png", "--topk", "0"), "--topk must be at least 1", 2),
    ("run", "nothing", ("run", "{ws}/missing.onnx", "x.png"), "missing.onnx does not exist", 2),
    ("run", "text file named .onnx", ("run", "{ws}/model.onnx", "x.png"), "is not a loadable ONNX model", 2),
    ("run", "ONNX without inspectnet metadata", ("run", "{ws}/foreign.onnx", "x.png"), "not written by inspectnet", 2),
    ("run", "bomb file", (*RUN, "{ws}/bomb.png"), "declares 30000×30000", 2),
    ("run", "truncated JPEG file", (*RUN, "{ws}/cut.jpg"), "image file is truncated", 2),
    ("run", "zero-byte file", (*RUN, "{ws}/zero.png"), "zero.png cannot be decoded", 2),
    ("run", "good images", (*RUN, "{ws}/imgs/a/ok0.png", "--topk", "0"),
     "--topk and --batch-size must be at least 1", 2),
    ("run", "good images", (*RUN, "{ws}/imgs/a/ok0.png", "--batch-size", "0"),
     "--topk and --batch-size must be at least 1", 2),
    ("run", "good images", (*RUN, IMGS, "--limit", "0"), "--limit must be at least 1", 2),
    ("run", "good images", (*RUN, IMGS, "--threads", "0"), "--threads must be at least 1", 2),
    # --- explain
    ("explain", "nothing", ("explain", "{model}", "{ws}/missing.png", "--out", "{ws}/out"), "missing.png does not exist",
     2),
    ("explain", "bomb file", ("explain", "{model}", "{ws}/bomb.png", "--out", "{ws}/out"), "declares 30000×30000", 2),
    ("explain", "good images", ("explain", "{model}", "{ws}/imgs/a/ok0.png", "--classes", "99", "--out", "{ws}/out"),
     "--classes names class 99", 2),
    ("explain", "nothing", ("explain", "{model}", "digits:test", "--limit", "0", "--out", "{ws}/out"),
     "--limit must be at least 1", 2),
    ("explain", "--out is a file of the user's", ("explain", "{model}", "digits:test", "--limit", "1", "--out",
                                                   "{ws}/out"), "is a file", 2),
    # --- writing data as a folder, merging a record's shards
    ("folder", "nothing", ("folder", "digts", "--out", "{ws}/out"), "did you mean digits", 2),
    ("folder", "nothing", ("folder", "digits", "--out", "{ws}/out", "--limit", "0"), "--limit must be at least 1", 2),
    ("folder", "--out is a file of the user's", ("folder", "digits", "--out", "{ws}/out"), "is not an empty folder", 2),
    ("merge", "nothing", ("merge", "{ws}/missing"), "missing/manifest.json does not exist", 2),
    ("merge", "nothing", ("merge", "{train}"), "has no per-rank shards to merge", 2),
    # --- probe records
    ("decompose", "record without features.npy", DEC, "features.npy is missing", 2),
    ("decompose", "record with truncated layer array", DEC, "layers/layer4.npy is truncated", 2),
    ("decompose", "record with another array shape", DEC, "logits.npy holds (5, 10)", 2),
    ("decompose", "incomplete record", DEC, "is incomplete", 2),
    ("decompose", "record manifest not JSON", DEC, "is not valid JSON", 2),
    ("decompose", "folder that is no record", DEC, "manifest.json does not exist", 2),
    ("decompose", "nothing", ("decompose", "--fit", "{train}", "--eval", "{test}", "--model", "{model}", "--k1", "2",
                              "--k2", "3", "--out", "{ws}/out"), "k2 <= k1 is required", 2),
    ("decompose", "nothing", ("decompose", "--fit", "{train}", "--eval", "{test}", "--out", "{ws}/out"),
     "needs --model", 2),
    ("decompose", "nothing", ("decompose", "--fit", "{train}", "--eval", "{other_rec}", "--model", "{model}",
                              "--out", "{ws}/out"), "different models", 2),
    ("decompose", "nothing", ("decompose", "--fit", "{train}", "--eval", "{test}", "--model", "{model}", "--data",
                              "digts", "--out", "{ws}/out"), "did you mean digits", 2),
    ("decompose", "--out is a file of the user's", ("decompose", "--fit", "{train}", "--eval", "{test}", "--model",
                                                    "{model}", "--out", "{ws}/out"), "is a file", 2),
    ("rules", "--out is a file of the user's", ("rules", "{train}", "--layer", "layer4", "--out", "{ws}/out"),
     "is a file", 2),
    ("rules", "nothing", ("rules", "{train}", "--layer", "layer2", "--out", "{ws}/out"), "has no layer 'layer2'", 2),
    ("rules", "nothing", ("rules", "{train}", "--layer", "layer4", "--seed", "-1", "--out", "{ws}/out"),
     "expected a whole number from 0 to 4294967295, got '-1'", 2),
    ("rules", "nothing", ("rules", "{train}", "--layer", "layer4", "--quantize-param", "nan", "--out", "{ws}/out"),
     "--quantize-param must be a finite number", 2),
    ("rules", "record with truncated layer array", ("rules", "{ws}/rec", "--layer", "layer4", "--out", "{ws}/out"),
     "is damaged", 2),
    ("sparsity", "record without features.npy", ("sparsity", "{ws}/rec"), "features.npy is missing", 2),
    ("sparsity", "nothing", ("sparsity", "{train}", "--layer", "layer1"), "has no layer 'layer1'", 2),
    ("linprobe", "--out is a file of the user's", ("linprobe", "{train}", "--eval", "{test}", "--out", "{ws}/out"),
     "is a file", 2),
    ("linprobe", "nothing", ("linprobe", "{train}", "--eval", "{test}", "--C", "nan"), "--C must be a finite", 2),
    ("linprobe", "nothing", ("linprobe", "{train}", "--eval", "{ws}/missing"), "does not exist", 2),
    # --- comparison, dissection, SAN
    ("compare", "nothing", ("compare", *M, "digits:train", "--plugins", "vanilla,ebp", "--sweep", "ebp.lam=abc",
                            "--layer", "layer4", "--out", "{ws}/out"), "lam='abc' is not a valid float", 2),
    ("compare", "nothing", ("compare", *M, "digits:train", "--plugins", "vanilla,ebp", "--sweep", "ebp",
                            "--layer", "layer4", "--out", "{ws}/out"), "expected PLUGIN.PARAM=v1/v2", 2),
    ("compare", "nothing", ("compare", *M, "digits:train", "--plugins", "vanilla,vanilla", "--layer", "layer4",
                            "--out", "{ws}/out"), "lists a configuration twice", 2),
    ("compare", "nothing", ("compare", *M, "digits:train", "--plugins", "vanilla", "--seeds", "0", "--layer", "layer4",
                            "--out", "{ws}/out"), "--seeds must be at least 1", 2),
    ("compare", "nothing", ("compare", *M, "digits", "--plugins", "vanilla", "--layer", "layer4", "--out",
                            "{ws}/out"), "cannot derive test data", 2),
    ("dissect", "concept folder without concepts.json", CONCEPTS, "has no concepts.json", 2),
    ("dissect", "concepts.json not JSON", CONCEPTS, "is not valid JSON", 2),
    ("dissect", "segmentation colour missing from the legend", CONCEPTS, "colour '#ff0000', which the legend", 2),
    ("dissect", "mask size differs from its image", CONCEPTS, "pass --resize-masks", 2),
    ("dissect", "concept image bomb", CONCEPTS, "declares 30000×30000", 2),
    ("dissect", "nothing", ("dissect", *M, "shapes?n=8", "--layers", "layer1", "--quantile", "nan", "--out",
                            "{ws}/out"), "--quantile must be within (0, 1)", 2),
    ("dissect", "nothing", ("dissect", *M, "shapes?n=8", "--layers", "pre_logits", "--out", "{ws}/out"),
     "cannot dissect it", 2),
    ("dissect", "nothing", ("dissect", *M, "digits", "--layers", "layer1", "--out", "{ws}/out"),
     "has no concept masks", 2),
    ("concepts", "nothing", ("concepts", *M, "digits", "--layer", "layer4", "--k", "0", "--out", "{ws}/out"),
     "the number of concepts k must be at least 1", 2),
    ("concepts", "nothing", ("concepts", *M, "digits", "--layer", "pre_logits", "--out", "{ws}/out"),
     "must name one layer with spatial maps", 2),
    ("concepts", "nothing", ("concepts", *M, "digits", "--layer", "layer4.0.conv2", "--limit", "8", "--out",
                             "{ws}/out"), "has negative activations", 2),
    ("concepts", "nothing", ("concepts", *M, "digits", "--method", "sae", "--k", "4", "--active", "5", "--out",
                             "{ws}/out"), "active codes per cell must be within 1..4", 2),
    ("san", "nothing", ("san", "digits", "--val-fraction", "0", "--out", "{ws}/out"), "must be between 0 and 1", 2),
    ("san", "nothing", ("san", "digits", "--limit", "1", "--out", "{ws}/out"), "--limit must be at least 2", 2),
    ("san", "nothing", ("san", "digits", "--model", "{model}", "--out", "{ws}/out"), "needs --layer", 2),
    ("san", "nothing", ("san", "digits", "--kernel-sizes", "4", "--limit", "8", "--out", "{ws}/out"),
     "must be odd", 2),
    ("san", "nothing", ("san", "digits", "--activation", "relu", "--limit", "8", "--out", "{ws}/out"),
     "--activation 'relu' is unknown", 2),
    # --- export
    ("export", "nothing", (*EXPORT, "--exporter", "dynamo", "--opset", "3"),
     "--opset 3 is outside what the dynamo exporter writes", 2),
    ("export", "nothing", (*EXPORT, "--exporter", "dynamo", "--opset", "17"), "the torchscript exporter writes it", 2),
    ("export", "nothing", (*EXPORT, "--exporter", "torchscript", "--opset", "21"), "dynamo exporter writes it", 2),
    ("export", "nothing", ("export", *M, "--out", "{ws}/out.pt"), "must end in .onnx", 2),
    ("export", "--out.onnx exists", EXPORT, "pass --force to overwrite it", 2),
    ("export", "nothing", (*EXPORT, "--int8"), "--int8 needs --calibration", 2),
    ("export", "nothing", (*EXPORT, "--threads", "0"), "--threads must be at least 1", 2),
    ("export", "nothing", (*EXPORT, "--int8", "--calibration", "digits:train", "--evidence", "--exporter",
                           "torchscript"), "--int8 with --evidence needs the dynamo exporter", 2),
    ("export", "nothing", (*EXPORT, "--int8", "--calibration", "digits", "--calibration-limit", "0"),
     "--calibration-limit must be at least 1", 2),
    ("export", "decompression bomb", (*EXPORT, "--int8", "--calibration", IMGS), "above the limit", 2),
    # --- audit and cards
    ("audit", "nothing", (*AUDIT[:4], "0", *AUDIT[5:]), "--limit must be at least 1, got 0", 2),
    ("audit", "nothing", (*AUDIT, "--concepts", "{ws}/nonexistent"), "neither a concept folder", 2),
    ("audit", "--out holds the user's README.md and probe/mine.txt", AUDIT, "not empty and holds no audit", 2),
    ("audit", "--out holds another model's audit", AUDIT, "holds the audit of another model", 2),
    ("audit", "audit.json not JSON", AUDIT, "is not valid JSON", 2),
    ("audit", "--out is a file of the user's", AUDIT, "is a file", 2),
    ("audit", "nothing", (*AUDIT, "--k1", "2", "--k2", "3"), "k2 <= k1 is required", 2),
    ("audit", "nothing", (*AUDIT, "--seed", "-1"), "--seed must be within [0, 4294967295], got -1", 2),
    ("audit", "nothing", (*AUDIT, "--layer", "layer9"), "unknown layer 'layer9'", 2),
    ("audit", "nothing", (*AUDIT, "--eval", "digts"), "did you mean digits", 2),
    ("audit", "nothing", (*AUDIT, "--ig-steps", "0"), "--ig-steps must be at least 1", 2),
    ("card", "no card.json", ("card", "{ws}/card"), "holds no card.json", 2),
    ("card", "card.json not JSON", ("card", "{ws}/card"), "is not valid JSON", 2),
    ("card", "card.json of another schema", ("card", "{ws}/card"), "is not an inspectnet model card", 2),
    ("card", "card.json without the model's fields", ("card", "{ws}/card"), "card.json is damaged", 2),
    ("card", "card to copy over the user's folder", ("card", "{ws}/card", "--copy-to", "{ws}/out"),
     "exists and holds no card", 2),
    # --- environment
    ("probe", "nothing", ("env:INSPECTNET_MAX_PIXELS=lots", *PROBE[:2], IMGS, *PROBE[3:]),
     "INSPECTNET_MAX_PIXELS='lots' is not a positive number", 2),
]
# the environment case needs an image folder too
BAD_FOR_ENV = "good images"


def _case_id(row: tuple) -> str:
    command, bad, argv, _, _ = row
    detail = bad if bad != "nothing" else " ".join(a for a in argv[1:] if "{" not in a)[:48]
    return f"{command}: {detail}"


# ---------------------------------------------------------------- the rule every case must keep
def _snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (links by their target) under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _accepted_by_a_later_command(path: Path) -> list[str]:
    """Which loaders of a later command accept ``path`` (or a folder below it)."""
    from inspectnet import ProbeRecord, load_model
    from inspectnet.reports.card import load_card
    from inspectnet.runtime.classifier import OnnxClassifier

    accepted = []
    folders = [path, *(p for p in path.rglob("*") if p.is_dir())] if path.is_dir() else []
    for folder in folders:
        for name, load in (("probe record", ProbeRecord.load), ("model", lambda f: load_model(str(f))),
                           ("card", load_card)):
            try:
                load(folder)
                accepted.append(f"{name} {folder}")
            except InspectnetError:
                pass
    for onnx_file in ([path] if path.suffix == ".onnx" else []) + list(path.rglob("*.onnx") if path.is_dir() else []):
        try:
            OnnxClassifier(onnx_file, device="cpu")
            accepted.append(f"onnx {onnx_file}")
        except InspectnetError:
            pass
    return accepted


def check_outcome(code: int, out: str, err: str, expected_code: int, fragment: str) -> None:
    lines = [line for line in err.splitlines() if ERROR in line]
    assert code == expected_code, f"exit {code}, expected {expected_code}; stderr: {err[-2000:]}"
    assert len(lines) == 1, f"{len(lines)} error lines: {err[-2000:]}"
    assert lines[0].startswith(ERROR), lines[0]
    assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]


@pytest.mark.parametrize("row", TABLE, ids=[_case_id(r) for r in TABLE])
def test_fault(row, assets, tmp_path, capfd, monkeypatch):
    run_case(row, BAD_INPUTS, assets, tmp_path, capfd, monkeypatch)


def run_case(row: tuple, bad_inputs: dict, assets: Assets, tmp_path: Path, capfd, monkeypatch) -> None:
    """One row of a fault table, built with ``bad_inputs``, checked against the rule every case must keep."""
    command, bad, argv, fragment, expected_code = row
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("a file of the user's, next to the bad input\n")
    env = [a for a in argv if a.startswith("env:")]
    bad_inputs[BAD_FOR_ENV if env else bad](ws, assets)
    for item in env:
        key, _, value = item[4:].partition("=")
        monkeypatch.setenv(key, value)
    names = {f.name: str(getattr(assets, f.name)) for f in dataclasses.fields(assets)}
    args = [a.format(ws=ws, **names) for a in argv if not a.startswith("env:")]
    before, shared = _snapshot(ws), _snapshot(assets.root)
    monkeypatch.chdir(ws)
    capfd.readouterr()
    code = main(args)
    out, err = capfd.readouterr()
    check_outcome(code, out, err, expected_code, fragment)
    after = _snapshot(ws)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"user files changed or removed: {changed}"
    outside = [p for p in after if p not in before and not (p == "out" or p.startswith("out"))]
    assert not outside, f"written outside --out: {outside}"
    assert _snapshot(assets.root) == shared, "the shared model, records or ONNX file changed"
    for name in ("out", "out.onnx"):
        if (ws / name).exists() and name not in {p.split("/")[0] for p in before}:
            assert not _accepted_by_a_later_command(ws / name)


def test_the_table_is_large_and_covers_every_command():
    import argparse

    from inspectnet.cli import build_parser

    parser = build_parser([])
    commands = set(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)
    assert len(TABLE) >= 80
    assert commands - {"plugins"} <= {row[0] for row in TABLE}  # `plugins` fails only through a broken
    assert {row[1] for row in TABLE} <= set(BAD_INPUTS)           # third-party plugin: a subprocess case below
    assert all(row[4] != 0 for row in TABLE)


# ---------------------------------------------------------------- subprocess cases
def _cli(*argv: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", "inspectnet", *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_worker_processes_report_a_bad_image_in_one_line(assets, tmp_path):
    """--workers 2: the image error raised in a DataLoader worker is the same one line, no worker traceback."""
    BAD_INPUTS["truncated JPEG"](tmp_path, assets)
    proc = _cli("probe", str(assets.model), str(tmp_path / "imgs"), "--layers", "layer4", "--workers", "2",
                "--out", str(tmp_path / "out"))
    check_outcome(proc.returncode, proc.stdout, proc.stderr, 2, "cut.jpg cannot be decoded: image file is truncated")
    assert "DataLoader worker" not in proc.stderr


def test_a_plugin_whose_import_fails_is_one_line(tmp_path):
    """A third-party plugin registered through an entry point whose module raises on import."""
    site = tmp_path / "site"
    (site / "brokenplugin-1.0.dist-info").mkdir(parents=True)
    (site / "brokenplugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplugin\n"
                                                                   "Version: 1.0\n")
    (site / "brokenplugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[inspectnet.plugins]\nbroken = brokenplugin:Plugin\n")
    (site / "brokenplugin.py").write_text("raise ImportError('brokenplugin needs a library that is missing')\n")
    proc = _cli("plugins", env={"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])})
    check_outcome(proc.returncode, proc.stdout, proc.stderr, 2, "plugin 'broken' (brokenplugin:Plugin) failed to load")


def test_an_internal_error_is_one_line_and_its_traceback_is_on_request(monkeypatch, capfd):
    """A bug (an exception that is no InspectnetError) still prints one line, exit 1; the env var shows it."""
    import inspectnet.cli.plugins as plugins_cli

    def broken(_args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(plugins_cli, "run", broken)
    code = main(["plugins"])
    out, err = capfd.readouterr()
    check_outcome(code, out, err, 1, "internal error ZeroDivisionError: division by zero")
    monkeypatch.setenv("INSPECTNET_TRACEBACK", "1")
    with pytest.raises(ZeroDivisionError):
        main(["plugins"])


def _kill_at(argv: list[str], cwd: Path, ready: Callable[[], bool], extra: float) -> str:
    """Start the command, wait until ``ready()`` (work is under way), ``extra`` seconds more, then kill -9."""
    proc = subprocess.Popen([sys.executable, "-m", "inspectnet", *argv], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(extra)
    if proc.poll() is not None:
        return f"finished before the kill (exit {proc.returncode})"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return "killed"


def _json_or_empty(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def test_probe_killed_at_a_random_point_resumes_bit_for_bit(assets, tmp_path, capfd, monkeypatch):
    """kill -9 after a random number of samples (drawn, seeded), then the same command: the same record."""
    import torch

    from inspectnet import ProbeRecord

    # the reference runs in this process: the command's processes use as many threads (the sums' order)
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))

    args = ["probe", str(assets.model), "digits", "--layers", "layer2,layer4", "--batch-size", "4", "--limit", "200"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0  # the uninterrupted run, in-process
    part = tmp_path / "part"
    target = int(np.random.default_rng(17).integers(8, 192))
    event = _kill_at([*args, "--out", str(part)], tmp_path,
                     lambda: _json_or_empty(part / "progress.json").get("done", 0) >= target, 0.0)
    done = _json_or_empty(part / "progress.json").get("done")
    final = _cli(*args, "--out", str(part), cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    ref, got = ProbeRecord.load(tmp_path / "ref"), ProbeRecord.load(part)
    for name in ("features", "logits", "labels"):
        assert np.array_equal(getattr(ref, name), getattr(got, name)), (name, event, done)
    for layer in ref.layers:
        assert np.array_equal(ref.activations(layer), got.activations(layer)), (layer, event, done)


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["train", "test_resnet", "digits:train", "--in-chans", "1", "--num-classes", "10", "--input-size", "16",
     "--epochs", "4", "--limit", "256", "--batch-size", "32"],
    ["finetune", "{model}", "digits:train", "--plugin", "ebp:K=4,layer=layer4", "--plugin", "sparseout:p=0.2",
     "--epochs", "4", "--limit", "256", "--batch-size", "32"],
], ids=["train", "finetune"])
def test_training_killed_at_random_points_resumes_bit_for_bit(command, assets, tmp_path):
    """Three kills, each after a random number of finished epochs plus a random part of the next one."""
    args = [a.format(model=assets.model) for a in command]
    assert _cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    part, rng, events = tmp_path / "part", np.random.default_rng(3), []
    for _ in range(3):
        epochs = int(rng.integers(0, 4))
        events.append(_kill_at([*args, "--out", str(part)], tmp_path,
                               lambda e=epochs: len(_lines(part / "metrics.jsonl")) >= e, float(rng.uniform(0, 2))))
    final = _cli(*args, "--out", str(part))
    assert final.returncode == 0, final.stderr[-3000:]
    assert (tmp_path / "ref" / "model.safetensors").read_bytes() == (part / "model.safetensors").read_bytes(), events
    assert (tmp_path / "ref" / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


@pytest.mark.slow
def test_audit_killed_at_random_points_gives_the_same_card(tmp_path):
    """Three kills, each once a random number of stages has finished, plus a random delay."""
    from inspectnet import load_data, load_model
    from inspectnet.data.subsets import spread_subset
    from inspectnet.training.loop import TrainConfig, train

    # trained briefly, so that it predicts several classes: an untrained one predicts one class, and the
    # rules stage rightly fails on it
    zm = load_model("test_resnet", num_classes=10, in_chans=1, input_size=16, seed=0)
    train(zm, spread_subset(load_data("digits:train", zm.transform()), 160), tmp_path / "model",
          TrainConfig(epochs=2, batch_size=32, lr=0.05), device="cpu")
    args = ["audit", str(tmp_path / "model"), "digits:train", "--eval", "digits:test", "--limit", "64", "--eval-limit",
            "48", "--layers", "layer3,layer4", "--images", "2", "--ig-steps", "4", "--top-units", "2"]
    assert _cli(*args, "--out", str(tmp_path / "ref")).returncode == 0
    part, rng, events = tmp_path / "part", np.random.default_rng(5), []

    def finished() -> int:
        return sum(s.get("status") == "ok" for s in _json_or_empty(part / "audit.json").get("stages", {}).values())

    for _ in range(3):
        stages = int(rng.integers(0, 6))
        events.append(_kill_at([*args, "--out", str(part)], tmp_path, lambda n=stages: finished() >= n,
                               float(rng.uniform(0, 3))))
    final = _cli(*args, "--out", str(part))
    assert final.returncode == 0, final.stderr[-3000:]

    def results(folder: Path) -> dict:
        card = json.loads((folder / "card.json").read_text())
        return {k: (s["status"], s.get("result")) for k, s in card["sections"].items()}

    assert results(tmp_path / "ref") == results(part), events
    state = json.loads((part / "audit.json").read_text())
    written = {f for s in state["stages"].values() for f in s.get("files", [])}
    on_disk = {str(p.relative_to(part)) for p in part.rglob("*") if p.is_file() and p.parent != part}
    assert on_disk == written, events  # every file in a stage folder is one a finished stage recorded


# ---------------------------------------------------------------- defects once found, each kept fixed
def test_audit_never_adopts_a_folder_of_user_files(assets, tmp_path):
    """A folder whose entries carry the audit's own names, but holds no audit.json, is refused untouched."""
    from inspectnet import load_model
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    out = tmp_path / "mine"
    (out / "probe").mkdir(parents=True)
    (out / "README.md").write_text("my readme\n")
    (out / "probe" / "mine.txt").write_text("my notes\n")
    before = _snapshot(out)
    with pytest.raises(InspectnetError, match="not empty and holds no audit"):
        run_audit(load_model(str(assets.model)), AuditConfig(data="digits", limit=16), out, log=None)
    assert _snapshot(out) == before


def _train(model: Path, out: Path):
    from inspectnet import load_data, load_model
    from inspectnet.training.loop import TrainConfig, train

    zm = load_model(str(model))
    return train(zm, load_data("digits:train", zm.transform()), out, TrainConfig(epochs=1, batch_size=16, limit=32),
                 device="cpu")


def test_a_run_folder_refuses_another_starting_model(assets, tmp_path):
    """train/finetune into a folder holding a run that started from other weights: refused, naming them."""
    _train(assets.model, tmp_path / "run")
    with pytest.raises(InspectnetError, match="different training run .*start_weights: saved '[0-9a-f]{16}', now"):
        _train(assets.other, tmp_path / "run")
    capture = tmp_path / "w.pt"  # the same architecture, other --weights
    from inspectnet import load_model

    torch.save(load_model(str(assets.other)).model.state_dict(), capture)
    code = main(["train", str(assets.model), "digits:train", "--limit", "32", "--epochs", "1", "--batch-size", "16",
                 "--device", "cpu", "--weights", str(capture), "--out", str(tmp_path / "run")])
    assert code == 2
    _train(assets.model, tmp_path / "run")  # the same start resumes (here: finds the run complete)


def test_train_is_seeded_by_seed(tmp_path, capfd):
    argv = ["train", "test_resnet", "digits:train", "--in-chans", "1", "--num-classes", "10", "--input-size", "16",
            "--epochs", "1", "--limit", "32", "--batch-size", "16", "--device", "cpu"]
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main([*argv, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    weights = {n: (tmp_path / n / "model.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"]   # two identical commands, the same weights
    assert weights["a"] != weights["c"]   # another seed, another initialisation


def _grey16(path: Path) -> np.ndarray:
    """A 16-bit grey PNG of a diagonal gradient; returns the 8-bit picture it shows."""
    ramp = np.add.outer(np.arange(24), np.arange(24)) * (65535 // 46)
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return np.clip(np.rint(ramp / 257.0), 0, 255).astype(np.uint8)


def test_sixteen_bit_pngs_are_scaled_on_every_path(assets, tmp_path):
    """Torch datasets, `inspectnet predict` and the torch-free `inspectnet run` see the picture, not white."""
    from inspectnet import load_data, load_model
    from inspectnet.models.predict import predict
    from inspectnet.runtime.classifier import OnnxClassifier, load_image

    (tmp_path / "d" / "a").mkdir(parents=True)
    eight = _grey16(tmp_path / "d" / "a" / "wide.png")
    Image.fromarray(eight).save(tmp_path / "d" / "a" / "narrow.png")
    assert (np.asarray(Image.open(tmp_path / "d" / "a" / "wide.png").convert("L")) == 255).mean() > 0.9  # Pillow
    zm = load_model(str(assets.model))
    ds = load_data(str(tmp_path / "d"), zm.transform())
    assert np.array_equal(np.asarray(ds.image(1)), eight)   # files sort: narrow.png, wide.png
    assert torch.equal(ds[0][0], ds[1][0])
    wide, narrow = (predict(zm, [tmp_path / "d" / "a" / f"{n}.png"], topk=10) for n in ("wide", "narrow"))
    assert wide[0]["top"] == narrow[0]["top"]
    clf = OnnxClassifier(assets.onnx, device="cpu")
    assert np.array_equal(np.asarray(load_image(tmp_path / "d" / "a" / "wide.png")), eight)
    got = clf.predict([tmp_path / "d" / "a" / "wide.png", tmp_path / "d" / "a" / "narrow.png"], topk=10)
    assert got[0]["top"] == got[1]["top"]
    assert np.array_equal(clf.preprocess_images([Image.open(tmp_path / "d" / "a" / "wide.png")]),
                          clf.preprocess_images([Image.fromarray(eight)]))  # PIL images given directly, too


@pytest.mark.parametrize("damage, named", [
    (lambda r: (r / "features.npy").unlink(), "features.npy is missing"),
    (lambda r: _truncate(r / "layers" / "layer4.npy", 1000), "layers/layer4.npy is truncated"),
    (lambda r: np.save(r / "labels.npy", np.zeros(3, np.int64)), "labels.npy holds (3,)"),
], ids=["deleted", "truncated", "replaced"])
def test_damaged_record_is_refused_then_repaired(assets, tmp_path, damage, named):
    from inspectnet import ProbeRecord, load_data, load_model, run_probe

    rec = _copy(assets.train, tmp_path / "rec")
    damage(rec)
    with pytest.raises(InspectnetError, match=f"is damaged: {re.escape(named)}.*re-run"):
        ProbeRecord.load(rec)
    zm = load_model(str(assets.model))
    repaired = run_probe(zm, load_data("digits:train", zm.transform()), "layer4", rec, limit=48)
    original = ProbeRecord.load(assets.train)
    for name in ("features", "logits", "labels"):
        assert np.array_equal(getattr(repaired, name), getattr(original, name))
    assert np.array_equal(repaired.activations("layer4"), original.activations("layer4"))


def test_an_interrupted_record_with_a_lost_array_starts_over(assets, tmp_path):
    """Resuming trusts the rows already written only when every array is intact."""
    import inspectnet.probe.record as record
    from inspectnet import ProbeRecord, load_data, load_model, run_probe

    zm = load_model(str(assets.model))
    ds = load_data("digits:train", zm.transform())
    rec = _copy(assets.train, tmp_path / "rec")
    manifest = json.loads((rec / "manifest.json").read_text())
    (rec / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    progress = json.loads((rec / "progress.json").read_text())
    (rec / "progress.json").write_text(json.dumps({**progress, "done": 16}))
    (rec / "logits.npy").unlink()
    assert record.damage(rec, manifest) == {"logits.npy": "logits.npy is missing"}
    resumed = run_probe(zm, ds, "layer4", rec, limit=48)
    assert np.array_equal(resumed.logits, ProbeRecord.load(assets.train).logits)  # rows 0-15 too, not zeros


def test_impossible_audit_arguments_are_refused_before_anything_runs(assets, tmp_path):
    from inspectnet import load_model
    from inspectnet.pipelines.audit import AuditConfig, run_audit

    zm = load_model(str(assets.model))
    for config, message in ((lambda: AuditConfig(data="digits", limit=0), "limit= must be at least 1, got 0"),
                            (lambda: AuditConfig(data="digits", concepts=str(tmp_path / "nonexistent")),
                             "neither a concept folder")):
        with pytest.raises(InspectnetError, match=message):
            run_audit(zm, config(), tmp_path / "out", log=None)
        assert not (tmp_path / "out").exists()


def test_the_written_opset_is_the_one_asked_for(assets, tmp_path):
    import onnx

    from inspectnet import export_onnx, load_model

    zm = load_model(str(assets.model))
    with pytest.raises(InspectnetError, match="--opset 3 is outside"):
        export_onnx(zm, tmp_path / "a.onnx", opset=3)
    assert not list(tmp_path.iterdir())
    res = export_onnx(zm, tmp_path / "b.onnx", opset=17, exporter="torchscript", latency=False)
    written = {o.domain: o.version for o in onnx.load(str(tmp_path / "b.onnx")).opset_import}
    assert res.opset == 17 and written[""] == 17


def test_a_probe_resumed_with_another_batch_size_agrees_to_float32_rounding(assets, tmp_path, interrupt_at):
    """The batch size is not part of a record's identity; the difference it makes is bounded and recorded."""
    from inspectnet import load_data, load_model, run_probe

    zm = load_model(str(assets.model))
    ds = load_data("digits:train", zm.transform())
    fresh = run_probe(zm, ds, "layer2,layer4", tmp_path / "fresh", batch_size=8, limit=40)

    stopping = interrupt_at(ds, 21)
    with pytest.raises(KeyboardInterrupt):
        run_probe(zm, stopping, "layer2,layer4", tmp_path / "mixed", batch_size=8, limit=40)
    mixed = run_probe(zm, ds, "layer2,layer4", tmp_path / "mixed", batch_size=5, limit=40)
    assert mixed.manifest["batch_sizes"] == [5, 8]
    for a, b in [(fresh.features, mixed.features), (fresh.logits, mixed.logits),
                 *((fresh.activations(k), mixed.activations(k)) for k in ("layer2", "layer4"))]:
        assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5 * max(np.abs(np.asarray(a)).max(), 1e-12)
    assert np.array_equal(fresh.predictions, mixed.predictions)


def test_skip_bad_skips_every_undecodable_file_and_counts_it(assets, tmp_path, capfd):
    for bad in ("decompression bomb", "truncated JPEG", "zero-byte image", "symlink loop"):
        BAD_INPUTS[bad](tmp_path, assets)
    (tmp_path / "map.json").write_text('{"a": 0, "b": 1}')  # the folder's classes onto the model's placeholders
    code = main(["probe", str(assets.model), str(tmp_path / "imgs"), "--layers", "layer4", "--skip-bad",
                 "--class-map", str(tmp_path / "map.json"), "--out", str(tmp_path / "out")])
    _, err = capfd.readouterr()
    assert code == 0 and "skipped 4 undecodable file(s)" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["num_samples"] == 4
    assert sorted(Path(f).name for f in manifest["skipped_files"]) == ["bomb.png", "cut.jpg", "loop.png", "zero.png"]


def test_the_pixel_limit_can_be_lowered_and_raised(tmp_path, monkeypatch):
    from inspectnet.core.images import open_image

    path = _png(tmp_path / "x.png", size=(20, 10))
    monkeypatch.setenv("INSPECTNET_MAX_PIXELS", "199")
    with pytest.raises(InspectnetError, match="declares 20×10 = 200 pixels, above the limit of 199"):
        open_image(path)
    monkeypatch.setenv("INSPECTNET_MAX_PIXELS", "200")
    assert open_image(path).size == (20, 10)
    from PIL import Image as PILImage

    assert PILImage.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own setting is left as it was


def test_bad_limits_leave_nothing_and_killed_exports_are_cleaned(assets, tmp_path, capfd):
    from inspectnet import export_onnx, load_model

    assert main(["probe", str(assets.model), "digits", "--layers", "layer4", "--limit", "-5",
                 "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()  # no progress.json with -5 samples
    assert main(["compare", str(assets.model), "digits:train", "--plugins", "vanilla,ebp", "--sweep", "ebp.lam=abc",
                 "--layer", "layer4", "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()  # nothing trained before the bad value was found
    stale = tmp_path / "e" / ".m.onnx.part"
    stale.parent.mkdir()
    stale.write_bytes(b"\0" * 1000)  # what a killed export leaves
    export_onnx(load_model(str(assets.model)), tmp_path / "e" / "m.onnx", latency=False, exporter="torchscript")
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == ["m.export.json", "m.onnx"]


def test_a_failed_finetune_leaves_the_model_as_it_was(assets, tmp_path):
    from inspectnet import load_data, load_model
    from inspectnet.training.finetune import finetune
    from inspectnet.training.loop import TrainConfig

    zm = load_model(str(assets.model))
    ds = load_data("digits:train", zm.transform())
    flags = [m.training for m in zm.model.modules()]
    for keep in (False, True):
        with pytest.raises(InspectnetError, match="diverged"):
            finetune(zm, ds, tmp_path / f"ft{keep}", ["kwta:k=0.5,layer=layer4"],
                     TrainConfig(epochs=1, limit=32, batch_size=16, lr=1e30), keep_attached=keep)
        assert [m.training for m in zm.model.modules()] == flags
        assert sum(len(m._forward_hooks) for m in zm.model.modules()) == 0


@pytest.mark.parametrize("kind", ["CMYK JPEG", "animated GIF", "palette PNG with transparency"])
def test_unusual_but_valid_images_are_read_as_the_picture(tmp_path, kind):
    from inspectnet.core.images import open_image

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (200, 40, 40)
    path = tmp_path / "x"
    if kind == "CMYK JPEG":
        Image.fromarray(rgb).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
        path = path.with_suffix(".jpg")
    elif kind == "animated GIF":
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        frames[0].save(path.with_suffix(".gif"), save_all=True, append_images=frames[1:], duration=50, loop=0)
        path = path.with_suffix(".gif")
    else:
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(path.with_suffix(".png"), transparency=0)
        path = path.with_suffix(".png")
    got = np.asarray(open_image(path).convert("RGB")).astype(int)
    assert np.abs(got - rgb).max() <= 12  # the first frame, in the right colours
