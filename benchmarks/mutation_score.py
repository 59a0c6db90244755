"""Mutation score of the core maths: how many one-line bugs planted in each module its tests catch.

For every module listed in ``MODULES`` the script plants, one at a time, every small change of the
kinds a slip of the keyboard makes (``+``/``-``, ``*``/``/``, ``<``/``<=``, ``==``/``!=``,
``and``/``or``, a dropped ``not`` or unary minus, ``True``/``False``, a number ``n`` changed to
``n + 1``) and runs the tests that exercise the module against it. A mutant is **killed** when a test
fails (or the tests run past a time limit), **survived** when they all pass; survivors that are
listed in ``EQUIVALENT`` with the reason they cannot change any result are counted apart, and the
score is killed / (mutants − equivalent). Error messages, docstrings, annotations, decorators and the
``raise`` statements' arguments are not mutated (their text is not maths).

Cost is kept down three ways: the heavy libraries (torch, timm, numpy, …) are imported once and every
run forks from that process; the mutated module is compiled from its mutated syntax tree and served
by an import hook (the files on disk never change); and each mutant runs only the tests whose
execution reached its line in a traced run of the unmodified module (fastest first, stopping at the
first failure). A mutant that no test reaches survives as *not covered*.

    python benchmarks/mutation_score.py                       # all modules; writes benchmarks/results/mutation.{json,md}
    python benchmarks/mutation_score.py --modules data/labels,analysis/sparsity
    python benchmarks/mutation_score.py --list                # the module → test-file table
    python benchmarks/mutation_score.py --mode tally          # rewrite the results from the logged outcomes
    python benchmarks/mutation_score.py --mode survivors --modules data/labels --tests tests/test_labels.py
    python benchmarks/mutation_score.py --modules analysis/dissect --cap 180 --budget 10   # on a busy machine

``--cap S`` stops one mutant's tests after S seconds (it is then *capped*: undecided, scored as a survivor, never
as a kill); ``--budget M`` starts no new mutant of a module after M minutes (its result says how many it reached).

Every outcome is logged as it comes (``benchmarks/results/mutation.progress.jsonl``), so an interrupted run
resumes where it was, and after tests are added ``--mode survivors`` runs only the logged survivors again.

It is not part of the default test run (it runs the listed test files once per mutant).
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib
import importlib.abc
import importlib.util
import json
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# module group -> (source files, test files that exercise them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "analysis/sparsity": (["inspectnet/analysis/sparsity.py"], ["tests/test_sparsity.py"]),
    "data/labels": (["inspectnet/data/labels.py"], ["tests/test_labels.py"]),
    "analysis/explain/faithfulness": (["inspectnet/analysis/explain/faithfulness.py"], ["tests/test_faithfulness.py"]),
    "analysis/heads/influence": (["inspectnet/analysis/heads/influence.py"],
                                 ["tests/test_influence.py", "tests/test_decompose.py"]),
    "analysis/heads/decompose": (["inspectnet/analysis/heads/decompose.py", "inspectnet/analysis/heads/contributions.py",
                                  "inspectnet/analysis/heads/retrain.py"],
                                 ["tests/test_decompose_values.py", "tests/test_decompose.py"]),
    "analysis/heads/slim": (["inspectnet/analysis/heads/slim.py"], ["tests/test_slim.py"]),
    "analysis/explain/evidence": (["inspectnet/analysis/explain/evidence.py", "inspectnet/analysis/explain/pooled_map.py"],
                                  ["tests/test_evidence_values.py", "tests/test_evidence.py", "tests/test_token_evidence.py",
                                   "tests/test_token_grids.py", "tests/test_token_explanations.py"]),
    "analysis/explain/trust": (["inspectnet/analysis/explain/trust.py", "inspectnet/analysis/explain/sanity.py",
                                "inspectnet/analysis/explain/localisation.py", "inspectnet/analysis/explain/methods.py"],
                               ["tests/test_trust_values.py", "tests/test_sanity_values.py",
                                "tests/test_explanation_methods.py", "tests/test_trust.py", "tests/test_localisation.py",
                                "tests/test_faithfulness.py", "tests/test_token_evidence_faithfulness.py",
                                "tests/test_token_explanations.py"]),
    "analysis/explain/token_evidence": (["inspectnet/analysis/explain/token_evidence.py",
                                         "inspectnet/analysis/explain/exact_evidence.py",
                                         "inspectnet/analysis/explain/token_layout.py"],
                                        ["tests/test_token_evidence_values.py", "tests/test_token_evidence.py",
                                         "tests/test_token_export.py", "tests/test_token_grids.py",
                                         "tests/test_evidence_values.py", "tests/test_evidence.py",
                                         "tests/test_token_explanations.py"]),
    "analysis/san": (["inspectnet/analysis/san/activations.py", "inspectnet/analysis/san/model.py"],
                     ["tests/test_san_values.py", "tests/test_san.py", "tests/test_sparse_activations.py"]),
    "analysis/dissect": (["inspectnet/analysis/dissect/counts.py", "inspectnet/analysis/dissect/tail.py",
                          "inspectnet/analysis/dissect/sketch.py", "inspectnet/analysis/dissect/upsample.py"],
                         ["tests/test_dissect_tail.py", "tests/test_dissect_counts.py", "tests/test_dissect_sketch.py",
                          "tests/test_dissect.py"]),
    "plugins/ebp": (["plugins/ebp.py"], ["tests/test_ebp_values.py", "tests/test_plugins.py"]),
    "plugins/cgl": (["plugins/cgl.py"], ["tests/test_cgl.py"]),
    "export/int8": (["inspectnet/export/int8.py", "inspectnet/export/qdq.py", "inspectnet/export/bias_correction.py"],
                    ["tests/test_export.py", "tests/test_int8_mixed_precision.py",
                     "tests/test_bias_correction_tokens.py"]),
}

# survivors that cannot change any result: (file, "function: original -> mutated") -> why
_SP, _LB = "inspectnet/analysis/sparsity.py", "inspectnet/data/labels.py"
_IN, _FA = "inspectnet/analysis/heads/influence.py", "inspectnet/analysis/explain/faithfulness.py"
_SA, _EB = "inspectnet/analysis/san/activations.py", "plugins/ebp.py"
_DE = "inspectnet/analysis/heads/retrain.py"  # the retraining moved out of decompose.py
_SL = "inspectnet/analysis/heads/slim.py"
_TIMING = "a default of the latency measurement only: it changes how a time is measured, never a count or a logit"
_NO_EVIDENCE = ("D ≥ 0, so where that value is 0 every D_j it divides is 0 too (all of them, or the non-elites below "
                "it): 0 / 1e-300 = 0 gives the same zero row as the guard")
_NAN_HOYER = ("where l2 = 0 (0/0) or n = 1 (l1 = l2, so 0/0) h is already NaN: the mask only restates what NaN "
              "propagation gives")
_NAN_TR = ("where mean_sq = 0 (0/0) or n = 1 (mean² = mean_sq, 1 − 1/n = 0: 0/0) s is already NaN: the mask only "
           "restates what NaN propagation gives")
_CHUNKS = ("images are explained in chunks, each with its own tie-break seed (seed + chunk start): another chunk "
           "size or seed offset draws another seeded random order among equal map values, nothing else")
_STRICTER_STOP = ("the conjugate-gradient stop test then compares each image's residual with every image's bound, or "
                  "with a bound no larger than its own: never looser than the right test, so the solve only takes more "
                  "steps towards the same solution")
_CG = "plugins/cgl.py"
_BLOCKS = ("the number of images per block of the pair distances: the same sums over another partition of the "
           "minibatch (the blocks stay a partition: tested)")
_EQUAL_ONLY = "the two differ only where a float equals the threshold exactly, a set the values never land on"
_ON_CENTRE = ("the fill is the weight of a position on the ψ-weighted centre itself, which enters G only times "
              "c − p = 0")
_START = ("the conjugate-gradient solver's starting point only: the solve then meets the same tolerance on the same "
          "system (within 50 steps from the coarse start on every image tried), so the imputation is the same")
_DP = "inspectnet/analysis/heads/decompose.py"
_LOOK = "the sweep figure's size, resolution or font size: how the picture looks, never a number it shows"
_SM = "inspectnet/analysis/san/model.py"
_EV, _PM = "inspectnet/analysis/explain/evidence.py", "inspectnet/analysis/explain/pooled_map.py"
_CHECK_INPUT = ("the random input of the exactness check: a head read rightly sums to its logits to float rounding on any "
                "input, and one read wrongly misses by far more on every seeded draw tried")
_TRACE_INPUT = ("the traced input only shows which modules run, in which order, with which output shapes per image: any "
                "seeded image, and a batch of two as well as one, give the same reading")
_LOOK_SAN = ("the kernel picture's size, resolution, font size or which panel of a row carries its label: how the "
             "picture looks; the kernels it shows are tested (kernel_panels)")
_DC, _TS, _UQ = ("inspectnet/analysis/dissect/counts.py", "inspectnet/analysis/dissect/tail.py",
                 "inspectnet/analysis/dissect/sketch.py")
_EMPTY_GRID = ("the width exponent of a sketch that saw nothing only has to lie below every real one, which is at least "
               "about -130 (spans are at least 2^-100): -3^20 and -2^21 do too")
_REGRID_CHECK = ("the comparison only spares the search for a covering grid, and that search keeps a grid that covers the "
                 "values (tested): searching on every batch changes nothing")
_LOG2_FLOOR = ("the floor keeps log2 finite where vmax = lo only, and the maximum with the given exponent discards the "
               "bound it gives; without it (2.0 * -1000, or 3.0 ** -1000 = 0.0) the bound is -inf, cast to the smallest "
               "int64 and discarded the same way")
_FIRST_TRY = ("the first exponent tried is lower but never above the answer, and the loop doubles it until the window "
              "fits: the same smallest power-of-two window (checked on 6.5 million ranges, spans next to powers of two "
              "among them)")
_TE, _TL = "inspectnet/analysis/explain/token_evidence.py", "inspectnet/analysis/explain/token_layout.py"
_ONE_TOKEN = "the class token is (1, 1, D): its middle axis expanded to -1 (kept) or to 1 is the same"
EQUIVALENT: dict[tuple[str, str], str] = {
    ("inspectnet/export/int8.py", "quantizable_nodes: load_external_data=False -> load_external_data=True"):
        "the list reads node names and types only: weights stored outside the file, loaded or not, change no node",
    ("inspectnet/export/int8.py", "_input_name: load_external_data=False -> load_external_data=True"):
        "it reads the graph's input name only: weights stored outside the file, loaded or not, change no name",
    ("inspectnet/export/qdq.py", "int8_weights: :3 -> :4"):
        "a DequantizeLinear has at most three inputs (data, scale, zero point): [:4] is [:3]",
    ("inspectnet/export/qdq.py",
     "int8_weights: next((a.i for a in dq.attribute if a.name == 'axis'), 1) -> "
     "next((a.i for a in dq.attribute if a.name == 'axis'), 2)"):
        "the default axis is never read: ONNX Runtime's quantizer writes the axis on every per-channel "
        "DequantizeLinear (53 of 53 in a MobileNetV2 file), and a per-tensor scale has no axis to run along",
    ("inspectnet/export/bias_correction.py", "_weight_errors: -1 -> -2"):
        "numpy infers a dimension given as any negative size (numpy 2.4: reshape(-2) is reshape(-1))",
    ("inspectnet/export/bias_correction.py", "_weight_errors: w_int - zero.reshape(shape) -> w_int + zero.reshape(shape)"):
        "ONNX Runtime quantizes int8 weights symmetrically: their zero point is 0, so adding or subtracting it is the "
        "same (tested: tests/test_export.py reads the zero points of a quantized Gemm)",
    ("inspectnet/export/bias_correction.py", "correct_biases: 16 -> 17"):
        "the inputs per ONNX Runtime run while the mean shift is measured: a float64 sum over every row divided "
        "by their count, whatever the batches",
    ("inspectnet/export/int8.py", "_float_graph_outputs: dq is not None and dq.op_type == 'DequantizeLinear' -> "
                                  "dq is not None or dq.op_type == 'DequantizeLinear'"):
        "every graph output has a producer, so dq is never None; a producer that is not a DequantizeLinear (a node "
        "kept in fp32) reads its input from a DequantizeLinear or the graph input, never a QuantizeLinear, so the "
        "output is left as it is either way (tested with the classifier kept in fp32)",
    ("inspectnet/export/int8.py", "quantize_int8: 16 -> 17"):
        "the calibration's batch size: min-max ranges over batches are the min and max over all inputs, whatever "
        "the batches",
    (_EV, "_check_exact: torch.Generator().manual_seed(0) -> torch.Generator().manual_seed(1)"): _CHECK_INPUT,
    (_EV, "_check_exact: torch.randn(2, *size, generator=torch.Generator().manual_seed(0)) -> "
          "torch.randn(3, *size, generator=torch.Generator().manual_seed(0))"): _CHECK_INPUT,
    (_PM, "read_pooled_head: torch.randn(1, *size, generator=torch.Generator().manual_seed(0)) -> "
          "torch.randn(2, *size, generator=torch.Generator().manual_seed(0))"): _TRACE_INPUT,
    (_PM, "read_pooled_head: torch.Generator().manual_seed(0) -> torch.Generator().manual_seed(1)"): _TRACE_INPUT,
    (_PM, "read_pooled_head: prefix if layout == 'NLC' else 0 -> prefix if layout == 'NLC' else 1"):
        "the prefix count kept for a map that is not tokens: only token layouts (NLC) read it (ClassEvidence.grid)",
    (_PM, "pool_map: 0 -> 1"):
        "the default prefix: the one caller passes the model's own prefix count, so no code path reads it",
    (_PM, "_matches: float((pooled - f).abs().max()) <= tol -> float((pooled - f).abs().max()) < tol"): _EQUAL_ONLY,
    (_PM, "_matches: float((normed - f).abs().max()) <= tol -> float((normed - f).abs().max()) < tol"): _EQUAL_ONLY,
    (_PM, "PooledHead: 0 -> 1"):
        "the default prefix of a description built without one: only token layouts (NLC) read it, and every NLC "
        "description is built with the model's own prefix count",
    (_PM, "trace_forward: events.append(('start', n)) and None -> events.append(('start', n)) or None"):
        "list.append returns None: None and None, None or None are both None (a pre-hook that returns None keeps "
        "the input)",
    **{(_SM, f"save_kernel_picture: {change}"): _LOOK_SAN for change in (
        "1.4 * result.kernels -> 1.4 / result.kernels", "1.5 * len(panels) -> 1.5 / len(panels)",
        "1.4 * result.kernels -> 2.4 * result.kernels", "1.5 * len(panels) -> 2.5 * len(panels)",
        "fontsize=7 -> fontsize=8", "dpi=100 -> dpi=101", "c == 0 -> c != 0", "c == 0 -> c == 1")},
    (_SM, "train_san: (x_hat - x[idx]).abs().flatten(1) -> (x_hat - x[idx]).abs().flatten(2)"):
        "the loss becomes the mean over positions instead of the sum, the same loss times 1/(H·W): Adam's step "
        "m/(√v + ε) does not change with a constant factor of the gradient (ε = 1e-8 aside)",
    (_SM, "train_san: set_to_none=True -> set_to_none=False"):
        "every kernel gets a gradient at every step: a zeroed gradient and none give the same Adam step",
    ("inspectnet/analysis/san/model.py", "san_metrics: x[0] -> x[1]"):
        "the size of one sample, the same for every sample of a batch (a batch of one fails at once)",
    (_DP, "sweep_plot: (5, 3.5) -> (6, 3.5)"): _LOOK,
    (_DP, "sweep_plot: (5, 3.5) -> (5, 4.5)"): _LOOK,
    (_DP, "sweep_plot: fontsize=7 -> fontsize=8"): _LOOK,
    (_DP, "sweep_plot: dpi=110 -> dpi=111"): _LOOK,
    (_FA, "_coarse_start: 2: -> 3:"): _START,
    (_FA, "_coarse_start: 8 -> 9"): _START,
    (_FA, "_coarse_start: min(images.shape[2:]) <= min_size -> min(images.shape[2:]) < min_size"): _START,
    (_FA, "_coarse_start: weight.sum((2, 3), keepdim=True).clamp_min(1.0) -> "
          "weight.sum((2, 3), keepdim=True).clamp_min(2.0)"): _START,
    (_FA, "_coarse_start: ceil_mode=True -> ceil_mode=False"): _START,
    (_FA, "_coarse_start: ceil_mode=True -> ceil_mode=False  [#2]"): _START,
    (_FA, "_coarse_start: align_corners=False -> align_corners=True"): _START,
    (_FA, "road_fill: max(h, w) <= size -> max(h, w) < size"):
        "at max(h, w) = size the coarse grid is the image itself: area averaging to the same size is the identity, "
        "and the bilinear upsampling to the same size too",
    (_FA, "paired_differences: a['deletion_auc'] - b['deletion_auc'] -> a['deletion_auc'] + b['deletion_auc']"):
        "it only counts the finite pairs: a − b and a + b are finite for the same pairs of AUCs (values in [0, 1] or "
        "NaN)",
    (_CG, "<module>: 8 -> 9"): "the number of steps between two samples of the logged spread of ψ, a diagnostic: "
                               "never a loss or a gradient",
    (_CG, "_RowL2.backward: torch.where(norms > 0, grad / norms, 0.0) -> torch.where(norms > 0, grad / norms, 1.0)"):
        "the fill multiplies an all-zero row (rows · fill): zero either way",
    (_CG, "_FilterSigmoid.backward: std > 1e-06 -> std >= 1e-06"): _EQUAL_ONLY,
    (_CG, "_pair_terms: raw >= 1e-12 -> raw > 1e-12"): _EQUAL_ONLY,
    (_CG, "_StackTerms.forward: N > 1 -> N >= 1"):
        "a 1×1 map's spread is 0 and its gradient 0 (every distance to the centre is 0): computing it or skipping "
        "it adds the same zero",
    (_CG, "ConceptGroupLearning.setup: 0 -> 1"):
        "the step count at attach: the training loop's epoch_begin sets it to 0 before the first step",
    (_CG, "ConceptGroupLearning.sample_pairs: i + torch.randint(1, n_g, (G, r), generator=self.gen) -> "
          "i - torch.randint(1, n_g, (G, r), generator=self.gen)"):
        "j = i ± k mod N_g with k uniform on 1 … N_g − 1: either sign draws j uniformly among the group's other "
        "filters (only the seeded sequence differs)",
    (_CG, "ConceptGroupLearning._stacked_pairs: pairs[n][0] -> pairs[n][1]  [#2]"):
        "the number of draws r per group: i and j have the same (G, r) shape",
    (_CG, "ConceptGroupLearning.epoch_end: round(b, 6) -> round(b, 7)"):
        "the decimals a logged group relevance is rounded to for the log: never a loss or a gradient",
    (_CG, "_image_blocks: 256 -> 257"): _BLOCKS,
    (_CG, "_image_blocks: max(1, pairs * N) -> max(2, pairs * N)"): _BLOCKS,
    (_CG, "_spread_backward: nan=0.0 -> nan=1.0"): _ON_CENTRE,
    (_CG, "_spread_backward: posinf=0.0 -> posinf=1.0"): _ON_CENTRE,
    (_FA, "linear_imputation: 500 -> 501"):
        "the default cap on conjugate-gradient steps: from the coarse start every solve tried (32–96 px, 20–90 % of "
        "the pixels removed) meets its tolerance within 50 steps",
    (_FA, "linear_imputation: keepdim=True -> keepdim=False  [#2]"): _STRICTER_STOP,
    (_FA, "linear_imputation: keepdim=True -> keepdim=False  [#3]"): _STRICTER_STOP,
    (_FA, "linear_imputation: keepdim=True -> keepdim=False  [#4]"): _STRICTER_STOP,
    (_FA, "linear_imputation: rs / count -> rs * count"): _STRICTER_STOP,
    (_FA, "linear_imputation: (rs / count).sqrt() <= tolerance * span -> (rs / count).sqrt() < tolerance * span"):
        "differs only when a float residual equals its bound exactly; one more step then moves towards the same "
        "solution",
    (_SL, "slim_model: 10 -> 11"): _TIMING,
    (_SL, "slim_model: 8 -> 9"):
        "the number of random inputs the exactness check and the timing use: exact slimming agrees on every input",
    (_SL, "slim_model: torch.Generator().manual_seed(0) -> torch.Generator().manual_seed(1)"):
        "exact slimming gives the same logits on every input, so any seeded check batch decides the same",
    (_DE, "retrain_head: training=True -> training=False"):
        "the retrained module is a DecomposedLinear: no layer in it behaves differently in training mode",
    (_DE, "_retrain_epoch: set_to_none=True -> set_to_none=False"):
        "every parameter of the head gets a gradient at every step: a zeroed gradient and none give the same step",
    (_EB, "EliteBackProp.penalty_weights: top > 0 -> top >= 0"): _NO_EVIDENCE,
    (_EB, "EliteBackProp.penalty_weights: kth > 0 -> kth >= 0"): _NO_EVIDENCE,
    (_SA, "max_pool_indices: (1, m) -> (2, m)"):
        "a signal is pooled as a (B, C, 1, L) image with ceil_mode: a window two rows high over one row covers the "
        "same entries and gives the same single output row",
    (_SA, "max_pool_indices: -2: -> 2:"): "x is (B, C, H, W): shape[-2:] and shape[2:] are the same two sides",
    (_SA, "_rises_then_falls: n > 2 -> n >= 2"):
        "at n = 2 the interior is empty: narrow(dim, 1, 0) copies nothing, the mask stays all False",
    (_SP, "hoyer: (l2 > 0) & (n > 1) -> (l2 > 0) | (n > 1)"): _NAN_HOYER,
    (_SP, "hoyer: l2 > 0 -> l2 >= 0"): _NAN_HOYER,
    (_SP, "hoyer: n > 1 -> n >= 1"): _NAN_HOYER,
    (_SP, "hoyer: np.clip(h, 0.0, 1.0) -> np.clip(h, 0.0, 2.0)"):
        "h ≤ 1 exactly (l1/l2 ≥ 1 in floating point; 35 000 near-one-hot vectors of scales 1e-30 … 1e30 never "
        "exceed 1): only the lower clip, for rounding below 0, ever acts",
    (_SP, "treves_rolls: (mean_sq > 0) & (n > 1) -> (mean_sq > 0) | (n > 1)"): _NAN_TR,
    (_SP, "treves_rolls: mean_sq > 0 -> mean_sq >= 0"): _NAN_TR,
    (_SP, "treves_rolls: n > 1 -> n >= 1"): _NAN_TR,
    (_SP, "excess_kurtosis: np.maximum(np.abs(x).max(axis=axis), 1e-300) if x.size else 1.0 -> "
          "np.maximum(np.abs(x).max(axis=axis), 1e-300) if x.size else 2.0"):
        "the scale of an empty array: its m2 is NaN, so the result is NaN whatever the threshold",
    (_SP, "excess_kurtosis: m2 <= (1e-12 * scale) ** 2 -> m2 < (1e-12 * scale) ** 2"):
        "m2 equals the threshold only when both are 0 (an all-zero vector: scale 1e-300, threshold underflows to "
        "0), where k = 0/0 is NaN either way",
    (_SP, "sparsity_metrics: a.reshape(1, -1) -> a.reshape(1, -2)"):
        "numpy infers a dimension given as any negative size (numpy 2.4: reshape(1, -2) of 12 values is (1, 12))",
    (_IN, "<module>: 4096 -> 4097"):
        "the chunk size of topk_counts: counts are summed over chunks, so any chunk size gives the same histogram",
    (_FA, "compare_to_control: a['deletion_auc'] - b['deletion_auc'] -> a['deletion_auc'] + b['deletion_auc']"):
        "paired_images counts the images where the difference is finite: a − b and a + b are finite for the same "
        "images (AUCs are finite or NaN)",
    (_FA, "faithfulness_curves: max(1, config.batch_size // 4) -> max(2, config.batch_size // 4)"): _CHUNKS,
    (_FA, "faithfulness_curves: config.batch_size // 4 -> config.batch_size // 5"): _CHUNKS,
    (_FA, "faithfulness_curves: config.seed + start -> config.seed - start"): _CHUNKS,
    (_FA, "faithfulness_curves: road_fill(x, removed, config.road_size) + noise -> "
          "road_fill(x, removed, config.road_size) - noise"):
        "−noise is a draw from the same N(0, noise²) as +noise (the ROAD noise is symmetric)",
    (_FA, "pixel_ranks: stable=True -> stable=False"):
        "the ties the sort meets are already in seeded random order, and torch's CPU sort is deterministic: an "
        "unstable sort gives another, equally seeded, tie order",
    (_FA, "_Counter.probabilities: targets.cpu().view(1, -1, 1).expand(len(variants), -1, 1) -> "
          "targets.cpu().view(1, -1, 1).expand(len(variants), -1, 2)"):
        "gathers the target's probability twice; [..., 0] reads the first copy",
    (_FA, "<module>: [1 / 6, 0.0, 1 / 6] -> [1 / 6, 1.0, 1 / 6]"):
        "a centre weight adds v to both the degree and the neighbour sum of the imputation system (they cancel), "
        "and to the right-hand side only kept · 0 (kept is 0 at the removed pixels)",
    (_LB, "imagenet_synsets: line.split('\\t', 1) -> line.split('\\t', 2)"):
        "every line of timm's imagenet_synset_to_lemma.txt holds one tab: splitting at most twice gives the same "
        "two parts",
    (_LB, "_Vocabulary.closest: n * 3 -> n * 4"):
        "more candidates change the answer only when the 3·n closest keys name fewer than n classes: model names "
        "are one key per class, and no ImageNet synonym set does so (searched: 12 000 misspellings of its keys)",
    (_DC, "best_images: stable=True -> stable=False"):
        "a unit's image ids are unique but for the padding (-inf, -1), so equal ids carry equal values and the stable "
        "sort by value that follows decides every order: the tie order of the sort by id cannot show",
    (_TS, "TailSketch.__init__: 0 -> 1  [#2]"):
        "the default upsampled total only picks the type of the upsampled counts, which a sketch without concepts (the "
        "default) does not keep; the dissection counts always pass it",
    (_TS, "TailSketch.__init__: 2 ** 20 -> 3 ** 20"): _EMPTY_GRID,
    (_TS, "TailSketch.__init__: 2 ** 20 -> 2 ** 21"): _EMPTY_GRID,
    (_TS, "TailSketch.__init__: torch.full((units,), -math.inf, **f64) -> torch.full((units,), math.inf, **f64)"):
        "the first update sets the floor before anything reads it; merging and all-reduce combine counts, never floors",
    (_TS, "TailSketch.update: self.lo + self.width * self.bins -> self.lo - self.width * self.bins"): _REGRID_CHECK,
    (_TS, "TailSketch.update: self.width * self.bins -> self.width / self.bins"): _REGRID_CHECK,
    (_TS, "TailSketch._first_floor: m < need -> m <= need"):
        "with exactly `need` values in the batch its need-th largest is its smallest: kthvalue(1) is amin",
    (_TS, "TailSketch._covering: 2.0 ** (-1000) -> 2.0 * -1000"): _LOG2_FLOOR,
    (_TS, "TailSketch._covering: 2.0 ** (-1000) -> 3.0 ** (-1000)"): _LOG2_FLOOR,
    (_TS, "TailSketch._covering: 2.0 ** (-1000) -> 2.0 ** (-1001)"): _LOG2_FLOOR,
    (_TS, "TailSketch._covering: range(3) -> range(4)"):
        "the second width tried always covers (twice the least width, a start less than a concept bin below lo); the "
        "third only absorbs a rounding of log2, and a fourth is never reached",
    (_TS, "TailSketch._share_of_raw: high <= t -> high < t"):
        "at t = high the spread (high - t) / (high - low) is 0, the value the first branch gives",
    (_TS, "TailSketch._share_of_raw: low > t -> low >= t"):
        "at t = low < high the spread is (high - low) / (high - low) = 1, the value the second branch gives (t = low = "
        "high is taken by the first)",
    (_UQ, "UnitQuantiles._grid: self.bins - 1 -> self.bins + 1"): _FIRST_TRY,
    (_UQ, "UnitQuantiles._grid: span_exp.long() - 1 -> span_exp.long() - 2"): _FIRST_TRY,
    (_UQ, "UnitQuantiles._grid: range(4) -> range(5)"):
        "without overflow the first or second exponent tried fits, so a third try never runs; a range whose width "
        "overflows float64 is refused either way",
    (_TE, "_check_exact: torch.randn(2, *size, generator=torch.Generator().manual_seed(0)) -> "
          "torch.randn(3, *size, generator=torch.Generator().manual_seed(0))"): _CHECK_INPUT,
    (_TE, "_check_exact: torch.Generator().manual_seed(0) -> torch.Generator().manual_seed(1)"): _CHECK_INPUT,
    (_TE, "TokenEvidence._read_token_scale: (:, 0) -> (:, 1)"):
        "ones_like reads only the shape of the column it is given, and every column has the same",
    (_TL, "Readout: 0 -> 1"):
        "the start is read by mean readouts only (token None), and each of them is built with its start",
    (_TL, "TokenLayout: 0 -> 1"): "every layout is built with its token width",
    (_TL, "attention_step: k.transpose(-2, -1) -> k.transpose(2, -1)"):
        "the keys are (B, heads, N, head_dim): axis 2 is axis -2",
    (_TL, "embed: images.shape[2] -> images.shape[3]"):
        "torchvision's ViT takes square inputs only (it refuses any other size), so height and width are equal",
    (_TL, "embed: model.class_token.expand(tokens.shape[0], -1, -1) -> "
          "model.class_token.expand(tokens.shape[0], 1, -1)"): _ONE_TOKEN,
    (_TL, "embed: model.cls_token.expand(tokens.shape[0], -1, -1) -> model.cls_token.expand(tokens.shape[0], 1, -1)"):
        _ONE_TOKEN,
    ("inspectnet/analysis/explain/sanity.py", "_spread: k >= n -> k > n"):
        "with k = n the even spread round(i·(n - 1) / (n - 1)) is every index, what the first branch returns",
    ("inspectnet/analysis/explain/methods.py", "map_size: -2: -> 2:"):
        "the Grad-CAM layer's output is (B, C, h, w), whose [2:] is its [-2:]",
    ("inspectnet/analysis/explain/methods.py", "map_size: :1 -> :2"):
        "one image or two give the layer the same output size",
    ("inspectnet/analysis/dissect/upsample.py", "_axis: n_in + 1 -> n_in + 2"):
        "the extra, last group holds no position: its zero count is never read and does not change the largest group",
}

_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
           ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
_CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
           ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_SKIP_KEYWORDS = {"stacklevel", "maxsize", "desc"}


@dataclass
class Mutant:
    file: str
    index: int                     # position in the walk of the file's tree (identifies the node)
    line: int
    end_line: int
    function: str
    import_time: bool              # run when the module is imported (module level, class bodies, defaults)
    original: str
    mutated: str
    status: str = "pending"        # killed / survived / equivalent / not covered / timeout / error
    killed_by: str | None = None
    why: str | None = None
    seconds: float = 0.0
    tests_run: int = 0

    @property
    def key(self) -> str:
        return f"{self.function}: {self.original} -> {self.mutated}"


# ------------------------------------------------------------------ finding the mutants
def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, decorators, raise arguments, f-strings."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
            for a in (*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs, node.args.vararg, node.args.kwarg):
                mark(a.annotation if a is not None else None)
            for d in node.decorator_list:
                mark(d)
        elif isinstance(node, ast.ClassDef):
            for d in node.decorator_list:
                mark(d)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.Raise | ast.JoinedStr | ast.Assert):
            mark(node)
        elif isinstance(node, ast.keyword) and node.arg in _SKIP_KEYWORDS:
            mark(node)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("warn", "info", "debug", "write"):
            mark(node)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                mark(first)
    return skip


def _alternatives(node: ast.AST) -> list[ast.AST]:
    """The mutated versions of ``node`` (each a new node), none if it is not mutated."""
    out: list[ast.AST] = []
    if isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _BINOPS:
        new = copy.copy(node)
        new.op = _BINOPS[type(node.op)]()
        out.append(new)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _CMPOPS:
        new = copy.copy(node)
        new.ops = [_CMPOPS[type(node.ops[0])]()]
        out.append(new)
    elif isinstance(node, ast.BoolOp):
        new = copy.copy(node)
        new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(new)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        out.append(node.operand)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(ast.Constant(not node.value))
    elif isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        out.append(ast.Constant(node.value + 1))
    return out


def _import_time(tree: ast.AST) -> set[int]:
    """ids of nodes evaluated when the module is imported: outside function bodies, or a default value."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            body = node.body if isinstance(node.body, list) else [node.body]
            for stmt in body:
                inside.update(id(n) for n in ast.walk(stmt))
    defaults: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and id(node) not in inside:
            for d in (*node.args.defaults, *[k for k in node.args.kw_defaults if k is not None]):
                defaults.update(id(n) for n in ast.walk(d))
    return {id(n) for n in ast.walk(tree) if id(n) not in inside} | defaults


