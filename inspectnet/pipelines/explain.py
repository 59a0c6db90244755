"""Explanations as Python calls: ``inspectnet explain`` and the measured quality of explanations.

:func:`explain_images` writes overlays; :func:`explanation_quality` measures the explanations of
every form of a model (full, decomposed, slimmed, int8 through ONNX Runtime), which the audit's
explanations stage runs.

>>> doc = explain_images(load_model("runs/mnist_r18"), ["digit.png"], "out/explain", classes="top1")  # doctest: +SKIP
>>> doc["images"][0]["classes"][0]["residual"] < 1e-4                                                 # doctest: +SKIP
True
>>> q = explanation_quality([ModelForm("full", zm), ModelForm("decomposed", dzm)], data, "out/q")       # doctest: +SKIP
>>> [(r["form"], r["method"], r["vs_random"]["beats_control"]) for r in q["rows"] if "vs_random" in r]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from inspectnet.analysis.explain.config import EvidenceConfig
from inspectnet.analysis.explain.evidence import ClassChoice, class_evidence, pooled_head
from inspectnet.analysis.explain.faithfulness import (
    FaithfulnessConfig,
    compare_to_control,
    faithfulness_curves,
    summarise,
)
from inspectnet.analysis.explain.localisation import energy_pointing_game, localisation_summary, mask_view
from inspectnet.analysis.explain.methods import MethodConfig, explanation_maps, random_maps
from inspectnet.analysis.explain.plots import plot_curves, plot_examples, plot_localisation, plot_sanity
from inspectnet.analysis.explain.sanity import cascading_randomisation
from inspectnet.core.errors import InspectnetError
from inspectnet.data.subsets import spread_indices
from inspectnet.models.layers import eval_mode
from inspectnet.models.surgery import DECOMPOSED
from inspectnet.runtime.classifier import OnnxClassifier, crop_view, load_image
from inspectnet.runtime.overlays import check_image_size, write_overlays

if TYPE_CHECKING:
    from inspectnet.data import ImageDataset
    from inspectnet.models.zoo import ZooModel


def explain_images(zm: ZooModel, images: Sequence[str | Path | Image.Image], out: str | Path, *,
                   classes: ClassChoice = "top1", batch_size: int = 32,
                   names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the exact class-evidence overlays of ``classes`` for each image into ``out`` (with ``evidence.json``).

    The overlays are drawn on the crop the model sees; the JSON records, per image and class, the
    logit, the evidence sum and the exactness residual |Σ E + offset − logit|. Heads that are not
    average pooling + linear are refused with the reason; so are images smaller than the evidence
    grid (before anything is written).

    Args:
        zm: the model.
        images: image files or PIL images.
        out: the output folder.
        classes: which classes to explain (``"top1"``, a top-k or class indices).
        batch_size: images per forward pass.
        names: labels of the images in the output.

    Returns:
        The ``evidence.json`` document.

    Raises:
        InspectnetError: there are no images, the head is not average pooling + linear, or an image is
            smaller than the evidence grid.
    """
    if not images:
        raise InspectnetError("no images to explain; give image files or a folder")
    EvidenceConfig(batch_size=batch_size)  # checked where every caller's options are
    pooled = pooled_head(zm)
    pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
    labels = list(names) if names is not None else [str(im) if not isinstance(im, Image.Image) else f"image#{i}"
                                                     for i, im in enumerate(images)]
    transform, device = zm.transform(), next(zm.model.parameters()).device
    found: list[tuple[int, Any]] = []
    for start in range(0, len(pil), batch_size):
        x = torch.stack([transform(im) for im in pil[start:start + batch_size]]).to(device)
        found.append((start, class_evidence(zm, x, classes, pooled=pooled)))
    grid = tuple(found[0][1].maps.shape[2:])
    for name, im in zip(labels, pil):
        check_image_size(name, (im.size[1], im.size[0]), grid)
    items = []
    for start, ev in found:
        for j in range(ev.maps.shape[0]):
            i = start + j
            items.append({"name": labels[i], "view": np.asarray(crop_view(pil[i], zm.data_config).convert("RGB")),
                          "maps": ev.maps[j].cpu().numpy(), "classes": ev.classes[j].cpu().numpy(),
                          "logits": ev.logits[j].cpu().numpy(), "offset": ev.offset[j].cpu().numpy()})
    return write_overlays(out, items, zm.class_names, {"model": zm.spec, "engine": "torch", "grid": list(grid),
                                                       "head": "decomposed" if _decomposed(zm) else "dense"})


def _decomposed(zm: ZooModel) -> bool:
    return any(m.get("kind") == DECOMPOSED for m in zm.modifications)


