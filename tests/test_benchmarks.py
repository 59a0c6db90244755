"""The benchmarks share one harness: every script imports, parses its options, records its environment and writes
its results through :mod:`benchmarks.harness`; the harness alternates timings fairly and writes strict JSON."""

import ast
import doctest
import importlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import harness
from benchmarks.__main__ import NOT_BENCHMARKS, available

ROOT = Path(__file__).resolve().parent.parent
NAMES = sorted(available())


def test_every_benchmark_script_is_listed():
    listed = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True)
    files = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - NOT_BENCHMARKS
    assert set(NAMES) == files and len(NAMES) >= 22
    assert all(f"  {name} " in listed.stdout for name in NAMES)
    unknown = subprocess.run([sys.executable, "-m", "benchmarks", "no_such_benchmark"], cwd=ROOT, capture_output=True,
                             text=True)
    assert unknown.returncode == 2 and "no_such_benchmark" in unknown.stderr


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_imports_and_parses_help(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize("name", NAMES)
def test_benchmark_records_its_environment_and_writes_through_the_harness(name):
    source = (ROOT / "benchmarks" / f"{name}.py").read_text()
    tree = ast.parse(source)
    assert f"Run: python -m benchmarks {name}" in ast.get_docstring(tree)
    assert "harness.start()" in source and "harness.write_results(" in source
    # no second way to find the results folder, write a file or read the machine's load
    constants = {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert not constants & {"RESULTS", "OUT"}
    for own in ("sys.path.insert", "write_text(", "getloadavg", "atomic_write", "/proc/cpuinfo", '"results"',
                "python benchmarks/", "__file__"):
        assert own not in source, own


# measured on an x86 AVX2 CPU without VNNI, before the harness recorded flags; no such CPU is at hand to re-run it
MEASURED_ON_AN_UNAVAILABLE_CPU = {"int8_weight_bits"}


def _environments(doc):
    """Every environment a results file holds (a file may gather runs made at different times, each with its own)."""
    if isinstance(doc, dict):
        if "environment" in doc:
            yield doc["environment"]
        for value in doc.values():
            yield from _environments(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from _environments(value)


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "results").glob("*.json")), ids=lambda p: p.stem)
def test_every_stored_result_records_the_cpu_model_flags_and_command_it_ran_with(path):
    doc = json.loads(path.read_text())
    if path.stem.startswith("mutation"):  # the mutation job's tallies, not a measurement of this machine
        return
    if path.stem in MEASURED_ON_AN_UNAVAILABLE_CPU:
        assert doc["cpu"] and doc["saturating_int8_cpu"] is True
        return
    found = list(_environments(doc))
    assert found, f"{path.name} records no environment"
    for env in found:
        assert env["cpu"]["model"] and isinstance(env["cpu"]["flags"], list) and env["cpu"]["cores"] >= 1
        assert env["command"].startswith("python -m benchmarks ") and env["commit"]


@pytest.mark.slow  # a fresh process importing torch: 5-20 s on a loaded machine
def test_benchmark_child_process_runs_through_python_m():
    """The memory check's fresh process is started as ``python -m benchmarks NAME``, from any working folder."""
    cmd = harness.self_command("dissect_throughput", "--images", "4", "--memory-images", "4", "--layers", "layer1",
                               "--batch-size", "4", "--memory-of", "4", "1")
    out = subprocess.run(cmd, cwd=harness.ROOT, capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1])["peak_extra_mib"] >= 0


@pytest.fixture
def fake_clocks(monkeypatch):
    """Wall and CPU clocks that move only when a timed function says so (CPU at half the wall rate)."""
    now = {"wall": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: now["wall"])
    monkeypatch.setattr(time, "process_time", lambda: now["wall"] / 2)
    return now


def test_alternate_rotates_the_order_and_pairs_samples_by_round(fake_clocks):
    calls, count = [], {"a": 0, "b": 0, "c": 0}
    base = {"a": 1.0, "b": 10.0, "c": 100.0}

    def fn(name):
        def call():
            calls.append(name)
            count[name] += 1
            fake_clocks["wall"] += base[name] * count[name]  # the k-th call of a function lasts k times its base
        return call

    t = harness.alternate({n: fn(n) for n in "abc"}, rounds=3, warmup=1, cpu=True)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    for n in "abc":  # call 1 was the warm-up; rounds 0, 1, 2 are calls 2, 3, 4
        assert t[n]["samples_s"] == pytest.approx([2 * base[n], 3 * base[n], 4 * base[n]])
        assert t[n]["median_s"] == pytest.approx(3 * base[n])
        assert (t[n]["q1_s"], t[n]["q3_s"]) == pytest.approx((2.5 * base[n], 3.5 * base[n]))
        assert t[n]["iqr_s"] == pytest.approx(base[n])
        assert t[n]["cpu"]["samples_s"] == pytest.approx([base[n], 1.5 * base[n], 2 * base[n]])
    assert "cpu" not in harness.alternate({"a": fn("a")}, rounds=2, warmup=0)["a"]


def test_summary_quartiles_by_hand():
    s = harness.summary([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["median_s"], s["q1_s"], s["q3_s"], s["iqr_s"]) == (3.0, 2.0, 4.0, 2.0)
    assert harness.summary([0.25])["iqr_s"] == 0.0 and harness.summary([0.25])["median_s"] == 0.25


def test_write_results_writes_strict_json_with_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--rounds", "2", "--name", "a b"])
    run = harness.start()
    doc = {"ratio": float("nan"), "rows": [{"x": float("inf"), "y": 1.5}, (float("-inf"), 2)], "label": "ok"}
    json_path, md_path = harness.write_results("demo", doc, "# Demo\n\n| a |\n|---|\n| 1 |\n", run, out=tmp_path / "r")

    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    written = json.loads(json_path.read_text(), parse_constant=reject)
    assert written["ratio"] is None and written["rows"] == [{"x": None, "y": 1.5}, [None, 2]] and written["label"] == "ok"
    env = written["environment"]
    assert env["command"] == "python -m benchmarks demo --rounds 2 --name 'a b'"
    assert env["cpu"] == harness.cpu() and env["cpu"]["cores"] >= 1 and env["cpu"]["model"]
    assert set(env["cpu"]["flags"]) <= set(harness.CPU_FLAGS)
    assert {"load_before", "load_after", "versions", "commit", "date", "wall_s"} <= set(env) and "started" not in env
    assert env["versions"]["torch"] and env["versions"]["python"]
    assert all(math.isfinite(v) for v in env["load_before"] + env["load_after"])

    md = md_path.read_text()
    assert md.startswith("# Demo\n\n| a |\n|---|\n| 1 |\n\n## Environment\n\n")
    assert f"- machine: {env['cpu']['model']}, {env['cpu']['cores']} cores" in md
    assert f"- load average before {env['load_before']}, after {env['load_after']}" in md
    assert "- command: `python -m benchmarks demo --rounds 2 --name 'a b'`" in md and md.endswith("`\n")


def test_harness_examples_hold():
    assert doctest.testmod(harness).failed == 0
