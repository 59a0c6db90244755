"""SAN model: metrics by hand, kernel-size selection, CLI outputs."""

import json

import pytest
import torch

from inspectnet.analysis.san.model import SAN, san_metrics, san_select
from inspectnet.cli import main
from inspectnet.core.errors import InspectnetError


def test_metrics_by_hand_with_a_delta_kernel():
    model = SAN(1, 3, "identity")
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0, 1, 1] = 1.0  # delta: s = x, α = ReLU(x), x̂ = α
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 2, 3] = 1.0, 0.5
    x[1, 0, 1, 1] = 2.0
    m = san_metrics(model, x)
    assert m["l_tilde"] == 0.0
    # CR⁻¹ = (W + (dim+1)·A) / n with W = 9, dim = 2, n = 16: A = 2 and 1
    assert m["cr_inv"] == pytest.approx(((9 + 3 * 2) / 16 + (9 + 3 * 1) / 16) / 2)
    assert m["phi_bar"] == pytest.approx(0.5 * m["cr_inv"])


def test_metrics_by_hand_with_a_lossy_kernel_weigh_reconstruction_and_compression_equally():
    """A delta kernel of weight ½: s = x/2, α = ReLU(x/2), x̂ = α/2 — positive pixels come back at a quarter,
    a negative one not at all, so L̃ > 0 and φ = (CR⁻¹ + L̃) / 2 has both terms."""
    model = SAN(1, 3, "identity")
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, 0, 1, 1] = 0.5
    x = torch.zeros(2, 1, 4, 4)
    x[0, 0, 0, 0], x[0, 0, 2, 3], x[0, 0, 3, 3] = 1.0, 0.5, -1.0
    x[1, 0, 1, 1] = 2.0
    m = san_metrics(model, x)
    # sample 0: |x̂ − x|₁ = ¾·1.5 + 1 = 2.125 of ‖x‖₁ = 2.5; sample 1: ¾·2 of 2
    assert m["l_tilde"] == pytest.approx((2.125 / 2.5 + 0.75) / 2)
    assert m["activations_per_sample"] == pytest.approx(1.5)          # the negative pixel does not fire
    cr = [(9 + 3 * 2) / 16, (9 + 3 * 1) / 16]
    assert m["cr_inv"] == pytest.approx(sum(cr) / 2)
    assert m["phi_bar"] == pytest.approx((0.5 * (cr[0] + 0.85) + 0.5 * (cr[1] + 0.75)) / 2)


def test_sparse_activation_lowers_cr_inv_and_selection_takes_lowest_phi():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(24, 1, 10, 10, generator=g))
    r = san_select(x[:18], x[18:], ["identity", "peaks"], [3, 5], kernels=2, epochs=2)
    rows = {(row["activation"], row["size"]): row for row in r.rows}
    assert rows["peaks", 3]["cr_inv"] < rows["identity", 3]["cr_inv"]
    for act in ("identity", "peaks"):
        best = min((row for row in r.rows if row["activation"] == act), key=lambda row: row["phi_bar"])
        assert r.selected[act] == best["size"]
    assert "| peaks |" in r.table()
    with pytest.raises(InspectnetError, match="unknown"):
        san_select(x[:2], x[2:4], ["relu"], [3])
    with pytest.raises(InspectnetError, match="odd"):
        SAN(2, 4, "identity")


def test_cli_writes_table_json_and_kernel_picture(tmp_path, capsys):
    rc = main(["san", "digits", "--limit", "40", "--epochs", "1", "--kernels", "2", "--kernel-sizes", "3",
               "--activation", "identity,max-pool-indices", "--out", str(tmp_path), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["selected"] == {"identity": 3, "max-pool-indices": 3}
    assert (tmp_path / "kernels.png").stat().st_size > 1000 and "φ̄" in (tmp_path / "san.md").read_text()
