"""inspectnet: post-hoc inspection of pretrained image classifiers.

The main calls are importable from the package itself, e.g.::

    from inspectnet import load_model, load_data, run_probe, fit_influence, decompose_model, run_audit

They are imported on first use (PEP 562): ``import inspectnet`` alone does not import torch, so
torch-free parts such as :mod:`inspectnet.runtime.classifier` (``inspectnet run``) stay light.
"""

from inspectnet.core.errors import InspectnetError
from inspectnet.core.version import __version__

# public name -> the module that defines it (one home per name; the layout is in docs/architecture.md)
_LAZY = {
    "load_data": "inspectnet.data", "ImageDataset": "inspectnet.data",
    "load_concepts": "inspectnet.data.concepts",
    "ZooModel": "inspectnet.models.zoo", "load_model": "inspectnet.models.zoo", "save_model": "inspectnet.models.zoo",
    "list_layers": "inspectnet.models.layers", "predict": "inspectnet.models.predict",
    "Probe": "inspectnet.probe.hooks", "ProbeRecord": "inspectnet.probe.record", "run_probe": "inspectnet.probe.recorder",
    "InfluenceMap": "inspectnet.analysis.heads.influence", "fit_influence": "inspectnet.analysis.heads.influence",
    "decompose_model": "inspectnet.analysis.heads.decompose", "slim_model": "inspectnet.analysis.heads.slim",
    "extract_rules": "inspectnet.analysis.rules.tree", "write_rules": "inspectnet.analysis.rules.tree",
    "sparsity_metrics": "inspectnet.analysis.sparsity", "record_sparsity": "inspectnet.analysis.sparsity",
    "linear_probes": "inspectnet.analysis.linprobe",
    "dissect": "inspectnet.analysis.dissect.dissection", "write_dissection": "inspectnet.analysis.dissect.pages",
    "make_plugin": "inspectnet.plugins", "describe_plugins": "inspectnet.plugins",
    "train": "inspectnet.training.loop", "TrainConfig": "inspectnet.training.loop", "evaluate": "inspectnet.training.loop",
    "finetune": "inspectnet.training.finetune", "load_finetuned": "inspectnet.training.finetune",
    "export_onnx": "inspectnet.export.onnx", "OnnxClassifier": "inspectnet.runtime.classifier",
    "load_card": "inspectnet.reports.card", "write_card": "inspectnet.pipelines.audit.card",
    "run_decomposition": "inspectnet.pipelines.decompose",
    "run_audit": "inspectnet.pipelines.audit", "AuditConfig": "inspectnet.pipelines.audit",
    "class_evidence": "inspectnet.analysis.explain.evidence", "explain_images": "inspectnet.pipelines.explain",
    "explanation_quality": "inspectnet.pipelines.explain",
    "compare": "inspectnet.pipelines.compare", "expand_methods": "inspectnet.pipelines.compare",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inspectnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AuditConfig", "ImageDataset", "InfluenceMap", "InspectnetError", "OnnxClassifier", "Probe", "ProbeRecord",
           "TrainConfig", "ZooModel", "__version__", "class_evidence", "compare", "decompose_model", "describe_plugins",
           "dissect", "evaluate", "expand_methods", "explain_images", "explanation_quality", "export_onnx",
           "extract_rules", "finetune", "fit_influence", "linear_probes",
           "list_layers", "load_card", "load_concepts", "load_data", "load_finetuned", "load_model", "make_plugin",
           "predict", "record_sparsity", "run_audit", "run_decomposition", "run_probe", "save_model", "slim_model",
           "sparsity_metrics", "train", "write_card", "write_dissection", "write_rules"]
