"""Linear probes: an informative layer probes near-perfectly, a noise layer at chance; the command."""

import json

import numpy as np
import pytest

from inspectnet.analysis.linprobe import linear_probes
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError
from tests.test_rules import write_record


def records(tmp_path, n_train=300, n_test=150):
    out = []
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 3, n)
        centres = np.array([[4.0, 0, 0, 0], [0, 4, 0, 0], [0, 0, 4, 0]])
        informative = centres[y] + rng.normal(size=(n, 4))
        noise = rng.normal(size=(n, 8))
        logits = np.eye(3)[y] * 5
        out.append(write_record(tmp_path / name, {"early": noise, "late": informative}, logits, y,
                                ["a", "b", "c"]))
    return out


def test_informative_layer_beats_noise(tmp_path):
    train, test = records(tmp_path)
    res = linear_probes(train, test)
    rows = {r["layer"]: r for r in res.rows}
    assert [r["layer"] for r in res.rows] == ["early", "late", "pre_logits"]
    assert rows["late"]["test_accuracy"] > 0.95
    assert rows["early"]["test_accuracy"] < 0.5  # three balanced classes: chance ≈ 1/3
    assert rows["late"]["dim"] == 4 and res.model_accuracy == 1.0
    assert res.n_train == 300 and res.n_eval == 150


def test_unlabelled_eval_is_refused(tmp_path):
    train, _ = records(tmp_path)
    rng = np.random.default_rng(5)
    bare = write_record(tmp_path / "bare", {"early": rng.normal(size=(10, 8)), "late": rng.normal(size=(10, 4))},
                        rng.normal(size=(10, 3)), np.full(10, -1), ["a", "b", "c"])
    with pytest.raises(InspectnetError, match="no labels"):
        linear_probes(train, bare)
    with pytest.raises(InspectnetError, match="positive"):
        linear_probes(train, train, C=0)


def test_linprobe_command(tmp_path, capsys):
    records(tmp_path)
    out = tmp_path / "lp"
    assert main(["linprobe", str(tmp_path / "train"), "--eval", str(tmp_path / "test"), "--layer", "late",
                 "--out", str(out)]) == 0
    assert "| late | 4 |" in capsys.readouterr().out
    doc = json.loads((out / "linprobe.json").read_text())
    assert [r["layer"] for r in doc["rows"]] == ["late", "pre_logits"]
    assert (out / "linprobe.png").read_bytes()[:4] == b"\x89PNG"


def test_probes_fit_a_bounded_spread_sample_and_score_every_eval_row(tmp_path):
    train, test = records(tmp_path)
    res = linear_probes(train, test, fit_samples=60)
    assert res.n_train == 60 and res.n_eval == 150
    assert {r["layer"]: r for r in res.rows}["late"]["test_accuracy"] > 0.9
