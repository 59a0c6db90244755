"""One number format, Markdown tables whose cells cannot break the table, CSV through the csv module."""

import csv
import io
import re

import numpy as np
import pytest

from inspectnet.analysis.linprobe import LinearProbeResult
from inspectnet.analysis.linprobe import format_table as linprobe_table
from inspectnet.analysis.sparsity import format_table as sparsity_table
from inspectnet.analysis.sparsity import sparsity_metrics
from inspectnet.core.errors import InspectnetError
from inspectnet.core.tables import csv_text, escape_markdown, format_value, markdown_table


def test_format_value_hand_cases():
    assert format_value(None) == "n/a"
    assert format_value(True) == "True" and format_value(np.int64(7)) == "7"
    assert format_value(0.96066) == "0.9607" and format_value(np.float32(0.5)) == "0.5000"
    assert format_value(12.25) == "12.2500" and format_value(-0.5) == "-0.5000"
    assert format_value(0.0) == "0.0000" and format_value(1.5e-7) == "1.5e-07"  # not hidden as 0.0000
    assert format_value(4e-5) == "4e-05" and format_value(6e-5) == "0.0001"  # .4f wherever it shows a digit
    assert format_value(0.123456, 2) == "0.12" and format_value("0.5") == "0.5"


def _cells(line):
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_markdown_table_escapes_cells_and_checks_widths():
    text = markdown_table(["name", "value"], [["a|b*c_<d>", 0.5], ["x\ny", None]])
    lines = text.splitlines()
    assert lines[:2] == ["| name | value |", "|---|---|"] and not text.endswith("\n")
    assert _cells(lines[2]) == ["a\\|b\\*c\\_&lt;d&gt;", "0.5000"]
    assert _cells(lines[3]) == ["x y", "n/a"]
    assert escape_markdown("a|b") == "a\\|b"
    with pytest.raises(InspectnetError, match="table row 1 has 1 cells; expected 2"):
        markdown_table(["a", "b"], [[1, 2], [3]])


def test_csv_text_round_trips_exact_values():
    rows = [['say "hi", bye', 0.1 + 0.2, None], ["two\nlines", 3, "x"]]
    text = csv_text(["a", "b", "c"], rows)
    back = list(csv.reader(io.StringIO(text)))
    assert back[0] == ["a", "b", "c"]
    assert back[1] == ['say "hi", bye', repr(0.1 + 0.2), ""] and back[2] == ["two\nlines", "3", "x"]


def test_analysis_tables_share_the_format():
    rng = np.random.default_rng(0)
    rows = [sparsity_metrics(rng.random((8, 4)), layer="blocks.0|conv_dw")]
    lines = sparsity_table(rows).splitlines()
    assert len(_cells(lines[0])) == len(_cells(lines[2])) == 7
    assert _cells(lines[2])[0] == "blocks.0\\|conv\\_dw" and _cells(lines[2])[1] == format_value(rows[0].hoyer)
    res = LinearProbeResult(rows=[{"layer": "l1", "dim": 4, "train_accuracy": 1.0, "test_accuracy": 0.75}],
                            model_accuracy=0.5, n_train=8, n_eval=4, C=1.0, identity={})
    assert linprobe_table(res).splitlines()[2:] == ["| l1 | 4 | 1.0000 | 0.7500 |", "| model (head) |  |  | 0.5000 |"]
