"""What every benchmark shares: the machine it ran on, alternated timing, and its result files.

Ratios and int8 results depend on the CPU (AVX2 against AVX-512 VNNI changes both), so every result
file records the environment: CPU model and the instruction-set flags that matter, cores, the load
average before and after the run, library versions, the commit, the date and the command.

    >>> import time
    >>> run = start()
    >>> t = alternate({"short": lambda: time.sleep(0.001), "long": lambda: time.sleep(0.003)}, rounds=3)
    >>> t["short"]["median_s"] < t["long"]["median_s"]
    True
    >>> sorted(t["short"])
    ['iqr_s', 'median_s', 'q1_s', 'q3_s', 'samples_s']
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
# the flags that change which kernels PyTorch and ONNX Runtime pick (int8 above all)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimd")
LIBRARIES = ("torch", "torchvision", "timm", "onnxruntime", "onnx", "numpy", "scikit-learn")


def cpu() -> dict[str, Any]:
    """The CPU model, the flags of :data:`CPU_FLAGS` it has, and the number of cores.

    >>> sorted(cpu())
    ['cores', 'flags', 'model']
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    return {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count()}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        # results written by earlier runs do not change the code that ran: only the rest of the tree counts
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){RESULTS.relative_to(ROOT).as_posix()}"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha.strip()[:12] + ("+uncommitted" if dirty.strip() else "")


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def start() -> dict[str, Any]:
    """The environment at the start of a run (call first, before the machine is loaded by the benchmark)."""
    return {"cpu": cpu(), "load_before": _load(), "versions": _versions(), "commit": _commit(),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python -m benchmarks " + shlex.join([Path(sys.argv[0]).stem, *sys.argv[1:]]),
            "started": time.time()}


def finish(run: Mapping[str, Any]) -> dict[str, Any]:
    """The environment record of a run begun with :func:`start`: adds the load after it and its wall time."""
    env = {k: v for k, v in run.items() if k != "started"}
    env["load_after"] = _load()
    env["wall_s"] = round(time.time() - run["started"], 1)
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return env


def self_command(name: str, *args: str) -> list[str]:
    """The command line that runs benchmark ``name`` with ``args`` in a fresh Python process (a measurement that
    needs one, such as peak memory); run it with ``cwd=ROOT`` so that ``benchmarks`` and this checkout's
    ``inspectnet`` are the ones imported.

    >>> self_command("probe_overhead", "--rss", "500")[1:]
    ['-m', 'benchmarks', 'probe_overhead', '--rss', '500']
    """
    return [sys.executable, "-m", "benchmarks", name, *args]


def alternate(fns: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1, *,
              cpu: bool = False) -> dict[str, dict[str, Any]]:
    """Time each of ``fns`` ``rounds`` times, alternated (round r starts at the r-th function, so drift in the
    machine's load falls on every one alike), after ``warmup`` untimed calls each.

    Args:
        fns: name -> a call without arguments (its result is dropped; keep it in a closure if needed).
        rounds: timed calls of each; sample i of every function comes from round i, so per-round
            ratios pair samples by index.
        warmup: untimed calls of each before the first round.
        cpu: also record this process's CPU time of each call, under ``"cpu"`` (other jobs on a shared
            machine disturb it far less than wall time).

    Returns:
        name -> median, first and third quartiles, IQR and every sample of the wall time, in seconds
        (and ``"cpu"``: the same of the process CPU time, with ``cpu``).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu_samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
            cpu_samples[name].append(time.process_time() - c0)
    out = {name: summary(values) for name, values in samples.items()}
    if cpu:
        for name in names:
            out[name]["cpu"] = summary(cpu_samples[name])
    return out


def summary(values: list[float]) -> dict[str, Any]:
    """Median, quartiles and IQR of timing samples (seconds).

    >>> summary([1.0, 2.0, 3.0, 4.0, 5.0])["iqr_s"]
    2.0
    """
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median_s": med, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "samples_s": list(values)}


def environment_lines(env: Mapping[str, Any]) -> list[str]:
    """The environment as Markdown lines, for the foot of a result page."""
    c = env["cpu"]
    flags = " ".join(c["flags"]) or "none of " + "/".join(CPU_FLAGS)
    lines = [f"- machine: {c['model']}, {c['cores']} cores, flags {flags}",
             f"- load average before {env.get('load_before')}, after {env.get('load_after')}",
             f"- date {env['date']}, commit {env.get('commit')}, wall {env.get('wall_s')} s",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- command: `{env['command']}`"]
    return lines


def write_results(name: str, doc: dict[str, Any], markdown: str, run: Mapping[str, Any], *,
                  out: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``out/name.json`` (``doc`` with its ``environment``) and ``out/name.md`` (``markdown`` and the environment).

    Returns:
        The two paths.
    """
    env = finish(run)
    out.mkdir(parents=True, exist_ok=True)
    payload = _strict({**doc, "environment": env})
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    json_path.write_text(json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")
    md_path.write_text(markdown.rstrip("\n") + "\n\n## Environment\n\n" + "\n".join(environment_lines(env)) + "\n")
    return json_path, md_path


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so the JSON is strict (readable by every parser)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value
