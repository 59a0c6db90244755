"""The card's first screen.

How accurate the model is on this data (over all its classes and among the classes with data), what it relies on,
whether its explanations can be trusted, and what the data cannot show.

Every number here is one the sections below derive too (the same card.json fields), so the first screen
never disagrees with them.
"""

from typing import Any

from inspectnet.core.tables import format_percent
from inspectnet.reports.blocks import Block, BulletList, Figure, Paragraph, Section, Table
from inspectnet.reports.card.caveats import data_caveats, near_synonyms
from inspectnet.reports.card.fields import class_label, counted, ok_result, ratio_text

MAX_CLASSES_SHOWN = 5  # classes whose influential features the first screen names


def summary_section(doc: dict[str, Any]) -> Section:
    """The "At a glance" section, first on the card.

    Args:
        doc: a card document (card.json).

    Returns:
        The section: what was audited, the headline accuracies side by side, why a low decomposed accuracy is
        low, one picture of what the model relies on, the trust verdict and the data's caveats.

    >>> doc = {"model": {"spec": "m", "class_names": []}, "data": {"in_sample": True, "eval": "d"}, "sections": {}}
    >>> summary_section(doc).title
    'At a glance'
    """
    blocks: list[Block] = [Paragraph(_audited(doc))]
    rows = accuracy_rows(doc)
    if rows:
        blocks.append(Table(["how accurate", "value", "how to read it"], rows))
    blocks += [Paragraph(text) for text in [decomposed_note(doc)] if text]
    blocks += _relies_on(doc)
    blocks.append(Paragraph("Can its explanations be trusted? " + trust_text(doc)))
    limits = data_caveats(doc)
    if limits:
        blocks += [Paragraph("What the data cannot show (all caveats at the end):"), BulletList(limits)]
    return Section("At a glance", blocks, anchor="sec-summary")


def _audited(doc: dict[str, Any]) -> str:
    probe = ok_result(doc, "probe")
    d = doc["data"]
    n = f", {probe['eval']['samples']:,} samples" if probe else ""
    return (f"{doc['model']['spec']} ({doc['model'].get('num_classes', '?')} classes), evaluated on {d['eval']}{n}"
            + (", in-sample (the data it was fitted on)." if d["in_sample"] else f"; analyses fitted on {d['train']}."))


def among_present(doc: dict[str, Any]) -> tuple[float | None, int, int] | None:
    """The accuracy among the classes with data, how many classes have data, and the eval samples.

    None when every model class has data or the probe did not record it.

    Args:
        doc: a card document.

    Returns:
        The triple, or None.
    """
    probe = ok_result(doc, "probe")
    if not probe or "classes_present" not in probe.get("train", {}):
        return None
    present = set(probe["train"]["classes_present"]) | set(probe["eval"]["classes_present"])
    if len(present) >= probe["num_classes"]:
        return None
    if "accuracy_among_present" in probe:
        return probe["accuracy_among_present"], len(present), probe["eval"]["samples"]
    # cards of earlier audits: the decomposition measured it where its fitted classes are all the classes with data
    fitted = (ok_result(doc, "decomposition") or {}).get("among_fitted_classes") or {}
    if fitted.get("num_classes") == len(present) and fitted.get("samples") == probe["eval"]["samples"]:
        return fitted["accuracy_full"], len(present), fitted["samples"]
    return None