def _function_names(tree: ast.AST) -> dict[int, str]:
    names: dict[int, str] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                for n in ast.walk(child):
                    names[id(n)] = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return names


def find_mutants(path: str) -> list[Mutant]:
    """Every mutant of the file at ``path`` (relative to the repository root)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    skip, names, at_import = _skipped_nodes(tree), _function_names(tree), _import_time(tree)
    parents = {id(child): parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    mutants: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        for alt in _alternatives(node):
            shown = node
            while isinstance(shown, ast.Constant | ast.UnaryOp) and \
                    isinstance(parents.get(id(shown)), ast.expr | ast.keyword):
                shown = parents[id(shown)]  # a number alone says little: show the expression it is in
            before = _text(shown)
            _replace(shown, node, alt) if shown is not node else None
            after = _text(shown if shown is not node else alt)
            _replace(shown, alt, node) if shown is not node else None
            mutants.append(Mutant(path, index, node.lineno, node.end_lineno or node.lineno,
                                  names.get(id(node), "<module>"), id(node) in at_import, before, after))
    mutants.sort(key=lambda m: (m.line, m.index))
    seen: dict[str, int] = {}
    for m in mutants:  # the same change twice in one function: number the later ones
        seen[m.key] = seen.get(m.key, 0) + 1
        if seen[m.key] > 1:
            m.mutated += f"  [#{seen[m.key]}]"
    return mutants


def _text(node: ast.AST) -> str:
    src = ast.unparse(node) if not isinstance(node, ast.AugAssign) else \
        f"{ast.unparse(node.target)} {_OP_TEXT[type(node.op)]}= ..."
    return src if len(src) <= 90 else src[:87] + "..."


_OP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
            ast.BitAnd: "&", ast.BitOr: "|"}


def mutated_code(path: str, mutant: Mutant):
    """The module's code object with ``mutant`` applied (same file name and line numbers)."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    nodes = list(ast.walk(tree))
    target = nodes[mutant.index]
    alts = _alternatives(target)
    if not alts or target.lineno != mutant.line:
        raise RuntimeError(f"mutant {mutant.key} of {path} no longer matches the source")
    _replace(tree, target, alts[0])
    return compile(ast.fix_missing_locations(tree), str(ROOT / path), "exec")


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    """Put ``new`` where ``old`` is in ``tree`` (``old`` must not be ``tree`` itself)."""
    if new is not old and not hasattr(new, "lineno"):
        ast.copy_location(new, old)
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                value[[i for i, v in enumerate(value) if v is old][0]] = new
                return


