"""inspectnet: post-hoc inspection of pretrained image classifiers.

The main entry points::

    from inspectnet import load_model, load_data, run_probe, ProbeRecord, Probe
"""

__version__ = "0.1.0"

from inspectnet.data import load_data  # noqa: E402
from inspectnet.errors import InspectnetError  # noqa: E402
from inspectnet.probes import Probe  # noqa: E402
from inspectnet.record import ProbeRecord, run_probe  # noqa: E402
from inspectnet.zoo import ZooModel, load_model, save_model  # noqa: E402

__all__ = ["InspectnetError", "Probe", "ProbeRecord", "ZooModel", "__version__", "load_data", "load_model",
           "run_probe", "save_model"]
