"""Every model family: each capability passes its invariant or refuses in one line naming the family's property.

The cells come from :func:`inspectnet.pipelines.families.family_cells`, whose checks assert the
invariants (record equal across batch sizes, Σ evidence + offset = logit, the export gate's ONNX
parity on logits and maps); an exception other than InspectnetError fails the test as a bug. Heavy
rows and most cells are slow; the default run keeps the cheap cells of one row per head form and the
costly ones of one or two rows (``pytest -m slow`` runs the rest).
"""

import pytest
import torch

from inspectnet.core.errors import InspectnetError
from inspectnet.models.families import FAMILIES, family
from inspectnet.pipelines.families import OK, family_cells, matrix_markdown

# families whose evidence must be exact, and the property each refusing family's reason must name
EXACT = {"ResNet", "MobileNetV2", "RegNet", "DenseNet", "Inception-v3", "ConvNeXt", "EVA-02", "BEiT", "Swin",
         "MobileViT-v2", "torchvision MobileNetV2", "ViT", "DeiT-distilled", "torchvision ViT"}
REFUSED = {"MobileNetV3": "activation after global pooling", "VGG": "single position", "LeViT": "second head",
           "EfficientViT": "after global pooling"}
# the rows run by default, one per head form: pool + linear (timm; torchvision without the split), activation
# after pooling, class token, mean-pooled tokens + fc_norm, channels-last; their costly cells on fewer rows
CHEAP_ROWS = {"ResNet", "torchvision MobileNetV2", "MobileNetV3", "ViT", "EVA-02", "Swin"}
EXPLAIN_ROWS = {"MobileNetV3"}
EXPORT_ROWS = {"ResNet", "MobileNetV3"}


def _rows(default: set[str] | None = None):
    """The rows as parameters, slow where the row is slow (or, with ``default``, where it is not listed)."""
    heavy = [pytest.mark.slow, pytest.mark.heavy]
    return [pytest.param(r.name, id=r.name, marks=heavy if r.slow or (default is not None and r.name not in default) else [])
            for r in FAMILIES]


def _assert_cells(name: str, cells: dict[str, str]) -> None:
    for capability, cell in cells.items():
        assert cell == OK or ("\n" not in cell and "Traceback" not in cell and "\x1b" not in cell and cell), \
            (capability, cell)
        if capability in ("evidence", "onnx_evidence"):
            if name in EXACT:
                assert cell == OK, (name, capability, cell)
            else:
                assert REFUSED[name] in cell, (name, capability, cell)
        elif capability != "onnx_evidence":
            assert cell == OK, (name, capability, cell)


def test_every_family_has_an_expected_evidence_outcome():
    assert {r.name for r in FAMILIES} == EXACT | set(REFUSED)


@pytest.mark.parametrize("name", _rows(CHEAP_ROWS))
def test_family_record_evidence_and_dissection(name, tmp_path):
    cells = family_cells(family(name), tmp_path, capabilities=("record", "evidence", "dissect"))
    _assert_cells(name, cells)


@pytest.mark.parametrize("name", _rows(EXPLAIN_ROWS))
def test_family_explanations_stage_runs(name, tmp_path):
    _assert_cells(name, family_cells(family(name), tmp_path, capabilities=("explain",)))


@pytest.mark.parametrize("name", _rows(EXPORT_ROWS))
def test_family_exports_pass_the_gate_or_refuse_in_one_line(name, tmp_path):
    """int8 exports the fp32 file through the gate first, so a ✓ there is also the fp32 parity check."""
    cells = family_cells(family(name), tmp_path, capabilities=("onnx_evidence", "int8"))
    _assert_cells(name, cells)


class _DataDependent(torch.nn.Module):
    """A branch on a tensor's value: torch.export (dynamo) cannot trace it, the torchscript tracer records the branch
    taken (always the same one here)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return y if float(y.abs().sum()) >= 0 else -y


def test_export_falls_back_to_torchscript_where_dynamo_fails_and_records_it(tmp_path):
    from inspectnet.export.onnx import export_onnx
    from inspectnet.models.zoo import load_model

    zm = load_model("resnet18", num_classes=3, input_size=32, seed=0)
    zm.model, zm.head_name = _DataDependent(zm.model), "inner.fc"
    res = export_onnx(zm, tmp_path / "m.onnx", latency=False)
    assert res.exporter == "torchscript" and res.exporter_fallback.startswith("_DataDependent cannot be exported with "
                                                                              "the dynamo exporter")
    assert res.parity["top1_agreement"] == 1.0
    with pytest.raises(InspectnetError, match="dynamo exporter"):  # asked for by name: no fallback
        export_onnx(zm, tmp_path / "d.onnx", latency=False, exporter="dynamo")
    assert not (tmp_path / "d.onnx").exists()


def test_error_messages_carry_no_terminal_colour_codes():
    assert str(InspectnetError("\x1b[96mtorch.export\x1b[0m failed: \x1b[1;31mstep 2\x1b[0m")) == \
        "torch.export failed: step 2"


@pytest.mark.slow
@pytest.mark.heavy
def test_dynamo_failure_falls_back_to_torchscript_and_says_so(tmp_path):
    """BEiT's graph cannot be decomposed by the dynamo exporter: the file is written by torchscript, recorded."""
    import json

    from inspectnet.export.onnx import export_onnx
    from inspectnet.models.families import family_model

    res = export_onnx(family_model(family("BEiT")), tmp_path / "m.onnx", latency=False)
    assert res.exporter == "torchscript" and "dynamo" in res.exporter_fallback and "\x1b" not in res.exporter_fallback
    assert json.loads((tmp_path / "m.export.json").read_text())["exporter"] == "torchscript"


def test_matrix_markdown_shows_ticks_and_short_reasons():
    cells = {"ResNet": {"evidence": OK},
             "ViT": {"evidence": "timm:vit_tiny_patch16_224 reads the class token, whose dependence on each patch goes "
                                 "through attention: its head is not average pooling + linear, so exact class-evidence "
                                 "maps are refused; the other metrics still run"}}
    table = matrix_markdown(cells).splitlines()
    assert table[0] == "| family | model (input) | head | evidence |"
    assert table[2].endswith("| ✓ |")
    assert table[3].endswith("| reads the class token, whose dependence on each patch goes through attention |")