def module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(("inspectnet_plugins", *parts[1:]) if parts[0] == "plugins" else parts)


# ------------------------------------------------------------------ running the tests in forked children
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the mutated code for one module name; every other import goes the ordinary way."""

    def __init__(self, name: str, path: str, code):
        self.name, self.path, self.code = name, path, code

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_file_location(fullname, str(ROOT / self.path), loader=self,
                                                      submodule_search_locations=None)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.code, module.__dict__)


class _Recorder:
    """A pytest plugin: per test, the lines of the traced files it executed, its duration and outcome."""

    def __init__(self, files: set[str] | None):
        self.files, self.current, self.lines, self.seconds, self.failed = files, None, {}, {}, []

    def _trace(self, frame, event, arg):
        if frame.f_code.co_filename not in self.files:
            return None
        lines = self.lines.setdefault(self.current, set())

        def local(f, ev, a):
            if ev == "line":
                lines.add((f.f_code.co_filename, f.f_lineno))
            return local

        lines.add((frame.f_code.co_filename, frame.f_lineno))
        return local

    @pytest.hookimpl(hookwrapper=True)
    def pytest_collection(self, session):
        self.current = "<import>"  # lines run while the test modules are imported reach every test
        if self.files:
            sys.settrace(self._trace)
        yield
        sys.settrace(None)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        if self.files:
            sys.settrace(self._trace)
        start = time.perf_counter()
        yield
        sys.settrace(None)
        self.seconds[item.nodeid] = self.seconds.get(item.nodeid, 0.0) + time.perf_counter() - start

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid)


def _fork_pytest(args: list[str], timeout: float, finder: _MutantFinder | None = None,
                 traced: set[str] | None = None, finders: list[_MutantFinder] = ()) -> tuple[str, dict]:
    """Run pytest with ``args`` in a forked child; returns (outcome, the recorder's data)."""
    fd, out_path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # the child: fresh project modules, the mutant served by the finder
        code = 3
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            for name in [n for n in sys.modules if n.split(".")[0] in ("inspectnet", "inspectnet_plugins", "tests")]:
                del sys.modules[name]
            for f in [finder] if finder is not None else finders:
                sys.meta_path.insert(0, f)
            rec = _Recorder(traced)
            code = int(pytest.main([*args, "-q", "-p", "no:cacheprovider", "-p", "no:randomly"], plugins=[rec]))
            Path(out_path).write_text(json.dumps({"lines": {k: sorted(v) for k, v in rec.lines.items()},
                                                  "seconds": rec.seconds, "failed": rec.failed}))
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.unlink(out_path)
            return "timeout", {}
        time.sleep(0.05)
    text = Path(out_path).read_text()
    os.unlink(out_path)
    data = json.loads(text) if text else {}
    code = os.waitstatus_to_exitcode(status)
    return {0: "passed", 1: "failed"}.get(code, f"error (exit {code})"), data


def baseline(files: list[str], tests: list[str], cache: Path | None = None
             ) -> tuple[dict[str, dict[str, set[int]]], dict[str, float]]:
    """Which lines of ``files`` each test reaches ({file: {test: lines}}), and each test's duration.

    Kept in ``cache`` with a digest of the sources and test files: a resumed run reuses it while they are unchanged.
    """
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in [*files, *tests, "tests/conftest.py"])).hexdigest()
    if cache is not None and cache.exists() and json.loads(cache.read_text())["digest"] == digest:
        data = json.loads(cache.read_text())
    else:
        # the files are served from this tree, as the mutants will be (an installed copy elsewhere is not traced)
        same = [_MutantFinder(module_name(f), f, compile((ROOT / f).read_text(encoding="utf-8"), str(ROOT / f), "exec"))
                for f in files]
        outcome, data = _fork_pytest(tests, timeout=3600, finders=same, traced={str(ROOT / f) for f in files})
        if outcome != "passed":
            raise SystemExit(f"the tests {tests} do not pass on the unmodified code ({outcome}: {data.get('failed')})")
        if cache is not None:
            cache.write_text(json.dumps({"digest": digest, **data}))
    lines: dict[str, dict[str, set[int]]] = {f: {} for f in files}
    for test, hits in data["lines"].items():
        for filename, line in hits:
            rel = str(Path(filename).relative_to(ROOT))
            lines[rel].setdefault(test, set()).add(line)
    return lines, data["seconds"]


