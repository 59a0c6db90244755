"""DDP under torchrun (gloo, 2 CPU processes): same global batch -> same weights as one process."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from inspectnet import load_model, save_model

ARGS = ["--plugin", "ebp:K=4,layer=layer4,lam=0.01", "--freeze-bn", "--epochs", "2", "--limit", "64",
        "--batch-size", "32", "--device", "cpu", "--lr", "0.05"]


def _finetune(cmd_prefix, model, data_out):
    cmd = [*cmd_prefix, "-m", "inspectnet", "finetune", str(model), "digits:train", *ARGS, "--out", str(data_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow  # three interpreter start-ups (~1-2 min on a loaded 2-core machine)
def test_two_gloo_processes_match_one_process(tmp_path):
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=10, in_chans=1, input_size=16)
    save_model(zm, tmp_path / "init")
    _finetune([sys.executable], tmp_path / "init", tmp_path / "one")
    _finetune([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
              tmp_path / "init", tmp_path / "two")
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-6), (k, (one[k] - two[k]).abs().max())
    moved = max((one[k] - zm.model.state_dict()[k]).abs().max() for k in one if one[k].is_floating_point())
    assert moved > 1e-3  # training really changed the weights
    # EBP's accumulators are sums over all ranks: identical to the one-process sums
    d1 = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)["hooks"]["ebp"]["D"]
    d2 = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)["hooks"]["ebp"]["D"]
    # (after step 1 the weights differ by float rounding only, so the sums agree to ~1e-7)
    assert (d1 - d2).abs().max() <= 1e-5 * d1.abs().max(), (d1 - d2).abs().max()
