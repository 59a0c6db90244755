"""The project describes the software, not how it was built: no words about how work was organised and no
paths outside the repository in any tracked text file (README, docs, model cards, benchmarks, tests, code)."""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Each pattern names one way prose slips into talking about the work instead of the software. They are
# narrow on purpose: "session" (an ONNX Runtime InferenceSession), "merge" (`inspectnet merge`, sketch
# merging), "branch" (a graph's evidence branch, a residual branch) and "helper" (onnx.helper) are
# legitimate words of this code base, so only their process meanings are matched.
PATTERNS = {
    "a work period called 'stop'": r"\b(this|that|previous|earlier|last|next|later|since|until|every|each|one|an|"
                                   r"at|before|after)\s+stop('s)?\b(?!\s+(at|when|once|on|the|early|with|if))"
                                   r"|\bstop\s+\d+\b|\bstop\s+\d+'s\b",
    "a work period called 'session'": r"\b(this|that|previous|earlier|later|next|each|every|helper|lead'?s?|work)\s+"
                                      r"session('s|s)?\b(?!\s*(=|\.|options|\())|\bsession's machine\b"
                                      r"|\bsession\s+refactor",
    "a person called 'the lead'": r"\bthe lead\b(?!\s+(time|of|to|in))|\blead's\b",
    "a person called 'helper'": r"\b(the|a|by|each)\s+helper\s+(session|engineer|agent)s?\b|\bhelper's\b",
    "a work branch": r"\bbranch(es)?\s+[`'\"]?i\d+|\b(this|my|our)\s+branch's\b|\b(work|git|feature)\s+branch(es)?\b",
    "merging work": r"\b(before|after)\s+(the|all|all of)\b[^.\n]{0,30}\bmerges?\b|\bmerged?\s+(in)?to\s+main\b",
    "'final code'": r"\bfinal code\b",
    "an issue number": r"\bissues?\s*#?\d+|\bthe issue\b|\bthe issue's\b|\bissue:",
    "an item number": r"\b[Ii]tems?\s+#?\d+\b",
    "a test named by work item": r"\btest_repro_\d+|\brepros?, by number",
    "a design document outside the project": r"\bDESIGN(\.md)?\s*§|\bDESIGN\.md\b",
    "a path outside the repository": r"(?<![\w.~])(/work/|/home/|/root/|/mnt/|/tmp/[\w.-]+)|\.\./shared\b",
}
COMPILED = {what: re.compile(p, re.IGNORECASE if what != "an item number" else 0) for what, p in PATTERNS.items()}
# files that may hold a hit; empty: the whole project is clean
EXEMPT: set[str] = set()
SELF = "tests/test_wording.py"


def tracked_text_files() -> list[Path]:
    """Every file git tracks here that decodes as UTF-8 text (binary files: images, weights, skipped)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    out = []
    for name in filter(None, (n.decode() for n in names)):
        path = ROOT / name
        if name == SELF or name in EXEMPT or not path.is_file():
            continue
        head = path.read_bytes()[:8192]
        if b"\0" in head:
            continue
        out.append(path)
    return out


def hits(text: str) -> list[tuple[int, str, str]]:
    """``(line number, what, line)`` for every line of ``text`` that matches a pattern."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in COMPILED.items():
            if pattern.search(line):
                found.append((number, what, line.strip()))
    return found


@pytest.mark.parametrize("line", [
    "Measured on this stop's 2-core machine.", "Since stop 22 the export quantizes", "Re-audited at stop 21",
    "the session's machine is an AMD EPYC", "run twice by the lead on an idle machine", "on branch i15-cgl",
    "a checkout of the commit before the merge", "measured on the final code", "(issue 17)", "Issue 17 item 1:",
    "The issue's acceptance figure", "def test_repro_1_audit():", "see DESIGN.md §7", "(DESIGN §5.5)",
    "--work /tmp/i12/run", "read /work/shared/papers", "../shared/data", "after all of this stop's merges",
    "every number was measured on this branch's final code",
])
def test_each_process_phrase_is_caught(line):
    assert hits(line), line


@pytest.mark.parametrize("line", [
    "session = make_session(path)", "sessions[name] = make_session(fp32)", "the others stop at their next batch",
    "torchrun stops the surviving processes", "@pytest.fixture(scope=\"session\")", "inspectnet merge runs/rec",
    "the sketches of several ranks merge exactly", "The evidence branch of an int8 graph", "from onnx import helper",
    "loss.item() * b", "item i is a crop", "stop = names.index(name)", "~/.cache/inspectnet", "/tmp/",
    "(s.start, s.stop)", "calls stop once the spread is small"
])
def test_legitimate_uses_are_not_caught(line):
    assert not hits(line), hits(line)


def test_tracked_text_speaks_of_the_software_alone():
    report = [f"{path.relative_to(ROOT)}:{number}: {what}: {line[:120]}"
              for path in tracked_text_files()
              for number, what, line in hits(path.read_text(encoding="utf-8", errors="replace"))]
    assert not report, f"{len(report)} lines speak of how the work was organised:\n" + "\n".join(report)
