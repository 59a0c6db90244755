"""Predict with an exported ONNX classifier using ONNX Runtime, Pillow and numpy only (no torch).

Files written by :func:`inspectnet.export.onnx.export_onnx` carry their preprocessing (timm's data-config
keys) and class names in the ONNX ``metadata_props``, so this module needs nothing but the file::

    >>> clf = OnnxClassifier("model.onnx")                      # doctest: +SKIP
    >>> clf.predict(["cat.jpg"], topk=3)[0]["top"][0]["label"]   # doctest: +SKIP
    'tabby'

This module must never import torch: ``inspectnet run`` relies on it for a light, fast start.
"""

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from inspectnet.core.errors import InspectnetError
from inspectnet.runtime.int8_cpu import check_int8_cpu
from inspectnet.runtime.metadata import check_metadata
from inspectnet.runtime.preprocessing import IMAGE_SUFFIXES, collect_images, crop_view, load_image, preprocess

__all__ = ["EVIDENCE", "EVIDENCE_CLASSES", "FORMAT", "FORMAT_VERSION", "IMAGE_SUFFIXES", "KEY_CLASS_NAMES",
           "KEY_FORMAT", "KEY_MODEL", "KEY_PREPROCESSING", "LOGITS", "OnnxClassifier", "REMAINDER", "collect_images",
           "crop_view", "default_providers", "import_ort", "load_image", "make_session", "preprocess", "read_metadata",
           "softmax"]

FORMAT = "inspectnet-onnx"
FORMAT_VERSION = 1
# metadata_props keys (string values; JSON where structured)
KEY_FORMAT = "inspectnet.format"
KEY_PREPROCESSING = "inspectnet.preprocessing"
KEY_CLASS_NAMES = "inspectnet.class_names"
KEY_MODEL = "inspectnet.model"
# output names; the evidence outputs exist only in files exported with --evidence, the remainder (the
# input-dependent part of each evidence class's logit that no position carries) only for token transformers
LOGITS, EVIDENCE, EVIDENCE_CLASSES, REMAINDER = "logits", "evidence", "evidence_classes", "remainder"


def import_ort():
    """Import onnxruntime, or fail with the install command (it is an optional extra).

    Returns:
        The ``onnxruntime`` module.

    Raises:
        InspectnetError: ONNX Runtime is not installed.

    Examples:
        >>> import_ort().__name__
        'onnxruntime'
    """
    try:
        import onnxruntime
    except ModuleNotFoundError as exc:
        raise InspectnetError("ONNX Runtime is not installed; install it with pip install 'inspectnet[cpu]' "
                              "(or 'inspectnet[gpu]' for CUDA)") from exc
    return onnxruntime


def default_providers(device: str = "auto") -> list[str]:
    """Execution providers for ``device`` (auto: CUDA when ONNX Runtime offers it, else CPU).

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        Provider names in order of preference.

    Raises:
        InspectnetError: ``device`` is unknown, or ``"cuda"`` where this ONNX Runtime has no CUDA provider.

    Examples:
        >>> default_providers("cpu")
        ['CPUExecutionProvider']
    """
    available = import_ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("auto", "cuda"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device == "cuda":
            raise InspectnetError("--device cuda asked for the CUDA provider, but this ONNX Runtime offers only "
                                  f"{', '.join(available)}; install 'inspectnet[gpu]' (onnxruntime-gpu)")
        return ["CPUExecutionProvider"]
    raise InspectnetError(f"--device {device!r} is unknown; expected auto, cpu or cuda")


def make_session(model: str | Path | bytes, *, providers: Sequence[str] | None = None,
                 threads: int | None = None, optimize: bool = True):
    """An ``InferenceSession`` with full graph optimisation; ``threads`` sets intra-op threads.

    ``optimize=False`` runs the graph as written (no fusion): an int8 QDQ file then computes its literal
    DequantizeLinear + float maths, the reference its fused int8 kernels should match.

    ONNX Runtime's ``WeightBiasQuantization`` pass is off: it gives a float-weight Conv fed by a
    DequantizeLinear per-tensor int8 weights at load time, i.e. it quantizes the nodes an int8 file keeps
    in fp32 (``--int8-keep-fp32``), which on a depthwise layer of EfficientNet-Lite0 cut top-1 agreement
    with fp32 from 87 % to 55 %.

    Args:
        model: an ONNX file or its bytes.
        providers: execution providers (default: :func:`default_providers`).
        threads: intra-op threads (ONNX Runtime's default when None).
        optimize: apply ONNX Runtime's graph optimisations.

    Returns:
        The ``onnxruntime.InferenceSession``.

    Raises:
        InspectnetError: ``threads`` is below 1, the file does not exist, or it is no loadable ONNX model.

    Examples:
        >>> make_session(b"not onnx")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: model bytes is not a loadable ONNX model: ...
    """
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if threads is not None and threads < 1:
        raise InspectnetError(f"--threads must be at least 1, got {threads}")
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    what = "model bytes" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):
        if not Path(model).is_file():
            raise InspectnetError(f"ONNX file {model} does not exist")
        model = str(model)
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=list(providers or default_providers()),
                                    disabled_optimizers=["WeightBiasQuantization"])
    except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InspectnetError(f"{what} is not a loadable ONNX model: {first}") from exc


