"""inspectnet: post-hoc inspection of pretrained image classifiers.

The main entry points::

    from inspectnet import load_model, load_data, run_probe, ProbeRecord, Probe
"""

__version__ = "0.1.0"

from inspectnet.errors import InspectnetError

# Public names are imported on first use (PEP 562), so that torch-free parts such as
# inspectnet.onnx_runtime (used by `inspectnet run`) do not pull in torch through this package.
_LAZY = {"load_data": "inspectnet.data", "Probe": "inspectnet.probes", "ProbeRecord": "inspectnet.record",
         "run_probe": "inspectnet.record", "ZooModel": "inspectnet.zoo", "load_model": "inspectnet.zoo",
         "save_model": "inspectnet.zoo", "OnnxClassifier": "inspectnet.onnx_runtime",
         "export_onnx": "inspectnet.export"}


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
