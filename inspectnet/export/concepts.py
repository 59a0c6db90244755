"""The concept output of an export (``inspectnet export --concepts DIR``).

The model with a second output ``concepts`` (B, K, h, w), the codes of a discovered factoriser at every spatial
position of the map the head pools, and its part of the gate (ONNX Runtime against torch at batch 1 and 8).

The concepts must have been discovered in that map (``--layer last_stage``, the default of
``inspectnet concepts``) of the same weights (the fingerprints must agree). The codes are per spatial
position, not pooled: a TopK autoencoder's exactly as in discovery; NMF's by a fixed number of
multiplicative updates from a per-image start
(:class:`~inspectnet.analysis.concepts.activations.ConceptActivations`).

>>> from inspectnet.models.zoo import load_model
>>> concept_outputs(load_model("resnet18", num_classes=2, input_size=32), None, None, "no/such/folder")
Traceback (most recent call last):
...
inspectnet.core.errors.InspectnetError: --concepts no/such/folder has no concepts.json and basis.npz; expected \
the output folder of `inspectnet concepts`
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inspectnet.analysis.concepts.activations import NMF_ITERATIONS, OUTPUT_NAMES, ConceptActivations
from inspectnet.analysis.concepts.discover import Concepts
from inspectnet.analysis.concepts.saved import SavedFactoriser, read_factoriser
from inspectnet.core.errors import InspectnetError
from inspectnet.export.gate import ATOL, PARITY_BATCHES, RTOL
from inspectnet.models.layers import resolve_layers
from inspectnet.models.zoo import ZooModel
from inspectnet.probe.hooks import Probe
from inspectnet.runtime.classifier import default_providers, make_session

KEY_CONCEPTS = "inspectnet.concepts"


def concept_outputs(zm: ZooModel, module: nn.Module, graph: nn.Module, concepts: "Concepts | SavedFactoriser | str | Path",
                    *, iterations: int = NMF_ITERATIONS) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The gate's module and the exported graph with the concept output, and what the file says of it.

    Args:
        zm: the model being exported.
        module: what the gate compares with (the model).
        graph: what goes into the file (the model or its export form).
        concepts: a discovery (:func:`~inspectnet.analysis.concepts.discover.discover_concepts`), a
            factoriser read back with :func:`~inspectnet.analysis.concepts.saved.read_factoriser`, or
            the folder ``inspectnet concepts`` wrote.
        iterations: multiplicative updates of NMF codes in the graph.

    Returns:
        (module, graph, info): both wrapped in :class:`ConceptActivations`, and the metadata entry.

    Example: see the module doc.
    """
    fact, layer, fingerprint = _factoriser(concepts)
    if fingerprint and fingerprint != zm.fingerprint():
        raise InspectnetError(f"--concepts were discovered in weights {fingerprint}, not in {zm.spec} "
                              f"({zm.fingerprint()}); discover them in the model being exported")
    _check_layer(zm, layer)
    wrapped = ConceptActivations(module, fact, iterations).eval()
    exported = wrapped if graph is module else ConceptActivations(graph, fact, iterations).eval()
    sample = torch.randn(1, *zm.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        grid = list(wrapped(sample)[1].shape[2:])
    info = {"output": OUTPUT_NAMES[1], "layer": layer, "method": fact.method, "k": int(fact.basis.shape[0]),
            "grid": grid, "per": "spatial position: (B, K, h, w), the codes of every cell of the layer's map",
            "definition": _DEFINITIONS[fact.method].format(iterations=iterations, active=getattr(fact, "active", 0))}
    return wrapped, exported, info


_DEFINITIONS = {"sae": "U = TopK_{active}(ReLU(W_e (a / s - b_d) + b_e)) per cell a (C,)",
                "nmf": "U >= 0 minimising |A - U V| by {iterations} multiplicative updates U <- U * (A V^T) / "
                       "(U V V^T) from U = sqrt(mean(A) / K), A the image's cells (h w, C)"}


def _factoriser(concepts: "Concepts | SavedFactoriser | str | Path") -> tuple[Any, str, str]:
    """(factoriser, layer name, weight fingerprint) of what ``--concepts`` names."""
    if isinstance(concepts, Concepts):
        if concepts.factoriser is None:
            raise InspectnetError("this discovery was loaded from JSON without its factoriser; pass the folder "
                                  "`inspectnet concepts` wrote (its basis.npz holds the encoder)")
        return concepts.factoriser, concepts.layer, concepts.fingerprint
    saved = concepts if isinstance(concepts, SavedFactoriser) else read_factoriser(concepts)
    return saved, saved.layer, saved.fingerprint


def _check_layer(zm: ZooModel, layer: str) -> None:
    """The concepts' layer must be the map ``forward_features`` returns, which the graph computes the codes of."""
    net = zm.model
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise InspectnetError(f"{zm.spec} has no forward_features/forward_head split; --concepts needs the map the "
                              f"head pools")
    name = resolve_layers(net, layer, head_name=zm.head_name)[0]
    x = torch.randn(1, *zm.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), Probe(net, [name], reducer="full") as probe:
        features = net.forward_features(x)
    seen = probe.outputs.get(name)
    if seen is None or seen.shape != features.shape or not torch.equal(seen, features):
        raise InspectnetError(f"--concepts were discovered in layer {layer!r}, but the exported concept output reads "
                              f"the map the head pools; discover them with --layer last_stage")


def verify_concepts(module: ConceptActivations, path: Path, sample_shape: tuple, *, threads: int = 1,
                    device: str = "auto", batches: tuple[int, ...] = PARITY_BATCHES, seed: int = 0) -> dict[str, Any]:
    """The concept part of the gate: the file's ``concepts`` output against torch's codes on seeded inputs.

    Args:
        module: the :class:`ConceptActivations` the file was exported from.
        path: the ONNX file.
        sample_shape: one input's shape (C, H, W).
        threads: ONNX Runtime threads.
        device: the provider (auto, cpu, cuda).
        batches: batch sizes checked.
        seed: seed of the random inputs.

    Returns:
        ``{"concepts_max_abs_diff", "concepts_tolerance"}`` (worst over the batches); raises when above.

    >>> verify_concepts(module, Path("m.onnx"), (3, 224, 224))    # doctest: +SKIP
    {'concepts_max_abs_diff': 1.2e-06, 'concepts_tolerance': 0.0012}
    """
    session = make_session(path, providers=default_providers(device), threads=threads)
    rng = np.random.default_rng(seed + 1)   # other inputs than the logits' check
    worst, worst_tol = 0.0, 0.0
    for b in batches:
        x = rng.standard_normal((b, *sample_shape)).astype(np.float32)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x))[1].double().numpy()
        got = session.run([OUTPUT_NAMES[1]], {session.get_inputs()[0].name: x})[0]
        tol = ATOL + RTOL * float(np.abs(ref).max())
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not np.isfinite(got).all() or diff > tol:
            raise InspectnetError(f"export gate failed on the concepts output at batch {b}: shape {got.shape} vs torch "
                                  f"{ref.shape}, max |onnx - torch| = {diff:.3g} (tolerance {tol:.3g}); no file "
                                  f"written")
        worst, worst_tol = max(worst, diff), max(worst_tol, tol)
    return {"concepts_max_abs_diff": worst, "concepts_tolerance": worst_tol}


def add_concepts_metadata(proto: Any, info: dict[str, Any]) -> None:
    """Record the concept output (layer, method, k, grid, definition) in the file's metadata."""
    import json

    import onnx

    existing = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**existing, KEY_CONCEPTS: json.dumps(info)})
