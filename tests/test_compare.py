"""Comparison: method-list parsing, aggregation by hand, and a tiny end-to-end run (vanilla vs k-WTA)."""

import json

import numpy as np
import pytest

from inspectnet.core.errors import InspectnetError
from inspectnet.pipelines.compare import (
    COLUMNS,
    Comparison,
    aggregate,
    compare,
    csv_table,
    expand_methods,
    markdown_table,
    parse_sweep,
    plot_comparison,
    split_plugin_list,
)
from inspectnet.training.loop import TrainConfig


def test_split_plugin_list_keeps_hyperparameters_with_their_plugin():
    assert split_plugin_list("vanilla,ebp:K=25,lam=1e-3,kwta") == ["vanilla", "ebp:K=25,lam=1e-3", "kwta"]
    assert split_plugin_list("kwta,k=0.5") == ["kwta:k=0.5"]
    with pytest.raises(InspectnetError, match="no plugin before"):
        split_plugin_list("K=3,ebp")


def test_parse_sweep():
    assert parse_sweep("ebp.K=5/25/100") == ("ebp", ("K", ["5", "25", "100"]))
    with pytest.raises(InspectnetError, match="PLUGIN.PARAM"):
        parse_sweep("ebp:K=5")


def test_expand_methods_fills_layer_and_sweeps():
    ms = expand_methods(["vanilla", "ebp:lam=1e-2", "kwta"], layer="layer4", sweeps={"ebp": ("K", ["5", "25"])})
    assert [m.label for m in ms] == ["vanilla", "ebp:lam=1e-2,K=5", "ebp:lam=1e-2,K=25", "kwta"]
    assert ms[0].spec is None
    assert ms[1].spec == "ebp:lam=1e-2,layer=layer4,K=5" and ms[1].sweep == ("K", "5")
    assert ms[3].spec == "kwta:layer=layer4"
    with pytest.raises(InspectnetError, match="unknown plugin"):
        expand_methods(["vanila"])
    with pytest.raises(InspectnetError, match="no hyperparameter 'Q'"):
        expand_methods(["ebp"], sweeps={"ebp": ("Q", ["1"])})
    with pytest.raises(InspectnetError, match="not in --plugins"):
        expand_methods(["vanilla"], sweeps={"ebp": ("K", ["1"])})
    with pytest.raises(InspectnetError, match="twice"):
        expand_methods(["kwta", "kwta"])


def test_aggregate_mean_and_sample_std():
    keys = ["extracted_accuracy", "fidelity", "atoms", "rules", "avg_depth", "hoyer", "lifetime_kurtosis",
            "population_kurtosis", "treves_rolls_population", "treves_rolls_lifetime", "activity_sparseness",
            "model_accuracy"]
    runs = [{"label": "a", "family": "a", "sweep": None, **{k: v for k in keys}} for v in (1.0, 2.0, 6.0)]
    runs[0]["hoyer"] = None  # an undefined metric is left out of its mean, not counted as 0
    (row,) = aggregate(runs, ["a"])
    assert row["atoms"] == 3.0 and row["atoms_std"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert row["hoyer"] == 4.0 and row["n_seeds"] == 3


def test_compare_end_to_end_and_resume(tmp_path, tiny_digits_model):
    from inspectnet import load_data, load_model

    ds = load_data("digits:train", tiny_digits_model.transform())
    test = load_data("digits:test", tiny_digits_model.transform())

    def make():
        import torch

        torch.manual_seed(0)
        return load_model("resnet18", num_classes=10, in_chans=1, input_size=16)

    methods = expand_methods(["vanilla", "kwta:k=0.1"], layer="layer4")
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.001, limit=64)  # the model stays varied
    c = compare(make, ds, test, methods, "layer4", tmp_path / "cmp", config=cfg, seeds=[0],
                probe_limit=64, eval_limit=48, rules_kw={"max_depth": 3})
    assert [e["label"] for e in c.table] == ["vanilla", "kwta:k=0.1"]
    assert len(c.runs) == 2 and {r["seed"] for r in c.runs} == {0}
    van, kw = c.table
    # k-WTA keeps 10 % of layer4's outputs while it is attached during probing: far sparser codes
    assert kw["hoyer"] > van["hoyer"] + 0.1
    assert all(r["avg_depth"] <= 3 for r in c.runs)
    for name in ("compare.md", "compare.csv", "compare.json", "compare.png"):
        assert (tmp_path / "cmp" / name).exists()
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| Method | Extracted Acc. | Fidelity | Atoms |" in md
    doc = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert doc["table"][1]["label"] == "kwta:k=0.1"
    # a second call reuses the finished runs (no re-training): identical rows
    marker = tmp_path / "cmp" / "runs" / "vanilla" / "seed0" / "run.json"
    before = marker.stat().st_mtime_ns
    again = compare(make, ds, test, methods, "layer4", tmp_path / "cmp", config=cfg, seeds=[0],
                    probe_limit=64, eval_limit=48, rules_kw={"max_depth": 3})
    assert again.runs == c.runs and marker.stat().st_mtime_ns == before


def test_markdown_and_csv_tables(tmp_path):
    keys = [k for k, _ in COLUMNS]
    runs = [{"label": lab, "family": lab.split(":")[0], "sweep": ["k", lab[-3:]] if ":" in lab else None,
             **{k: v for k in keys}} for lab in ("vanilla", "kwta:k=0.2", "kwta:k=0.5") for v in (0.5, 0.7)]
    c = Comparison(layer="layer4", seeds=[0, 1], config={}, model="m", data={}, runs=runs,
                   table=aggregate(runs, ["vanilla", "kwta:k=0.2", "kwta:k=0.5"]), rules_options={})
    md = markdown_table(c).splitlines()
    assert md[0].startswith("| Method | Extracted Acc. | Fidelity | Atoms | Rules | Avg. Depth | Hoyer Spars.")
    assert md[0].endswith("| Activ. Spars. | CNN Acc. |")
    # accuracies in percent as in the paper, sample std over the two seeds
    assert "| vanilla | 60.00 ± 14.14 | 60.00 ± 14.14 | 0.6 ± 0.1 |" in md[2]
    assert csv_table(c).splitlines()[0].startswith("method,n_seeds,extracted_accuracy,extracted_accuracy_std")
    assert plot_comparison(c, tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