# ---------------------------------------------------------------- explanation quality by model form
@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """How explanations are measured.

    ``images`` for faithfulness, ``sanity_images`` and ``sanity_steps`` (cascade steps kept, None =
    every block) for the sanity check, the ``methods`` besides the random control, and the faithfulness
    and method parameters.
    """

    images: int = 100
    sanity_images: int = 16
    sanity_steps: int | None = 6
    methods: tuple[str, ...] = ("integrated_gradients", "gradcam", "evidence")
    faithfulness: FaithfulnessConfig = FaithfulnessConfig()
    method: MethodConfig = MethodConfig()


@dataclasses.dataclass(frozen=True)
class ModelForm:
    """One form of the model: a torch model (``zm``), or an exported ONNX file with the evidence output.

    The ONNX form is run by ONNX Runtime (``onnx``); ``missing`` says why a form could not be built.
    """

    name: str
    zm: ZooModel | None = None
    onnx: Path | None = None
    missing: str | None = None


def explanation_quality(forms: Sequence[ModelForm], data: ImageDataset, out: str | Path,
                        config: QualityConfig = QualityConfig()) -> dict[str, Any]:
    """The measured quality of every explanation method on every form of a model, with its pictures in ``out``.

    Faithfulness (deletion, insertion, ROAD, against the random control) of every method on every
    form, and the cascading-randomisation sanity check of the torch forms. On data with object masks
    (``data.object_mask``), every row also holds its ``localisation``: the energy-based pointing game
    (:mod:`~inspectnet.analysis.explain.localisation`), method and control.

    ``forms[0]`` is the reference (the full model): each form's top-1 agreement is measured against
    it. Targets are each form's own predictions. A method that a form cannot run (e.g. evidence on a
    head that is not pool + linear, or gradients through ONNX Runtime) is recorded with the reason.

    Args:
        forms: the model's forms, the full model first.
        data: the images explained.
        out: the output folder.
        config: how explanations are measured.

    Returns:
        The report: rows per form and method, the sanity check, figures and costs.

    Raises:
        InspectnetError: the data holds no images.
    """
    out = Path(out)
    indices = list(range(min(config.images, len(data))))
    if not indices:
        raise InspectnetError("no images to measure explanations on")
    pairs = [data[i] for i in indices]
    x, labels = torch.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs])
    doc: dict[str, Any] = {"images": len(indices), "data": getattr(data, "spec", None),
                           "faithfulness": dataclasses.asdict(config.faithfulness),
                           "ig_steps": config.method.ig_steps, "forms": [], "rows": [], "sanity": {}}
    masks = _object_masks(data, indices, forms)
    if masks is not None:
        doc["localisation"] = {"metric": "energy-based pointing game", "images": len(indices),
                               "object_share": float(masks.double().mean())}
    reference, curves, examples = None, {}, {}
    for form in forms:
        entry, rows, found = _evaluate_form(form, x, labels, indices, config, reference)
        if masks is not None:
            _localise(rows, found, masks)
        reference = reference if reference is not None else entry.get("predictions")
        doc["forms"].append({k: v for k, v in entry.items() if k != "predictions"})
        doc["rows"] += rows
        for method, (c, maps) in found.items():
            curves[f"{method} ({form.name})"] = c
            if not method.startswith("random"):
                examples.setdefault(f"{method} ({form.name})", maps)
        if form.zm is not None and entry["status"] == "ok" and config.sanity_images > 0:
            doc["sanity"][form.name] = _sanity(form.zm, x, entry["predictions"], indices, config, rows)
        if form.zm is not None and entry["status"] == "ok" and "evidence" in config.methods:
            _add_token_summary(doc, form, x, entry["predictions"], config)
    doc["cost"] = _cost(doc["rows"], config)
    doc["figures"] = _figures(doc, curves, examples, data, forms, indices, out)
    return doc


