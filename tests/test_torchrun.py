"""The commands under real ``torchrun`` (2 gloo processes on CPU): an audit equal to the one-process audit, a
rank failing mid-pass on an image that turned undecodable (the other stops naming it), and the re-run that resumes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from inspectnet import ProbeRecord, load_data, load_model, run_probe, save_model

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _inspectnet(args, *, torchrun=False, launcher=("-m", "inspectnet")):
    cmd = [*(TORCHRUN if torchrun else [sys.executable]), *launcher, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


# The CLI, with ``path`` turning undecodable in rank 1 after the folder was indexed (as a file on a shared
# disk being rewritten would): a folder is indexed by decoding every file, so a file corrupt from the
# start stops every rank before the pass. Only this one read is injected; torchrun, gloo and the store are real.
FAILS_IN_RANK_1 = """
import os, sys, time
from pathlib import Path
import inspectnet.data.datasets as datasets
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
target, late, real, target_reads = Path(sys.argv.pop(1)), [float(sys.argv.pop(1))], datasets.open_image, [0]
def open_image(path):
    if os.environ["RANK"] == "0" and late:  # rank 0 still indexing the folder when rank 1 fails
        time.sleep(late.pop())
    if Path(path) == target:
        target_reads[0] += 1
        if os.environ["RANK"] == "1" and target_reads[0] > 1:  # the first read is the folder's indexing
            raise InspectnetError(f"image {path} cannot be decoded: broken data stream when reading image file")
    return real(path)
datasets.open_image = open_image
sys.exit(main())
"""


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    digits = load_data("digits:test")
    for i in range(60):
        cls = root / "digits" / str(digits.labels[i])
        cls.mkdir(parents=True, exist_ok=True)
        digits.image(i).save(cls / f"{i:03d}.png")
    torch.manual_seed(0)
    save_model(load_model("resnet18", num_classes=10, in_chans=1, input_size=16), root / "model")
    return root


@pytest.mark.slow  # two torchrun launches (~1 min on a loaded 2-core machine)
# rank_0_late makes rank 0 sleep in its first image read; the probe pass now begins with a collective step
# after every rank has read its folder, so rank 1 can no longer fail while rank 0 is still indexing
@pytest.mark.parametrize("rank_0_late", [0], ids=["together"])
def test_rank_dying_mid_pass_stops_the_other_naming_it_and_the_rerun_resumes(folder_and_model, tmp_path, rank_0_late):
    # rank 0 late: torchrun stops it before its pass began (CI's loaded machine once did this by chance); it
    # must still name rank 1 rather than die silently
    root = folder_and_model
    last = sorted((root / "digits").rglob("*.png"))[-1]       # the last image: in rank 1's share
    args = ["probe", root / "model", root / "digits", "--layers", "layer4", "--out", tmp_path / "rec",
            "--batch-size", "8", "--workers", "0"]
    wrapper = tmp_path / "fails_in_rank_1.py"
    wrapper.write_text(FAILS_IN_RANK_1)
    failed = _inspectnet([last, rank_0_late, *args], torchrun=True, launcher=(wrapper,))
    assert failed.returncode != 0
    assert f"inspectnet: error: image {last} cannot be decoded" in failed.stderr          # rank 1's own line
    assert "inspectnet: error: rank 1 of 2 failed during the probe pass (InspectnetError: image" in failed.stderr
    progress = {p.name: json.loads(p.read_text())["done"] for p in (tmp_path / "rec").glob("progress-rank-*")}
    # rank 1's three batches before the corrupt image are kept for the re-run; how far rank 0 got
    # before it saw the failure depends on when each process started (whole batches either way)
    assert progress["progress-rank-1-of-2.json"] == 24
    assert progress.get("progress-rank-0-of-2.json", 0) % 8 == 0
    if rank_0_late:
        assert "progress-rank-0-of-2.json" not in progress
    resumed = _inspectnet(args, torchrun=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    torch.set_num_threads(1)  # as each torchrun process
    zm = load_model(str(root / "model"))
    one = run_probe(zm, load_data(str(root / "digits"), zm.transform()), "layer4", tmp_path / "one", batch_size=8)
    two = ProbeRecord.load(tmp_path / "rec")
    for name in ("features", "logits", "labels"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    assert np.array_equal(one.activations("layer4"), two.activations("layer4"))


@pytest.mark.slow  # a torchrun launch and a one-process audit (~1 min)
def test_torchrun_audit_equals_the_one_process_audit(folder_and_model, tmp_path):
    root = folder_and_model
    args = ["audit", root / "model", root / "digits", "--limit", "48", "--layers", "layer3,layer4",
            "--concepts", "shapes?n=16", "--concept-limit", "16", "--images", "1", "--ig-steps", "4",
            "--top-units", "2", "--batch-size", "8", "--workers", "0"]
    two = _inspectnet([*args, "--out", tmp_path / "two", "--shard-order", "strided"], torchrun=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _inspectnet([*args, "--out", tmp_path / "one"])
    assert one.returncode == 0, one.stderr[-3000:]

    def sections(folder):
        doc = json.loads((folder / "card.json").read_text())
        text = json.dumps({k: {kk: v for kk, v in s.items() if kk != "seconds"} for k, s in doc["sections"].items()})
        return json.loads(text.replace(str(folder), "DIR"))

    assert sections(tmp_path / "two") == sections(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "card.json").read_text())["sections"]["dissection"]["status"] == "ok"
