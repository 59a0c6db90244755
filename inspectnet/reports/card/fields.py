"""Reading a card's fields: class names, the results of sections that succeeded, counted percentages."""

from typing import Any

from inspectnet.core.tables import format_percent, format_value

MAX_CLASS_NAMES = 50


def class_label(doc: dict[str, Any], c: int) -> str:
    """The model's name of class ``c`` (its index as text when out of range).

    Args:
        doc: the card document.
        c: a class index.

    Returns:
        The label.

    Examples:
        >>> class_label({"model": {"class_names": ["cat"]}}, 0), class_label({"model": {"class_names": []}}, 3)
        ('cat', '3')
    """
    names = doc["model"]["class_names"]
    return names[c] if 0 <= c < len(names) else str(c)


def ok_result(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The result of section ``name`` when it succeeded.

    Args:
        doc: the card document.
        name: the section's name.

    Returns:
        The section's result, or None when it is missing or failed.

    Examples:
        >>> ok_result({"sections": {"a": {"status": "failed"}}}, "a") is None
        True
    """
    sec = doc["sections"].get(name)
    return sec["result"] if sec and sec.get("status") == "ok" else None


def counted(fraction: float | None, n: int | None) -> str:
    """A percentage with its sample count, e.g. ``94.3 % (n = 300)``.

    Args:
        fraction: the fraction (None: ``n/a``).
        n: the number of samples (None: not shown).

    Returns:
        The text.

    Examples:
        >>> counted(0.943, 300)
        '94.3 % (n = 300)'
    """
    return format_percent(fraction) + (f" (n = {n:,})" if n is not None else "")


def ratio_text(r: dict[str, Any]) -> str:
    """rA, or why it is undefined.

    Args:
        r: a result with ``rA`` (and ``rA_undefined`` when it is None).

    Returns:
        The text.

    Examples:
        >>> ratio_text({"rA": 0.5}), ratio_text({"rA": None, "rA_undefined": "no class"})
        ('0.5000', 'undefined (no class)')
    """
    return format_value(r["rA"]) if r.get("rA") is not None else f"undefined ({r.get('rA_undefined', 'n/a')})"