def _evaluate_form(form: ModelForm, x: torch.Tensor, labels: np.ndarray, indices: list[int], config: QualityConfig,
                   reference: np.ndarray | None) -> tuple[dict[str, Any], list[dict[str, Any]], dict]:
    """The form's accuracy/agreement, one row per method (faithfulness vs the control) and its curves."""
    if form.missing:
        return {"name": form.name, "status": "missing", "error": form.missing}, [], {}
    score, maker, engine = _engine(form, x, config)
    with torch.no_grad():
        preds = torch.cat([score(x[s:s + config.faithfulness.batch_size]).argmax(1).cpu()
                           for s in range(0, len(x), config.faithfulness.batch_size)])
    entry = {"name": form.name, "status": "ok", "engine": engine, "predictions": preds.numpy()}
    labelled = labels >= 0
    entry["accuracy"] = float((preds.numpy()[labelled] == labels[labelled]).mean()) if labelled.any() else None
    entry["agreement_with_full"] = float((preds.numpy() == reference).mean()) if reference is not None else 1.0
    found, rows = {}, []
    for method in config.methods:
        t0 = time.perf_counter()
        try:
            maps = maker(method, preds)
        except InspectnetError as exc:
            rows.append({"form": form.name, "method": method, "status": "refused", "error": str(exc)})
            continue
        found[method] = _measure(form.name, method, maps, time.perf_counter() - t0, score, x, preds, config, rows)
    # the random control at each resolution the methods produced: a coarse map is only compared with
    # equally coarse noise (ranking blocks of pixels is easier than ranking single pixels)
    for size in sorted({tuple(maps.shape[1:]) for _, maps in found.values()}):
        maps = random_maps(range(len(x)), size, config.method.seed)
        control = _measure(form.name, "random", maps, 0.0, score, x, preds, config, rows)
        found[f"random {size[0]}x{size[1]}"] = control
        for row in rows:
            if row["status"] == "ok" and row["method"] != "random" and tuple(row["map_size"]) == size:
                row["vs_random"] = compare_to_control(found[row["method"]][0], control[0])
    return entry, rows, found


def _object_masks(data: ImageDataset, indices: list[int], forms: Sequence[ModelForm]) -> torch.Tensor | None:
    """The explained images' object masks as the model's input sees them (N, H, W).

    None when the data has no masks for them.
    """
    config = next((f.zm.data_config for f in forms if f.zm is not None), None)
    found = [data.object_mask(i) for i in indices] if hasattr(data, "object_mask") else [None]
    if config is None or any(m is None for m in found):
        return None
    return torch.stack([mask_view(m, config) for m in found])


def _localise(rows: list[dict[str, Any]], found: dict[str, tuple[Any, np.ndarray]], masks: torch.Tensor) -> None:
    """Adds to each measured row its pointing-game summary, paired with the random control of its resolution."""
    scores = {key: energy_pointing_game(torch.from_numpy(maps), masks) for key, (_, maps) in found.items()}
    for row in rows:
        if row["status"] != "ok":
            continue
        control = scores.get("random " + "x".join(map(str, row["map_size"])))
        own = control if row["method"] == "random" else scores[row["method"]]
        row["localisation"] = localisation_summary(own, masks, None if row["method"] == "random" else control)


def _measure(form: str, method: str, maps: torch.Tensor, seconds: float, score, x: torch.Tensor, preds: torch.Tensor,
             config: QualityConfig, rows: list[dict[str, Any]]) -> tuple[Any, np.ndarray]:
    """Faithfulness curves of one method's maps; appends its row, returns (curves, maps)."""
    c = faithfulness_curves(score, x, maps.to(x.device), preds, config.faithfulness)
    rows.append({"form": form, "method": method, "status": "ok", **summarise(c), "forward_passes": c.forward_passes,
                 "map_seconds_per_image": seconds / len(x), "map_size": list(maps.shape[1:])})
    return c, maps.numpy()