def run_mutant(m: Mutant, covering: list[str], seconds: dict[str, float], cap: float | None = None) -> None:
    """Run the tests reaching ``m``'s lines against it (fastest first, ending at the first failure).

    The tests get three times their unmodified duration plus 30 s, or ``cap`` seconds where that is less; a
    mutant stopped by the cap is ``capped`` (undecided), which the score counts as a survivor.
    """
    if not covering:
        m.status = "not covered"
        return
    order = sorted(covering, key=lambda t: seconds.get(t, 0.0))
    finder = _MutantFinder(module_name(m.file), m.file, mutated_code(m.file, m))
    natural = 30.0 + 3.0 * sum(seconds.get(t, 60.0) for t in order)
    limit = min(natural, cap) if cap else natural
    start = time.perf_counter()
    outcome, data = _fork_pytest([*order, "-x"], timeout=limit, finder=finder)
    m.seconds, m.tests_run = round(time.perf_counter() - start, 2), len(order)
    if outcome == "passed":
        m.status = "survived"
    elif outcome == "timeout":
        # past the cap but within the tests' own time: undecided, scored as a survivor (never a false kill)
        m.status = "timeout" if limit == natural else "capped"
    else:
        m.status = "killed" if outcome == "failed" else outcome  # "error (exit N)": the tests could not even run
        m.killed_by = (data.get("failed") or [None])[0]


