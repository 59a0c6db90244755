"""Which family of int8 kernels this CPU runs, and the check that an int8 file was built for it.

ONNX Runtime's fused u8 × s8 kernels compute differently by CPU: on x86 with AVX2 but without VNNI they add
pairs of products in 16 bits (VPMADDUBSW) and clip what does not fit, so 8-bit weights lose accuracy there and
inspectnet quantizes them to 7 bits; with VNNI (AVX-512 VNNI or AVX-VNNI) products are summed in 32 bits and
8-bit weights are exact. An int8 file records the family it was built for (:data:`KEY_INT8_CPU`); running it on
another family is warned about, with what it costs there.

    >>> int8_cpu_family("/proc/cpuinfo") in FAMILIES
    True
"""

import json
import warnings
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
KEY_INT8_CPU = "inspectnet.int8_cpu"  # metadata_props key: JSON {"family", "weight_bits", "cpu"}
FAMILIES = ("x86-vnni", "x86-avx2", "other")
_CONSEQUENCE = {
    "x86-avx2": "its 8-bit weights make this CPU's u8 x s8 kernels clip pairs of products (no VNNI): the int8 "
                "logits move away from fp32; re-export with --int8 on this CPU (7-bit weights)",
    "x86-vnni": "its 7-bit weights were chosen for CPUs whose kernels clip 8-bit products; this CPU adds them "
                "exactly, so a re-export here (8-bit weights) agrees more closely with fp32",
    "other": "its weight precision was chosen for another CPU's int8 kernels; check agreement with fp32 here",
}


def _read(cpuinfo: str | Path | None) -> str:
    """The CPU description (``CPUINFO`` when None, looked up at call time); empty when it cannot be read."""
    try:
        return Path(CPUINFO if cpuinfo is None else cpuinfo).read_text()
    except OSError:
        return ""


def _flags(cpuinfo: str | Path | None) -> set[str] | None:
    text = _read(cpuinfo)
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), None)


def int8_cpu_family(cpuinfo: str | Path | None = None) -> str:
    r"""The int8 kernel family of the CPU described by ``cpuinfo``: "x86-vnni", "x86-avx2" or "other".

    Args:
        cpuinfo: a Linux ``/proc/cpuinfo``-style file (default :data:`CPUINFO`); unreadable or without flags means "other".

    Returns:
        "x86-vnni" (avx512_vnni or avx_vnni), "x86-avx2" (avx2 without VNNI: 8-bit products clip), else "other".

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "cpuinfo"
        >>> _ = f.write_text("flags : fpu sse2 avx2 fma\n"); int8_cpu_family(f)
        'x86-avx2'
    """
    flags = _flags(cpuinfo) or set()
    if flags & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    return "x86-avx2" if "avx2" in flags else "other"


def cpu_model(cpuinfo: str | Path | None = None) -> str:
    """The CPU's model name from ``cpuinfo`` ("unknown" when it cannot be read).

    Args:
        cpuinfo: a Linux ``/proc/cpuinfo``-style file.

    Returns:
        The first ``model name`` value.

    Examples:
        >>> isinstance(cpu_model(), str)
        True
    """
    lines = _read(cpuinfo).splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def int8_cpu_record(weight_bits: int, cpuinfo: str | Path | None = None) -> str:
    """The metadata value stored under :data:`KEY_INT8_CPU` in an int8 file built on this CPU.

    ``family`` is the family the file is meant for (:func:`target_family`), ``cpu`` the CPU it was built on.

    Args:
        weight_bits: the weight precision the file was quantized with (7 or 8).
        cpuinfo: the CPU description read.

    Returns:
        JSON text: {"family", "weight_bits", "cpu"}.

    Examples:
        >>> json.loads(int8_cpu_record(8))["weight_bits"]
        8
    """
    return json.dumps({"family": target_family(weight_bits, int8_cpu_family(cpuinfo)), "weight_bits": weight_bits,
                       "cpu": cpu_model(cpuinfo)})


def native_weight_bits(family: str) -> int:
    """The int8 weight bits a kernel family computes exactly: 7 on x86 AVX2 without VNNI (8-bit pairs would clip), else 8.

    Args:
        family: one of :data:`FAMILIES`.

    Returns:
        7 or 8.

    Examples:
        >>> native_weight_bits("x86-avx2"), native_weight_bits("x86-vnni")
        (7, 8)
    """
    return 7 if family == "x86-avx2" else 8


def target_family(weight_bits: int, here: str) -> str:
    """The int8 kernel family a file with ``weight_bits`` weights, built on a ``here`` CPU, is meant for.

    The CPU's own family when the bits are the ones it needs (7 on x86 AVX2 without VNNI, 8 elsewhere); else
    the x86 family that needs them: 7-bit files built on a VNNI CPU are for AVX2 CPUs, and 8-bit files
    built on an AVX2 CPU for VNNI CPUs.

    Args:
        weight_bits: 7 or 8.
        here: the building CPU's family (:func:`int8_cpu_family`).

    Returns:
        One of :data:`FAMILIES`.

    Examples:
        >>> target_family(7, "x86-vnni"), target_family(8, "x86-vnni"), target_family(8, "other")
        ('x86-avx2', 'x86-vnni', 'other')
    """
    if weight_bits == native_weight_bits(here):
        return here
    return "x86-avx2" if weight_bits == 7 else "x86-vnni"


def check_int8_cpu(props: dict[str, str], path: str | Path, cpuinfo: str | Path | None = None) -> dict[str, Any] | None:
    """Warn when the int8 file ``path`` (metadata ``props``) was built for another int8 kernel family than this CPU's.

    Args:
        props: the file's metadata_props as a dict.
        path: the file, for the message.
        cpuinfo: this CPU's description.

    Returns:
        The stored record (None for files without one: fp32 files, or int8 files written before it existed).

    Examples:
        >>> check_int8_cpu({}, "m.onnx") is None
        True
    """
    if KEY_INT8_CPU not in props:
        return None
    built = json.loads(props[KEY_INT8_CPU])
    here = int8_cpu_family(cpuinfo)
    if built.get("family") != here:
        warnings.warn(f"{path} was quantized for {built.get('family')} CPUs ({built.get('weight_bits')}-bit "
                      f"weights, built on {built.get('cpu')}) but runs on a {here} CPU: {_CONSEQUENCE[here]}",
                      stacklevel=3)
    return built
