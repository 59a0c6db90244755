"""Caveats generated from what card.json records about the data: what the numbers cannot show.

Each caveat is derived from facts the audit measured (the probe stage's splits, classes, source photos
and per-class predictions), so a card warns exactly where its data calls for it.
"""

from typing import Any

from inspectnet.core.tables import format_percent
from inspectnet.reports.card.fields import MAX_CLASS_NAMES, class_label, ok_result

MAX_SYNONYM_CLASSES = 5  # classes whose near-synonym predictions a caveat lists


def data_caveats(doc: dict[str, Any]) -> list[str]:
    """What the data cannot show.

    In-sample numbers, crops of the same photos in both splits, classes without data, near-synonym classes the model
    prefers (the first screen lists these).

    Args:
        doc: a card document (card.json).

    Returns:
        One sentence per caveat that applies, most consequential first.

    >>> doc = {"data": {"in_sample": True}, "sections": {}, "model": {"class_names": []}}
    >>> data_caveats(doc)[0][:40]
    'All numbers are in-sample (no --eval dat'
    """
    probe = ok_result(doc, "probe") or {}
    everything = ["All numbers are in-sample (no --eval data): they overstate generalisation."] \
        if doc["data"]["in_sample"] else []
    return [*everything, *_same_photos(probe), *_classes_without_data(doc, probe),
            *[text for text in [near_synonyms(doc)] if text], *_in_sample(doc)]


def caveats(doc: dict[str, Any]) -> list[str]:
    """Every caveat of the card's Caveats section.

    The data's (:func:`data_caveats`), how the samples were chosen, failed sections, and what illustrations cannot
    prove.

    Args:
        doc: a card document.

    Returns:
        The caveats, one sentence each.
    """
    out = data_caveats(doc)
    probe = ok_result(doc, "probe")
    if probe and "available" in probe["train"]:
        subsets = [s for s in (probe["train"], probe["eval"]) if s["samples"] < s["available"]]
        if subsets:
            out.append("Evenly spread subsets were analysed (" + "; ".join(
                f"{s['samples']:,} of {s['available']:,} samples of {s['data']}" for s in subsets) + "), not the first N "
                "samples: `inspectnet run … --limit N` takes the first N, so its accuracy can differ from the card's.")
    elif doc["data"].get("limit") and not probe:
        out.append(f"At most {doc['data']['limit']} samples were used (--limit).")
    failed = [n for n, s in doc["sections"].items() if s["status"] != "ok"]
    if failed:
        out.append("Failed sections: " + ", ".join(failed) + " (see each section for why).")
    out.append("Attributions and receptive fields show a handful of images; they illustrate, they do not prove.")
    return out


def _in_sample(doc: dict[str, Any]) -> list[str]:
    """The numbers that are in-sample even with separate evaluation data."""
    if doc["data"]["in_sample"]:
        return []
    measured = []
    if ok_result(doc, "linear_probes") is not None:
        measured.append("the linear probes' train accuracy")
    if ok_result(doc, "rules") is not None:
        measured.append("the rules' support and confidence")
    if not measured:
        return []
    return [f"In-sample even with separate evaluation data: {' and '.join(measured)} are measured on the data "
            f"they were fitted on; read the evaluation columns."]


def _same_photos(probe: dict[str, Any]) -> list[str]:
    """The fitting and evaluation samples are crops of the same photos."""
    src = probe.get("sources")
    if not src or not src["shared"]:
        return []
    names = ", ".join(src["names"]) + (" …" if src["shared"] > len(src["names"]) else "")
    return [f"The fitting and evaluation samples are crops of the same {src['shared']} photos ({names}): every "
            f"number fitted on one split and scored on the other (linear probes, rules, the decomposed head) measures "
            f"how well crops of one photo are told apart from crops of another, close to an in-sample number, not "
            f"how the model does on new photos. Audit independent images for that."]


def _classes_without_data(doc: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """Fewer classes with data than the model has: what all-class and per-class numbers mean then."""
    if "classes_present" not in probe.get("train", {}):
        return []
    present = sorted(set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"]))
    if len(present) >= probe["num_classes"]:
        return []
    among = probe.get("accuracy_among_present")
    num, others = probe["num_classes"], probe["num_classes"] - len(present)
    also = f"; among the {len(present)} classes with data it is {format_percent(among)}" if among is not None else ""
    return [f"The data cover {len(present)} of the model's {num} classes: accuracy is top-1 over all {num} (a sample "
            f"given to any other class counts as wrong{also}), and per-class findings say nothing about the other "
            f"{others}."]


def near_synonyms(doc: dict[str, Any]) -> str | None:
    """The classes with data whose samples the model gives to a neighbouring class of the same kind.

    Such as tabby → tiger cat, with counts; None when there are none.

    Args:
        doc: a card document.

    Returns:
        One sentence, or None.
    """
    probe = ok_result(doc, "probe") or {}
    parts, kinds = [], []
    for row in probe.get("confusions", []):
        same = [x for x in row["instead"] if x["kind"]]
        if not same:
            continue
        parts.append(f"{class_label(doc, row['class'])} → " + ", ".join(
            f"{class_label(doc, x['class'])} ({x['count']} of {row['samples']})" for x in same))
        kinds += [k for k in dict.fromkeys(x["kind"] for x in same) if k not in kinds]
    if not parts:
        return None
    shown = "; ".join(parts[:MAX_SYNONYM_CLASSES]) + (" …" if len(parts) > MAX_SYNONYM_CLASSES else "")
    return (f"Near-synonym classes: the model names some samples by a neighbouring class of the same kind of object "
            f"({', '.join(kinds[:MAX_CLASS_NAMES])}): {shown}. Each counts as wrong in top-1 accuracy, though the "
            f"model may see the object well; Evaluation data shows where every class's predictions went.")