# ------------------------------------------------------------------ the job
@dataclass
class ModuleScore:
    name: str
    files: list[str]
    tests: list[str]
    total: int = 0                 # mutants of the files; ``mutants`` of them are judged so far
    complete: bool = False
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    equivalent: int = 0
    seconds: float = 0.0
    score: float | None = None
    survivors: list[dict] = field(default_factory=list)
    equivalents: list[dict] = field(default_factory=list)


def score_module(name: str, limit: int | None = None, *, log: Path | None = None, on_progress=None,
                 first: tuple[str, ...] = (), mode: str = "run", tests: list[str] | None = None,
                 cap: float | None = None, budget: float | None = None) -> ModuleScore:
    """Run the mutants of the module group ``name`` against its tests (or ``tests``).

    Each outcome is appended to ``log`` (JSON lines) as it comes; outcomes already there are reused, so an
    interrupted run resumes. ``on_progress(result)`` is called every ten mutants with the score so far. Mutants
    of the functions named in ``first`` (name prefixes) run before the others. ``mode``: ``run`` (every mutant
    without a logged outcome), ``tally`` (run nothing: score the logged outcomes; a module with mutants left
    says it is incomplete) or ``survivors`` (run again, against whole test files, the mutants logged as
    survivors: tests added since can only kill more). ``cap``: at most this many seconds for one mutant's tests;
    ``budget``: no new mutant starts after this many seconds (the module's result then says it is incomplete).
    """
    files, tests = MODULES[name][0], tests or MODULES[name][1]
    done = _logged(log, name)
    mutants = [m for path in files for m in find_mutants(path)[:limit]]
    mutants.sort(key=lambda m: next((i for i, f in enumerate(first) if m.function.startswith(f)), len(first)))
    if mode == "survivors":
        todo = [m for m in mutants if done.get((m.file, m.key), ("",))[0] in ("survived", "not covered", "capped")]
    else:
        todo = [m for m in mutants if (m.file, m.key) not in done] if mode == "run" else []
    cache = log.with_name(log.name.replace(".progress.jsonl", f".baseline.{name.replace('/', '_')}.json")) if log else None
    lines, seconds = baseline(files, tests, cache) if todo and mode == "run" else ({}, {})
    result = ModuleScore(name, files, MODULES[name][1], total=len(mutants))
    waiting = {(m.file, m.key) for m in todo}
    began = time.monotonic()
    for i, m in enumerate(mutants):
        if (m.file, m.key) in waiting and budget is not None and time.monotonic() - began > budget:
            continue
        if (m.file, m.key) in waiting:
            if mode == "survivors":
                covering = tests  # whole files: a new test may reach the line
            else:
                reached = {t for t, hit in lines[m.file].items() if hit & set(range(m.line, m.end_line + 1))}
                covering = list(seconds) if m.import_time or "<import>" in reached else sorted(reached)
            run_mutant(m, covering, seconds, cap)
            if log is not None:
                with log.open("a") as fh:
                    fh.write(json.dumps({"module": name, "file": m.file, "key": m.key, "status": m.status,
                                         "killed_by": m.killed_by, "seconds": m.seconds}) + "\n")
        elif (m.file, m.key) in done:
            m.status, m.killed_by, m.seconds = done[(m.file, m.key)]
        else:
            continue
        _tally(result, m)
        print(f"  [{i + 1}/{len(mutants)}] {m.file}:{m.line} {m.key}: {m.status}"
              f"{' by ' + m.killed_by if m.killed_by else ''} ({m.seconds:.1f} s)", flush=True)
        if on_progress is not None and i % 10 == 9:
            on_progress(result)
    result.complete = result.mutants == result.total
    result.seconds = round(result.seconds, 1)
    return result


