"""inspectnet: post-hoc inspection of pretrained image classifiers.

The main entry points::

    from inspectnet import load_model, load_data, run_probe, ProbeRecord, Probe
"""

from inspectnet.core.errors import InspectnetError
from inspectnet.core.version import __version__

# Public names are imported on first use (PEP 562), so that torch-free parts such as
# inspectnet.runtime.classifier (used by `inspectnet run`) do not pull in torch through this package.
_LAZY = {"load_data": "inspectnet.data", "Probe": "inspectnet.probe.hooks", "ProbeRecord": "inspectnet.probe.record",
         "run_probe": "inspectnet.probe.record", "ZooModel": "inspectnet.models.zoo", "load_model": "inspectnet.models.zoo",
         "save_model": "inspectnet.models.zoo", "OnnxClassifier": "inspectnet.runtime.classifier",
         "export_onnx": "inspectnet.export.onnx"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inspectnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["InspectnetError", "OnnxClassifier", "Probe", "ProbeRecord", "ZooModel", "__version__", "export_onnx",
           "load_data", "load_model", "run_probe", "save_model"]
