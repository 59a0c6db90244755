"""Reading a card's fields: class names, the results of sections that succeeded, counted percentages."""

from typing import Any

from inspectnet.core.tables import format_percent, format_value

MAX_CLASS_NAMES = 50


def class_label(doc: dict[str, Any], c: int) -> str:
    names = doc["model"]["class_names"]
    return names[c] if 0 <= c < len(names) else str(c)


def ok_result(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = doc["sections"].get(name)
    return sec["result"] if sec and sec.get("status") == "ok" else None


def counted(fraction: float | None, n: int | None) -> str:
    """``94.3 % (n = 300)``."""
    return format_percent(fraction) + (f" (n = {n:,})" if n is not None else "")


def ratio_text(r: dict[str, Any]) -> str:
    """rA, or why it is undefined."""
    return format_value(r["rA"]) if r.get("rA") is not None else f"undefined ({r.get('rA_undefined', 'n/a')})"