def accuracy_rows(doc: dict[str, Any]) -> list[list[str]]:
    """The first screen's accuracies: all classes and among the classes with data, the model and its decomposed head.

    Args:
        doc: a card document.

    Returns:
        Rows of (what, value with n, how to read it).
    """
    probe, dec = ok_result(doc, "probe"), ok_result(doc, "decomposition")
    if not probe or probe.get("accuracy") is None:
        return []
    n, num = probe["eval"]["samples"], probe.get("num_classes", doc["model"]["num_classes"])
    split = probe["eval"]["data"] + (" (in-sample)" if probe["eval"]["in_sample"] else "")
    among = among_present(doc)
    rows = [[f"accuracy over all {num} classes", counted(probe["accuracy"], n),
             f"top-1 on {split}; higher is better"]]
    if among:
        synonyms = " (see near-synonym classes below)" if near_synonyms(doc) else ""
        rows.append([f"accuracy among the {among[1]} classes with data", counted(among[0], among[2]),
                     f"top-1 when the model chooses among these {among[1]} classes only; the gap to the all-class "
                     f"accuracy is samples the model gave to classes without data{synonyms}"])
    if dec and dec.get("accuracy_decomposed") is not None:
        rows.append([f"decomposed head (k2 = {dec['k2']}), all {dec.get('num_classes', num)} classes",
                     counted(dec["accuracy_decomposed"], n),
                     f"each class with data keeps {dec['k2']} of {dec['feature_dim']} features; closer to the "
                     f"model's {format_percent(dec.get('accuracy_full'))} is better"])
        fitted = dec.get("among_fitted_classes") or {}
        if dec.get("dense_classes") and fitted.get("samples"):
            rows.append([f"decomposed head among the {fitted['num_classes']} decomposed classes",
                         counted(fitted["accuracy_decomposed"], fitted["samples"]),
                         f"the model's accuracy among them {format_percent(fitted['accuracy_full'])}, rA "
                         f"{ratio_text(fitted)}: what decomposing costs, compared on equal terms"])
    return rows


def decomposed_note(doc: dict[str, Any]) -> str | None:
    """Why the decomposed head's all-class accuracy is low when classes without data keep dense rows.

    None when it is not lower than among the decomposed classes.

    Args:
        doc: a card document.

    Returns:
        One paragraph's text, or None.
    """
    dec = ok_result(doc, "decomposition")
    if not dec or not dense_rows_decide(dec):
        return None
    fitted = dec["among_fitted_classes"]
    return (f"Why the decomposed head scores {format_percent(dec['accuracy_decomposed'])} over all classes: only the "
            f"{fitted['num_classes']} classes with fitting data were decomposed (each keeps its {dec['k2']} "
            f"influential features); the other {dec['dense_classes']} classes have no data, keep their dense rows of "
            f"{dec['feature_dim']} features, outscore the decomposed rows and win most top-1 decisions. Among the "
            f"{fitted['num_classes']} decomposed classes the decomposed head scores "
            f"{format_percent(fitted['accuracy_decomposed'])} against the model's {format_percent(fitted['accuracy_full'])}"
            f" (rA {ratio_text(fitted)}): that is the number that says what decomposition costs.")


def dense_rows_decide(dec: dict[str, Any]) -> bool:
    """Whether the decomposed head's all-class accuracy is below its accuracy among the decomposed classes.

    The dense rows of classes without data outscore the decomposed rows.

    Args:
        dec: the decomposition section's result.

    Returns:
        True when the all-class number needs the explanation.
    """
    fitted = dec.get("among_fitted_classes") or {}
    if not dec.get("dense_classes") or not fitted.get("samples") or dec.get("accuracy_decomposed") is None:
        return False
    return dec["accuracy_decomposed"] < (fitted.get("accuracy_decomposed") or 0.0)


def _relies_on(doc: dict[str, Any]) -> list[Block]:
    """The influential features of the first classes with data, and one picture of them (or of an explained image)."""
    dec = ok_result(doc, "decomposition")
    blocks: list[Block] = []
    if dec and dec.get("per_class"):
        named = [f"{class_label(doc, p['class'])}: features {', '.join(map(str, p['features']))}"
                 for p in dec["per_class"][:MAX_CLASSES_SHOWN] if p["features"]]
        more = len(dec["per_class"]) - MAX_CLASSES_SHOWN
        blocks.append(Paragraph(
            f"What it relies on: {dec['union_size']} of its {dec['feature_dim']} penultimate features serve the "
            f"{len(dec['per_class'])} classes with data (the features most often among a class's top "
            f"{dec['k1']} contributions)" + (": " + "; ".join(named) + (f"; {more} more classes below" if more > 0 else "")
                                             if named else "") + "."))
    picture = _picture(doc)
    if picture:
        blocks.append(picture)
    return blocks


