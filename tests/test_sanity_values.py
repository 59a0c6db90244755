"""The model-randomisation sanity check against a literal re-computation, and its building blocks by hand."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from inspectnet.analysis.explain.methods import explanation_maps
from inspectnet.analysis.explain.sanity import cascade_blocks, cascading_randomisation, randomise, spearman
from inspectnet.models.zoo import load_model


def test_cascade_blocks_split_stages_of_several_blocks_and_keep_a_one_block_stage_whole():
    model = nn.Sequential()
    model.add_module("stem", nn.Sequential(nn.Conv2d(3, 4, 3)))
    model.add_module("stages", nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("fc", nn.Linear(4, 2))
    assert cascade_blocks(model, "fc") == ["fc", "stages.2", "stages.0", "stem"]


class _Scaled(nn.Module):
    """A parameter of its own and no initialiser."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.full((3,), 7.0))


class _Wrapper(nn.Module):
    """An initialiser but no parameters of its own: resetting it would zero its child."""

    def __init__(self):
        super().__init__()
        self.inner, self.resets = nn.Linear(3, 3), 0

    def reset_parameters(self):
        self.resets += 1
        nn.init.zeros_(self.inner.weight)


def test_randomise_reinitialises_the_layers_holding_their_own_parameters_only():
    block = nn.Sequential(_Scaled(), _Wrapper())
    randomise(block, seed=4)
    assert block[0].scale.tolist() == [7.0] * 3                     # nothing to re-initialise it with: kept
    expected = nn.Linear(3, 3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        expected.reset_parameters()
    assert torch.equal(block[1].inner.weight, expected.weight)      # its own initialiser, not the wrapper's zeros
    assert block[1].resets == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_spearman_of_maps_with_a_value_that_is_not_finite_is_nan(bad):
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, bad])
    assert np.isnan(spearman(a, b)) and np.isnan(spearman(b, a))


def _literal_cascade(zm, x, targets, method, steps, seed):
    """Randomise block i with seed + i from the head down; after each kept step, the mean ρ over rankable images."""
    blocks = cascade_blocks(zm.model, zm.head_name)
    trained = explanation_maps(method, zm, x, targets, indices=range(len(x))).numpy()
    model = copy.deepcopy(zm.model)
    curve, finals = [], None
    for i, name in enumerate(blocks[:steps[-1] + 1]):
        randomise(model.get_submodule(name), seed + i)
        if i in steps:
            maps = explanation_maps(method, dataclasses.replace(zm, model=model), x, targets,
                                    indices=range(len(x))).numpy()
            rho = np.array([spearman(a, b) for a, b in zip(trained, maps)])
            ok = np.isfinite(rho)
            curve.append(float(rho[ok].mean()))
            finals = (float(np.abs(rho[ok]).mean()), int((~ok).sum()))
    return [blocks[s] for s in steps], curve, finals


def test_cascading_randomisation_equals_a_literal_recomputation_step_by_step():
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, input_size=64)
    x = torch.rand(4, 3, 64, 64)
    targets = torch.tensor([0, 1, 2, 0])
    res = cascading_randomisation(zm, x, targets, ["evidence"], indices=range(4), max_steps=3, seed=5)
    assert res["steps"] == [1, 6, 11] and res["total_blocks"] == 11
    blocks, curve, (abs_final, skipped) = _literal_cascade(zm, x, targets, "evidence", [0, 5, 10], seed=5)
    got = res["methods"]["evidence"]
    assert res["blocks"] == blocks
    assert got["spearman"] == pytest.approx(curve, abs=1e-12)
    assert got["abs_spearman_final"] == pytest.approx(abs_final, abs=1e-12) and got["skipped"] == skipped
    assert got["spearman"][0] < 0.999                                # the head alone, randomised, moves the maps
    default = cascading_randomisation(zm, x, targets, ["evidence"], indices=range(4), max_steps=2)
    assert default["methods"]["evidence"]["spearman"][-1] == pytest.approx(
        _literal_cascade(zm, x, targets, "evidence", [0, 10], seed=0)[1][-1], abs=1e-12)


def test_every_block_is_a_step_by_default_and_a_final_rho_equal_to_the_threshold_does_not_pass():
    torch.manual_seed(0)
    zm = load_model("resnet18", num_classes=3, input_size=64)
    x, targets = torch.rand(3, 3, 64, 64), torch.tensor([0, 1, 2])
    every = cascading_randomisation(zm, x, targets, ["random"], indices=range(3))
    assert every["steps"] == list(range(1, 12)) and every["methods"]["random"]["spearman"] == [1.0] * 11
    res = cascading_randomisation(zm, x, targets, ["evidence"], indices=range(3), max_steps=2)
    final = res["methods"]["evidence"]["abs_spearman_final"]
    at = cascading_randomisation(zm, x, targets, ["evidence"], indices=range(3), max_steps=2, threshold=final)
    above = cascading_randomisation(zm, x, targets, ["evidence"], indices=range(3), max_steps=2,
                                    threshold=float(np.nextafter(final, 1.0)))
    assert (at["methods"]["evidence"]["passes"], above["methods"]["evidence"]["passes"]) == (False, True)
