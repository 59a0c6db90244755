"""The documentation's code blocks as written (README.md and the guide pages): every ``inspectnet`` command line
parses, and the Python blocks run in order as one program (digits for MNIST, smaller sizes; each swap must still
apply)."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inspectnet.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
# the pages whose Python blocks build on each other, in the order they run (the guide's reading order)
PAGES = [ROOT / "README.md", *(ROOT / "docs" / "guide" / f"{name}.md" for name in (
    "models-and-data", "probes-and-records", "torchrun", "features-and-heads", "finetuning", "writing-a-plugin",
    "rules-and-sparsity",
    "dissection", "export-and-run", "explanations", "audit-and-cards"))]
# (documented text, what the test runs instead): only data and sizes change, never a call
SMALL = [('"mnist5k:train"', '"digits:train"'), ('"mnist5k:test"', '"digits:test"'),
         ("TrainConfig(epochs=3)", "TrainConfig(epochs=1, limit=320)"),
         ("TrainConfig(epochs=2)", "TrainConfig(epochs=1, limit=64)"), ("input_size=28", "input_size=16"),
         ("torch.randn(4, 1, 28, 28)", "torch.randn(4, 1, 16, 16)"),
         ("limit=1000, eval_limit=500", "limit=64, eval_limit=32"), ("shapes:test?n=2000", "shapes:test?n=40"),
         ("limit=256", "limit=32"),
         ("QualityConfig(images=100)", "QualityConfig(images=8, sanity_images=4)")]


def blocks(language: str) -> list[str]:
    return [block for page in PAGES
            for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)]


def commands() -> list[list[str]]:
    """Every ``inspectnet`` command of the bash blocks (continuation lines joined, comments and
    ``[optional]`` parts dropped, ``&&`` chains split)."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s#.*$", "", re.sub(r"\[[^\]]*\]", "", line)).strip()
            for part in line.split("&&"):
                words = shlex.split(part)
                while words and "=" in words[0]:  # VAR=value prefixes
                    words.pop(0)
                if words and words[0].endswith("inspectnet"):
                    found.append(words[1:])
    return found


def test_every_documented_command_parses():
    cmds = commands()
    assert len(cmds) >= 20
    for argv in cmds:
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit:
            pytest.fail(f"documented command does not parse: inspectnet {shlex.join(argv)}")


@pytest.mark.slow
def test_documented_python_blocks_run_in_order(tmp_path):
    code = "\n".join(blocks("python"))
    for old, new in SMALL:
        assert old in code, f"the documentation no longer says {old!r}; update SMALL"
        code = code.replace(old, new)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "audit_mnist" / "card.html").exists() and (tmp_path / "out" / "model.onnx").exists()