def read_metadata(session) -> dict[str, Any]:
    """The inspectnet metadata of a session's model.

    Args:
        session: an ``onnxruntime.InferenceSession``.

    Returns:
        ``{"preprocessing", "class_names", "model"}`` as stored by the export.

    Raises:
        InspectnetError: the file carries no inspectnet metadata, or it is damaged.
    """
    props = session.get_modelmeta().custom_metadata_map
    if props.get(KEY_FORMAT, "").split("/")[0] != FORMAT:
        raise InspectnetError("this ONNX file was not written by inspectnet export (no inspectnet metadata); "
                              "it has no stored preprocessing or class names. Re-export it with "
                              "`inspectnet export MODEL --out FILE.onnx`")
    try:
        return {"preprocessing": json.loads(props[KEY_PREPROCESSING]),
                "class_names": json.loads(props[KEY_CLASS_NAMES]), "model": json.loads(props[KEY_MODEL])}
    except (KeyError, json.JSONDecodeError) as exc:
        raise InspectnetError(f"the inspectnet metadata of this ONNX file is damaged: {exc}") from exc


class OnnxClassifier:
    """An exported inspectnet classifier run by ONNX Runtime (CUDA provider when present).

    Args:
        path: an ONNX file written by ``inspectnet export``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`default_providers`).
        threads: intra-op threads (ONNX Runtime's default when None).

    Raises:
        InspectnetError: the file cannot be loaded, carries no (or inconsistent) inspectnet metadata, or has
            no ``logits`` output.

    Examples:
        >>> clf = OnnxClassifier("model.onnx")                     # doctest: +SKIP
        >>> clf.class_names[:2], clf.providers                     # doctest: +SKIP
        (['0', '1'], ['CPUExecutionProvider'])
        >>> logits = clf.logits(clf.preprocess_images([img]))       # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, device: str = "auto", threads: int | None = None):
        self.path = Path(path)
        self.session = make_session(self.path, providers=default_providers(device), threads=threads)
        meta = read_metadata(self.session)
        logits = next((o.shape for o in self.session.get_outputs() if o.name == LOGITS), [])
        check_metadata(self.path, meta, list(self.session.get_inputs()[0].shape), list(logits or []))
        check_int8_cpu(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.preprocessing: dict[str, Any] = meta["preprocessing"]
        self.class_names: list[str] = list(meta["class_names"])
        self.info: dict[str, Any] = meta["model"]
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = LOGITS
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_name not in self.output_names:
            raise InspectnetError(f"ONNX file {self.path} has no output named 'logits'")

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses, in order."""
        return list(self.session.get_providers())

    @property
    def takes_images(self) -> bool:
        """False for ``--head-only`` exports, which take penultimate features instead of images."""
        return self.info.get("input_kind", "image") == "image"

    def preprocess_images(self, images: Iterable[Image.Image]) -> np.ndarray:
        """PIL images (any size) -> (N, C, H, W) float32 batch with the stored preprocessing.

        Args:
            images: the pictures.

        Returns:
            The batch.

        Raises:
            InspectnetError: the file is a head-only export, which takes features, not images.
        """
        self._check_takes_images()
        return np.stack([preprocess(im, self.preprocessing) for im in images])

    def _check_takes_images(self) -> None:
        if not self.takes_images:
            raise InspectnetError(f"{self.path} is a head-only export: it takes penultimate features "
                                  f"(N, {self.info.get('input_shape', ['N', '?'])[1]}), not images")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Raw logits for a preprocessed batch (or features for head-only files).

        Args:
            x: the (N, C, H, W) batch of :meth:`preprocess_images`, or (N, D) features.

        Returns:
            The (N, num_classes) logits.
        """
        return self.session.run([self.output_name], {self.input_name: np.asarray(x, np.float32)})[0]

    @property
    def evidence_info(self) -> dict[str, Any] | None:
        """``{"k", "grid": [H, W], "offset": [per class]}`` for files exported with ``--evidence``, else None."""
        info = self.info.get("evidence")
        return info if info and EVIDENCE in self.output_names else None

    def _needs_evidence(self) -> dict[str, Any]:
        if self.evidence_info is None:
            raise InspectnetError(f"{self.path} has no evidence output; re-export it with "
                                  f"`inspectnet export MODEL --out FILE.onnx --evidence [K]`")
        return self.evidence_info

    def evidence(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, evidence maps and their classes for a preprocessed batch.

        Args:
            x: the (N, C, H, W) batch of :meth:`preprocess_images`.

        Returns:
            ``(logits (N, C), evidence maps (N, k, H, W), their classes (N, k))``.

        Raises:
            InspectnetError: the file was exported without ``--evidence``.
        """
        return self.evidence_with_offsets(x)[:3]

    def evidence_with_offsets(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`evidence` and each map's offset, so that Σ maps + offset = logit.

        Args:
            x: the (N, C, H, W) batch of :meth:`preprocess_images`.

        Returns:
            ``(logits, maps, classes, offsets (N, k))``: the offset is the file's constant of the map's
            class, plus the ``remainder`` output where the file has one.

        Raises:
            InspectnetError: the file was exported without ``--evidence``.
        """
        info = self._needs_evidence()
        names = [LOGITS, EVIDENCE, EVIDENCE_CLASSES] + ([REMAINDER] if REMAINDER in self.output_names else [])
        logits, maps, classes, *rest = self.session.run(names, {self.input_name: np.asarray(x, np.float32)})
        offset = np.asarray(info["offset"], dtype=np.float64)[classes]
        return logits, maps, classes, offset + rest[0] if rest else offset

    def explain(self, images: Sequence[str | Path | Image.Image], out: str | Path, *, batch_size: int = 32,
                names: Sequence[str] | None = None) -> dict[str, Any]:
        """Write the evidence overlays of the exported top-k classes for each image into ``out``.

        Images smaller than the evidence grid are refused before anything is written.

        Args:
            images: image files or PIL images.
            out: the output folder.
            batch_size: images per session run.
            names: labels of the images in the output (default: the path, or ``image#i`` for PIL images).

        Returns:
            The ``evidence.json`` document (see :func:`inspectnet.runtime.overlays.write_overlays`).

        Raises:
            InspectnetError: the file has no evidence output, or an image is smaller than the evidence grid.
        """
        from inspectnet.runtime.overlays import check_image_size, write_overlays

        info = self._needs_evidence()
        pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
        labels = list(names) if names is not None else [str(im) if not isinstance(im, Image.Image) else f"image#{i}"
                                                         for i, im in enumerate(images)]
        for name, im in zip(labels, pil):
            check_image_size(name, (im.size[1], im.size[0]), tuple(info["grid"]))
        items = []
        for start in range(0, len(pil), batch_size):
            chunk = pil[start:start + batch_size]
            logits, maps, classes, offsets = self.evidence_with_offsets(self.preprocess_images(chunk))
            for j, im in enumerate(chunk):
                view = np.asarray(crop_view(im, self.preprocessing).convert("RGB"))
                items.append({"name": labels[start + j], "view": view, "maps": maps[j], "classes": classes[j],
                              "logits": logits[j], "offset": offsets[j]})
        return write_overlays(out, items, self.class_names,
                              {"model": str(self.path), "engine": "onnxruntime", "providers": self.providers,
                               "k": int(info["k"]), "grid": list(info["grid"])})

    def predict(self, images: Sequence[str | Path | Image.Image], *, topk: int = 5, batch_size: int = 32,
                names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The top classes and their probabilities for image files or PIL images.

        Args:
            images: image files or PIL images.
            topk: classes per image.
            batch_size: images per session run.
            names: labels of the items in the output (default: the path, or ``image#i`` for PIL images).

        Returns:
            ``[{"image", "top": [{"index", "label", "prob"}]}]``, one item per image, classes by falling probability.

        Raises:
            InspectnetError: ``topk`` or ``batch_size`` is below 1, or the file is a head-only export.
        """
        if topk < 1 or batch_size < 1:
            raise InspectnetError(f"--topk and --batch-size must be at least 1, got {topk} and {batch_size}")
        self._check_takes_images()
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pil = [im if isinstance(im, Image.Image) else load_image(im) for im in chunk]
            probs = softmax(self.logits(self.preprocess_images(pil)))
            for offset, row in enumerate(probs):
                item = chunk[offset]
                name = (names[start + offset] if names is not None else
                        str(item) if not isinstance(item, Image.Image) else f"image#{start + offset}")
                results.append({"image": name, "top": self._top(row, topk)})
        return results

    def _top(self, probs: np.ndarray, topk: int) -> list[dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[:min(topk, len(probs))]
        return [{"index": int(i), "label": self._label(int(i)), "prob": float(probs[i])} for i in order]

    def _label(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64.

    Args:
        logits: an (N, C) array.

    Returns:
        The (N, C) probabilities; each row sums to 1.

    Examples:
        >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
        [[0.5, 0.5], [1.0, 0.0]]
    """
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