def _logged(log: Path | None, name: str) -> dict[tuple[str, str], tuple[str, str | None, float]]:
    if log is None or not log.exists():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {(r["file"], r["key"]): (r["status"], r["killed_by"], r.get("seconds", 0.0)) for r in rows
            if r["module"] == name}


def _tally(result: ModuleScore, m: Mutant) -> None:
    if m.status == "survived" and (m.file, m.key) in EQUIVALENT:  # decided now: the list may grow after a run
        m.status, m.why = "equivalent", EQUIVALENT[(m.file, m.key)]
    result.mutants += 1
    result.seconds += m.seconds
    if m.status in ("killed", "timeout") or m.status.startswith("error"):
        result.killed += 1
    elif m.status == "equivalent":
        result.equivalent += 1
        result.equivalents.append(_row(m))
    else:
        result.survived += 1
        result.survivors.append(_row(m))
    judged = result.mutants - result.equivalent
    result.score = round(result.killed / judged, 4) if judged else None


def _row(m: Mutant) -> dict:
    row = asdict(m)
    for k in ("index", "killed_by", "seconds", "tests_run", "end_line", "import_time"):
        row.pop(k)
    return row


def write_results(scores: dict[str, dict], out: Path) -> None:
    """Add ``scores`` (module name -> :class:`ModuleScore` as a dict) into the results at ``out``; rewrite both files."""
    previous = json.loads(out.with_suffix(".json").read_text())["modules"] if out.with_suffix(".json").exists() else {}
    modules = {**previous, **scores}
    doc = {"machine": _machine(), "modules": dict(sorted(modules.items()))}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    rows = ["| module | mutants | killed | survived | equivalent | score |", "|---|---:|---:|---:|---:|---:|"]
    for s in doc["modules"].values():
        score = "—" if s["score"] is None else f"{100 * s['score']:.1f} %"
        count = s["mutants"] if s.get("complete", True) else f"{s['mutants']} of {s['total']} (run not finished)"
        rows.append(f"| {s['name']} | {count} | {s['killed']} | {s['survived']} | {s['equivalent']} | {score} |")
    lines = ["# Mutation score of the core", "", "Written by `python benchmarks/mutation_score.py` (see its docstring). "
             "Score = killed / (mutants − equivalent); a timeout or a crash of the tests counts as killed, a mutant stopped "
             "by `--cap` (capped) as a survivor.", "",
             f"Written on: {doc['machine']['cpu']}, {doc['machine']['cores']} cores, {doc['machine']['date']}.", "",
             *rows, ""]
    for s in doc["modules"].values():
        if s["survivors"]:
            lines += [f"## {s['name']}: survivors", ""]
            lines += [f"- `{r['file']}:{r['line']}` {r['function']}: `{r['original']}` → `{r['mutated']}`"
                      f" ({r['status']})" for r in s["survivors"]]
            lines.append("")
        if s["equivalents"]:
            lines += [f"## {s['name']}: equivalent mutants", ""]
            lines += [f"- `{r['file']}:{r['line']}` {r['function']}: `{r['original']}` → `{r['mutated']}`: {r['why']}"
                      for r in s["equivalents"]]
            lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated names from MODULES")
    parser.add_argument("--limit", type=int, default=None, help="at most this many mutants per file (a quick look)")
    parser.add_argument("--out", default=str(RESULTS / "mutation"), help="results path without suffix")
    parser.add_argument("--list", action="store_true", help="print the module → test-file table and each mutant count")
    parser.add_argument("--mode", choices=("run", "tally", "survivors"), default="run",
                        help="run: every mutant without a logged outcome; tally: run nothing, score the logged "
                             "outcomes; survivors: run the logged survivors again against whole test files")
    parser.add_argument("--tests", default="", help="comma-separated test files instead of the module's (with --mode "
                                                      "survivors: the files whose new tests may kill them)")
    parser.add_argument("--first", default="", help="comma-separated function names whose mutants run first")
    parser.add_argument("--cap", type=float, default=None, help="at most this many seconds for one mutant's tests")
    parser.add_argument("--budget", type=float, default=None,
                        help="minutes per module after which no new mutant starts (the result says it is incomplete)")
    parser.add_argument("--add-results", default=None, help="a results .json of another run: add its modules to --out")
    args = parser.parse_args(argv)
    if args.add_results:
        write_results(json.loads(Path(args.add_results).read_text())["modules"], Path(args.out))
        return 0
    names = [n.strip() for n in args.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; expected some of {list(MODULES)}")
    if args.list:
        for n in names:
            files, tests = MODULES[n]
            print(f"{n}: {sum(len(find_mutants(f)) for f in files)} mutants; tests {' '.join(tests)}")
        return 0
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    heavy = ("numpy", "torch", "timm", "scipy.stats", "sklearn.linear_model", "matplotlib.pyplot", "PIL.Image", "onnx",
             "onnxruntime", "captum")
    for lib in heavy if args.mode != "tally" else ():  # imported once here: every run forks from this process
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    scores = []
    for n in names:
        print(f"{n}: {', '.join(MODULES[n][0])} against {', '.join(MODULES[n][1])}", flush=True)
        log = Path(args.out).with_suffix(".progress.jsonl")
        first = tuple(f.strip() for f in args.first.split(",") if f.strip())
        tests = [t.strip() for t in args.tests.split(",") if t.strip()] or None
        scores.append(score_module(n, args.limit, log=log, first=first, mode=args.mode, tests=tests, cap=args.cap,
                                   budget=60 * args.budget if args.budget else None,
                                   on_progress=lambda r: write_results({r.name: asdict(r)}, Path(args.out))))
        s = scores[-1]
        print(f"{n}: {s.killed} killed, {s.survived} survived, {s.equivalent} equivalent of {s.mutants} "
              f"({s.seconds:.0f} s)", flush=True)
        write_results({s.name: asdict(s) for s in scores}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
