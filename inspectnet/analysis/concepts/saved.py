"""A discovery's factoriser on disk: what ``basis.npz`` holds beside the basis, and reading it back.

``basis.npz`` keeps the basis V (K, C) and the centre (C,) of every discovery, and what encoding new
cells needs: the method, and for a TopK autoencoder its encoder, biases, scale and active-code count.
:func:`read_factoriser` gives back an object that encodes like the fitted one
(:class:`~inspectnet.analysis.concepts.activations.ConceptActivations` takes either), with the layer,
k and weight fingerprint from ``concepts.json`` so an exporter can check it belongs to the model.

>>> import torch, tempfile, pathlib
>>> from inspectnet.analysis.concepts.factor import make_factoriser
>>> sae = make_factoriser("sae", 8, 4, 0, active=2); sae.partial_fit(torch.rand(32, 8))
>>> sorted(factoriser_arrays(sae))
['active', 'dec_bias', 'enc_bias', 'encoder', 'method', 'scale']
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectnet.core.errors import InspectnetError

BASIS_FILE, JSON_FILE = "basis.npz", "concepts.json"
_SAE_ARRAYS = ("encoder", "enc_bias", "dec_bias", "scale")


def factoriser_arrays(factoriser: Any) -> dict[str, np.ndarray]:
    """The arrays beyond basis and centre that encoding new cells needs (saved into ``basis.npz``).

    Args:
        factoriser: a fitted :class:`~inspectnet.analysis.concepts.factor.StreamingNMF` or
            :class:`~inspectnet.analysis.concepts.factor.TopKAutoencoder` (None: nothing more).

    Returns:
        ``{"method": ...}`` and, for an autoencoder, its encoder, biases, scale and ``active``.

    Examples:
        >>> from inspectnet.analysis.concepts.factor import make_factoriser
        >>> factoriser_arrays(make_factoriser("nmf", 8, 2, 0))
        {'method': array('nmf', dtype='<U3')}
        >>> factoriser_arrays(None)
        {}
    """
    if factoriser is None:
        return {}
    out = {"method": np.array(factoriser.method)}
    if factoriser.method == "sae":
        out.update({name: getattr(factoriser, name).detach().float().numpy() for name in _SAE_ARRAYS})
        out["active"] = np.array(factoriser.active)
    return out


@dataclasses.dataclass
class SavedFactoriser:
    """A factoriser read back from a discovery folder: the attributes encoding needs, as tensors.

    Attributes:
        method: ``"nmf"`` or ``"sae"``.
        basis: the (K, C) concept basis V.
        layer: the layer the concepts were discovered in.
        k: the number of concepts.
        fingerprint: the weight fingerprint of the model the discovery ran on.
        active: codes a TopK autoencoder keeps per cell (0 for NMF).
        encoder: the autoencoder's (K, C) encoder weights (None for NMF).
        enc_bias: the autoencoder's (K,) encoder bias.
        dec_bias: the autoencoder's (C,) decoder bias.
        scale: the autoencoder's input scale.
    """

    method: str
    basis: torch.Tensor
    layer: str
    k: int
    fingerprint: str
    active: int = 0
    encoder: torch.Tensor | None = None
    enc_bias: torch.Tensor | None = None
    dec_bias: torch.Tensor | None = None
    scale: torch.Tensor | None = None


def read_factoriser(folder: str | Path) -> SavedFactoriser:
    """The factoriser of a discovery written by ``inspectnet concepts`` / ``write_concepts``.

    Args:
        folder: the discovery's output folder (``concepts.json`` and ``basis.npz``).

    Returns:
        A :class:`SavedFactoriser`.

    Raises:
        InspectnetError: the folder lacks ``concepts.json`` or ``basis.npz``, or ``basis.npz`` holds the basis only.

    Examples:
        >>> read_factoriser("no/such/folder")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: --concepts no/such/folder has no concepts.json and basis.npz; \
expected the output folder of `inspectnet concepts`
    """
    folder = Path(folder)
    if not (folder / JSON_FILE).is_file() or not (folder / BASIS_FILE).is_file():
        raise InspectnetError(f"--concepts {folder} has no {JSON_FILE} and {BASIS_FILE}; expected the output folder "
                              f"of `inspectnet concepts`")
    info = json.loads((folder / JSON_FILE).read_text())
    with np.load(folder / BASIS_FILE) as arrays:
        found = {k: arrays[k] for k in arrays.files}
    if "method" not in found:
        raise InspectnetError(f"{folder / BASIS_FILE} holds the basis only (written by an older version); run "
                              f"`inspectnet concepts` again to save what encoding needs")
    saved = SavedFactoriser(method=str(found["method"]), basis=torch.from_numpy(found["basis"]).float(),
                            layer=info["layer"], k=int(info["k"]), fingerprint=info.get("fingerprint", ""))
    if saved.method == "sae":
        for name in _SAE_ARRAYS:
            setattr(saved, name, torch.from_numpy(found[name]).float())
        saved.active = int(found["active"])
    return saved
