"""What ``inspectnet export`` is asked to do (:class:`ExportOptions`), free of torch.

The command line generates its options from it without importing the library.
"""

import dataclasses

from inspectnet.core.options import option, validate


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """The options of an export, checked when built.

    They are the arguments of :func:`inspectnet.export.onnx.export_onnx` and of the int8 calibration data.

    Examples:
        >>> ExportOptions(calibration_limit=0)
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InvalidParameterError: calibration_limit= must be at least 1, got 0
    """

    opset: int | None = option(None, help="ONNX opset (default: the exporter's own)")
    exporter: str = option("auto", help="torch.onnx exporter (auto: dynamo, and torchscript where dynamo cannot convert "
                                        "the model; the report says which wrote the file)",
                           choices=("auto", "dynamo", "torchscript"))
    head_only: bool = option(False, help="export only the head (penultimate features -> logits), e.g. a decomposed "
                                         "head")
    int8: bool = option(False, help="also write <out stem>.int8.onnx: static QDQ int8 calibrated on --calibration")
    calibration: str | None = option(None, help="real images for int8 calibration (data spec)", metavar="DATA")
    calibration_limit: int = option(256, help="calibration samples", minimum=1)
    int8_keep_fp32: str = option("", help="graph nodes (Conv/Gemm/MatMul names) left in fp32 in the int8 file, e.g. "
                                          "the ones benchmarks/int8_sensitivity.py finds most sensitive",
                                 metavar="NODE[,NODE]")
    int8_agreement: float | None = option(None, help="keep the most sensitive Conv/Gemm/MatMul nodes in fp32 (measured "
                                                     "on the calibration data) until int8's top-1 agrees with fp32's "
                                                     "on this fraction of the fp32-stable calibration inputs, e.g. 0.99",
                                          above=0, maximum=1, metavar="FRACTION")
    int8_max_fp32: int = option(4, help="at most this many nodes kept in fp32 by --int8-agreement (each costs speed)",
                                minimum=0)
    int8_weight_bits: int | None = option(None, help="int8 weight precision: 7 for x86 CPUs with AVX2 but no VNNI "
                                                     "(their kernels clip 8-bit products), 8 elsewhere (default: "
                                                     "what this CPU needs)", choices=(7, 8))
    eval_data: str | None = option(None, help="data for int8 top-1 agreement / accuracy (default: the calibration "
                                              "data)", metavar="DATA")
    eval_limit: int = option(500, help="evaluation samples", minimum=1)
    evidence: int | None = option(None, help="top-K classes of the 'evidence' output", minimum=1, cli=False)
    threads: int = option(1, help="threads for torch AND ONNX Runtime when timing (kept equal)", minimum=1)
    no_latency: bool = option(False, help="skip the latency measurement")
    device: str = option("auto", help="ONNX Runtime provider for the gate: auto, cpu, cuda")
    skip_bad: bool = option(False, help="skip unreadable calibration images")
    force: bool = option(False, help="overwrite existing output files")

    def __post_init__(self) -> None:
        validate(self)
