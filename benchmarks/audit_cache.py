"""First vs second (cached) `inspectnet audit` of the MNIST ResNet18, side by side in one run.

Needs the trained model (``inspectnet train resnet18 mnist5k:train --in-chans 1 --num-classes 10
--input-size 28 --epochs 3 --out runs/mnist_r18``). Runs the same audit command twice into a fresh
folder, as subprocesses (wall time includes start-up and model loading), and reads each stage's
time from card.json. Writes benchmarks/results/audit_cache.{json,md}.

Run: python -m benchmarks audit_cache [--model runs/mnist_r18] [--out runs/audit_mnist]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness


def audit_command(model: str, out: str, extra: list[str]) -> list[str]:
    return ["inspectnet", "audit", model, "mnist5k:train", "--eval", "mnist5k:test", "--limit", "1000",
            "--eval-limit", "500", "--out", out, *extra]


def timed(cmd: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return wall, json.loads((Path(cmd[cmd.index("--out") + 1]) / "card.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/mnist_r18")
    ap.add_argument("--out", default="runs/audit_mnist")
    ap.add_argument("--export", action="store_true", help="include the ONNX export stage")
    args = ap.parse_args(argv)
    run = harness.start()
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = audit_command(args.model, args.out, ["--export"] if args.export else [])
    wall1, card1 = timed(cmd)
    wall2, card2 = timed(cmd)
    stages = {n: s.get("seconds", 0.0) for n, s in card1["sections"].items()}
    doc = {"command": " ".join(cmd), "first_wall_s": round(wall1, 2), "second_wall_s": round(wall2, 2),
           "wall_ratio_second_over_first": round(wall2 / wall1, 4),
           "first_audit_total_s": card1["timing"]["total_seconds"],
           "second_audit_total_s": card2["timing"]["total_seconds"],
           "sum_of_stages_s": round(sum(stages.values()), 3),
           "ratio_second_total_over_sum_of_stages": round(card2["timing"]["total_seconds"] / sum(stages.values()), 4),
           "stage_seconds_first_run": stages,
           "second_run_cached": {n: bool(s.get("cached")) for n, s in card2["sections"].items()},
           "statuses": {n: s["status"] for n, s in card1["sections"].items()},
           "cpu_note": "OMP_NUM_THREADS=1; wall times include Python start-up and imports"}
    rows = "\n".join(f"| {n} | {s:.2f} | {'yes' if doc['second_run_cached'][n] else 'no'} |" for n, s in stages.items())
    md = (f"# audit: first vs cached second run\n\n`{doc['command']}`\n\n"
          f"| | first | second (cached) |\n|---|---|---|\n"
          f"| wall (process) s | {wall1:.2f} | {wall2:.2f} |\n"
          f"| audit total s (in process) | {doc['first_audit_total_s']:.2f} | {doc['second_audit_total_s']:.2f} |\n\n"
          f"Second audit total / sum of stages run separately = {doc['ratio_second_total_over_sum_of_stages']:.4f}; "
          f"second / first wall = {doc['wall_ratio_second_over_first']:.4f}.\n\n"
          f"| stage | seconds (first run) | cached in second run |\n|---|---|---|\n{rows}\n\n{doc['cpu_note']}\n")
    harness.write_results("audit_cache", doc, md, run)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
