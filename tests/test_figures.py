"""Library plots leave matplotlib's global state alone: no backend switch, no rcParams change, no pyplot."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: the user has chosen the non-Agg "svg" backend and a style setting before
# calling every plotting function of the library; each must still write a PNG and change nothing global.
SCRIPT = r'''
import sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")
matplotlib.rcParams["lines.linewidth"] = 3.5
before = dict(matplotlib.rcParams)
out = Path(sys.argv[1])

import numpy as np
import torch
from inspectnet.analysis.attributions import _grid_png
from inspectnet.analysis.linprobe import LinearProbeResult, plot
from inspectnet.analysis.rules.tree import fit_rules
from inspectnet.analysis.san.model import san_select, save_kernel_picture
from inspectnet.pipelines.compare import COLUMNS, Comparison, aggregate, plot_comparison

def unchanged(what):
    assert matplotlib.get_backend() == "svg", (what, matplotlib.get_backend())
    changed = {k for k, v in matplotlib.rcParams.items() if before.get(k) != v}
    assert not changed, (what, changed)
    assert (out / what).read_bytes()[:4] == b"\x89PNG", what

plot(LinearProbeResult(rows=[{"layer": "a", "dim": 2, "train_accuracy": 1.0, "test_accuracy": 0.5}],
                       model_accuracy=0.5, n_train=4, n_eval=4, C=1.0, identity={}), out / "linprobe.png")
unchanged("linprobe.png")
runs = [{"label": lab, "family": lab.split(":")[0], "sweep": ["k", lab[-3:]] if ":" in lab else None,
         **{k: v for k, _ in COLUMNS}} for lab in ("vanilla", "kwta:k=0.2") for v in (0.5, 0.7)]
plot_comparison(Comparison(layer="l", seeds=[0, 1], config={}, model="m", data={}, runs=runs,
                           table=aggregate(runs, ["vanilla", "kwta:k=0.2"]), rules_options={}), out / "compare.png")
unchanged("compare.png")
x = torch.relu(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
save_kernel_picture(san_select(x[:6], x[6:], ["identity"], [3], kernels=2, epochs=1), out / "san.png")
unchanged("san.png")
_grid_png([[np.zeros((4, 4, 3), np.uint8)] * 2], [["a", "b"]], out / "grid.png")
unchanged("grid.png")
assert "matplotlib.pyplot" not in sys.modules  # our own plots never import pyplot
rng = np.random.default_rng(0)
acts = rng.random((40, 6))
model, _ = fit_rules(acts, (acts[:, 0] > 0.5).astype(int), max_depth=2)
model.plot(out / "tree.png")  # scikit-learn's plot_tree reads pyplot's rcParams, it must not switch either
unchanged("tree.png")
print("ok")
'''


def test_plots_keep_the_users_backend_and_rcparams(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