def _engine(form: ModelForm, x: torch.Tensor, config: QualityConfig):
    """(score: inputs -> logits, maker: (method, targets) -> maps, engine name) for a torch or ONNX form."""
    if form.zm is not None:
        zm = form.zm
        device = next(zm.model.parameters()).device

        def score(b: torch.Tensor) -> torch.Tensor:
            with eval_mode(zm.model), torch.inference_mode():
                return zm.model(b.to(device))

        def maker(method: str, targets: torch.Tensor) -> torch.Tensor:
            return explanation_maps(method, zm, x, targets, indices=range(len(x)), config=config.method)

        return score, maker, "torch"
    clf = OnnxClassifier(form.onnx, device="cpu")
    info = clf.evidence_info

    def ort_score(b: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(clf.logits(b.cpu().numpy()))

    def ort_maker(method: str, targets: torch.Tensor) -> torch.Tensor:
        if method != "evidence" or info is None:
            raise InspectnetError(f"{method} needs gradients or the evidence output, which {Path(form.onnx).name} run by "
                                  f"ONNX Runtime does not have")
        maps = [clf.evidence(x[s:s + 64].numpy())[1][:, 0] for s in range(0, len(x), 64)]
        return torch.from_numpy(np.concatenate(maps)).float()

    return ort_score, ort_maker, "onnxruntime"


def _sanity(zm: ZooModel, x: torch.Tensor, preds: np.ndarray, indices: list[int], config: QualityConfig,
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The cascading-randomisation check of the methods this form could run.

    It runs on ``sanity_images`` of the explained images spread over them (the explained images follow
    the data's class order, so the first few would often be one class); ``samples`` says which.
    """
    methods = [*dict.fromkeys(r["method"] for r in rows if r["status"] == "ok")]
    pick = spread_indices(len(x), config.sanity_images)
    found = cascading_randomisation(zm, x[pick], torch.as_tensor(preds[pick]), methods,
                                    indices=[indices[i] for i in pick], config=config.method,
                                    max_steps=config.sanity_steps)
    return {**found, "samples": pick.tolist()}


def _add_token_summary(doc: dict[str, Any], form: ModelForm, x: torch.Tensor, preds: np.ndarray,
                       config: QualityConfig) -> None:
    """For token transformers: the remainder's share per image and the layers and heads ranked by contribution."""
    from inspectnet.analysis.explain.token_summary import token_evidence_summary

    found = token_evidence_summary(form.zm, x, torch.as_tensor(preds), batch_size=config.method.batch_size)
    if found is not None:
        doc.setdefault("token_evidence", {})[form.name] = found


def _cost(rows: list[dict[str, Any]], config: QualityConfig) -> dict[str, Any]:
    """Forward passes per image per method actually spent by the metrics (counted), against the plan."""
    ratios = [r["forward_passes"] / r["evaluated"] for r in rows if r["status"] == "ok" and r["evaluated"]]
    return {"forward_passes_per_image_per_method": max(ratios) if ratios else None,
            "planned": config.faithfulness.passes_per_image(), "rows": len(ratios),
            "map_seconds_per_image": {f"{r['method']} ({r['form']})": r["map_seconds_per_image"]
                                      for r in rows if r["status"] == "ok"}}


def _figures(doc: dict[str, Any], curves: dict, examples: dict[str, np.ndarray], data: ImageDataset,
             forms: Sequence[ModelForm], indices: list[int], out: Path) -> list[dict[str, str]]:
    figures = []
    if curves:
        figures.append({"path": str(plot_curves(curves, out / "faithfulness_curves.png")),
                        "caption": "deletion and insertion curves, mean over the images (random control dashed)"})
    if doc["sanity"]:
        figures.append({"path": str(plot_sanity(doc["sanity"], out / "sanity_cascade.png")),
                        "caption": "cascading parameter randomisation (Adebayo et al. 2018): rank correlation of each "
                                   "method's maps with the trained model's"})
    localisation = _localisation_figure(doc, out) if doc.get("localisation") else None
    if localisation is not None:
        figures.append(localisation)
    config = next((f.zm.data_config for f in forms if f.zm is not None), None)
    if examples and config is not None:
        shown = indices[:4]
        views = [np.asarray(crop_view(data.image(i), config).convert("RGB")) for i in shown]
        figures.append({"path": str(plot_examples(views, {k: v[:len(shown)] for k, v in examples.items()},
                                                  [str(data.name(i))[:24] for i in shown], out / "examples.png")),
                        "caption": "each method's map on the first images (evidence: red for the predicted class, blue "
                                   "against)"})
    return figures


def _localisation_figure(doc: dict[str, Any], out: Path) -> dict[str, str] | None:
    """The pointing game of every measured map (bars), its caption listing the values of the first form.

    None when no map had positive energy to place.
    """
    rows = [r for r in doc["rows"] if r.get("localisation", {}).get("energy_pointing_game") is not None]
    if not rows:
        return None
    label = {id(r): f"{r['method'] if r['method'] != 'random' else 'random ' + 'x'.join(map(str, r['map_size']))} "
                    f"({r['form']})" for r in rows}
    path = plot_localisation({label[id(r)]: (r["localisation"]["energy_pointing_game"],
                                             r["localisation"]["energy_pointing_game_se"]) for r in rows},
                             doc["localisation"]["object_share"], out / "localisation.png")
    first = [r for r in rows if r["form"] == doc["forms"][0]["name"]]
    values = "; ".join(f"{label[id(r)]} {_percent(r['localisation'])}" for r in first)
    return {"path": str(path), "caption": f"localisation on the object masks (energy-based pointing game, Wang et al. "
                                          f"2020): share of each map's positive energy inside the objects, mean over "
                                          f"{doc['localisation']['images']} images, higher is better; a map spread "
                                          f"evenly scores the objects' share of the image, "
                                          f"{100 * doc['localisation']['object_share']:.1f} %. {values}"}


def _percent(loc: dict[str, Any]) -> str:
    se = loc["energy_pointing_game_se"]
    return f"{100 * loc['energy_pointing_game']:.1f} %" + (f" ± {100 * se:.1f}" if se is not None else "")
