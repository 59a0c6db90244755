"""SAN on MNIST (mnist5k): φ̄, CR⁻¹ and L̃ per sparse activation, kernel size selected by validation φ̄
(the layout of the SAN paper's Table III). Also times vectorized Peaks against the per-map Python
reference on the same maps.

Run: python benchmarks/finetune_san_mnist.py   (equivalent CLI:
inspectnet san mnist5k:train --limit 600 --kernel-sizes 3,5,7 --kernels 4 --epochs 3 --out DIR)
Writes benchmarks/results/finetune_san_mnist.{json,md}.
"""

import json
import time
from pathlib import Path

import torch

from inspectnet.analysis.san.activations import peaks, peaks_algorithm4
from inspectnet.analysis.san.model import images_tensor, san_select
from inspectnet.data import load_data

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    torch.set_num_threads(1)
    x = images_tensor(load_data("mnist5k:train"), 600)
    n_val = 120
    t0 = time.perf_counter()
    result = san_select(x[:-n_val], x[-n_val:], sizes=(3, 5, 7), kernels=4, epochs=3)
    seconds = time.perf_counter() - t0
    maps = torch.relu(torch.randn(16, 4, 28, 28, generator=torch.Generator().manual_seed(0)))
    t0 = time.perf_counter()
    fast = peaks(maps, 3)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = peaks_algorithm4(maps, 3)
    t_slow = time.perf_counter() - t0
    doc = {**result.to_dict(), "train_seconds": seconds,
           "peaks_vectorized_s": t_fast, "peaks_algorithm4_s": t_slow, "peaks_equal": bool(torch.equal(fast, slow))}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune_san_mnist.json").write_text(json.dumps(doc, indent=2) + "\n")
    text = (f"SAN on mnist5k:train (first 600 images: 480 train / 120 validation), 4 kernels, 3 epochs, "
            f"kernel size chosen from 3, 5, 7 by validation φ̄.\n\n{result.table()}\n\n"
            f"Peaks on 16×4 maps of 28×28 (d=3): vectorized {t_fast * 1000:.1f} ms vs per-map Python "
            f"reference {t_slow * 1000:.0f} ms ({t_slow / t_fast:.0f}× faster), identical output: "
            f"{doc['peaks_equal']}.\n")
    (RESULTS / "finetune_san_mnist.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