def _picture(doc: dict[str, Any]) -> Figure | None:
    """The first screen's one picture.

    A class's influential features with the image regions they respond to, else an explained image.
    """
    att = ok_result(doc, "attributions") or {}
    for c in att.get("classes", []):
        if c.get("path"):
            return Figure(c["path"], f"What the model relies on for {class_label(doc, c['class'])}: where its top "
                                     f"influential features ({', '.join(map(str, c['features']))}) respond on an image")
    for x in att.get("inputs", []):
        if x.get("path"):
            return Figure(x["path"], f"An explained image: label {x['label_name']}, predicted {x['prediction_name']}")
    return None


def trust_text(doc: dict[str, Any]) -> str:
    """Whether the card measured its explanations' quality, and the verdict.

    Args:
        doc: a card document.

    Returns:
        The verdict (from the trust section where the card has one, else from the explanation checks), or a
        sentence saying it was not measured.
    """
    trust = doc["sections"].get("trust")
    if trust is not None:
        if trust["status"] != "ok":
            return "The trust check failed (see its section for why)."
        text = _trust_section_text(trust["result"])
        sanity = _sanity_text(ok_result(doc, "explanations"))
        return text + (" " + sanity if sanity else " Whether the maps change when the model is randomised (the "
                                                     "sanity check) was not run: --explain-images N runs it.")
    r = ok_result(doc, "explanations")
    if not r:
        return ("Not measured: this audit did not check its explanations (--explain-images N compares them with "
                "random maps and runs the sanity check).")
    full = r["forms"][0]["name"]
    rows = [x for x in r["rows"] if x["form"] == full and x["status"] == "ok" and x.get("vs_random")]
    if not rows:
        return "Not measured: no explanation method could be compared with the random control."
    beats = [x["method"] for x in rows if x["vs_random"]["beats_control"]]
    images = rows[0]["vs_random"].get("paired_images", r["images"])
    text = (f"On {images} images, {len(beats)} of {len(rows)} methods beat random maps on both deletion and insertion"
            + (f" ({', '.join(beats)})" if beats else "") + ".")
    sanity = _sanity_text(r)
    return text + (" " + sanity if sanity else "")


def _trust_section_text(result: dict[str, Any]) -> str:
    """The trust stage's verdict: which methods beat the random control on both curves, on how many images."""
    methods = {m: v for m, v in result["methods"].items() if m != "random" and v.get("vs_random")}
    beats = [_METHOD_NAMES.get(m, m) for m, v in methods.items() if v["vs_random"]["beats_control"]]
    return (f"On {result['images']} evaluation images, {len(beats)} of {len(methods)} methods beat random maps on "
            f"both deletion and insertion" + (f" ({', '.join(beats)})" if beats else "") + ".")


def _sanity_text(explanations: dict[str, Any] | None) -> str | None:
    """How many methods pass the cascading-randomisation check on the full model, None where it was not run."""
    if not explanations:
        return None
    full = explanations["forms"][0]["name"]
    # the random control must fail the sanity check by design: it is no method to trust
    sanity = {m: v for m, v in explanations.get("sanity", {}).get(full, {}).get("methods", {}).items() if m != "random"}
    if not sanity:
        return None
    passed = [m for m, v in sanity.items() if v.get("passes")]
    return (f"{len(passed)} of {len(sanity)} pass the sanity check (their maps change when the model is randomised)"
            + (f": {', '.join(passed)}" if passed else "") + ". Trust a map only from a method that does both.")


_METHOD_NAMES = {"gradcam": "Grad-CAM", "evidence": "class evidence"}

