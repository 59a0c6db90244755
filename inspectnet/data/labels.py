"""A dataset's classes mapped onto a model's class indices: by name, never by silent folder order.

A pretrained model has its own label space: folder ``n02123045`` (or ``tabby``) must become class
281 of an ImageNet model, not class 0. :func:`align_classes` matches each data class, in this
order, by:

1. an explicit class map (``--class-map FILE.json``: ``{"folder": model index or class name}``);
2. the model's own class names (case-, ``_``-, ``-``- and space-insensitive), e.g. the names an
   inspectnet model saved from its training folders;
3. for 1000-class ImageNet models, the WordNet id (``n02123045``) or any ImageNet synonym
   (``tabby``, ``tabby cat``), read from the text files timm ships.

A model whose class names are placeholders (``class_0`` …, a fresh head) and data with as many
classes keep index order, and the mapping says so. Anything else that does not match is refused
with one line naming the unmatched classes and the closest model class names; so are names that
match several classes, two data classes on one model class (unless the class map lists both) and
class-map indices outside the model.

This module never imports torch or timm (``inspectnet run`` uses it): timm's files are located
with ``importlib.util.find_spec``, which does not import the package.

>>> m = align_classes(["n02123045", "Egyptian_cat"], imagenet_names())
>>> m.indices, m.via
([281, 285], ['WordNet id', 'model class name'])
>>> m.apply(np.array([1, 0, -1])).tolist()
[285, 281, -1]
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspectnet.core.errors import InspectnetError

INDEX_ORDER = "index order"
BY_CLASS_MAP = "class map"
BY_MODEL_NAME = "model class name"
BY_WNID = "WordNet id"
BY_SYNONYM = "ImageNet synonym"
_WNID = re.compile(r"n\d{8}")
_TIMM_INFO = ("data", "_info")


def normalize(name: str) -> str:
    """The key names are compared by: case, spaces, ``_`` and ``-`` ignored, Unicode composed (NFC).

    Args:
        name: a class name.

    Returns:
        The comparison key.

    Examples:
        >>> normalize("Egyptian_cat") == normalize("egyptian cat") == normalize("EgyptianCat")
        True
        >>> normalize("cafe\u0301") == normalize("caf\u00e9")  # a folder name typed on macOS (NFD) and on Linux (NFC)
        True
    """
    return re.sub(r"[\s_\-]+", "", unicodedata.normalize("NFC", name).casefold())


def placeholder_names(num_classes: int) -> list[str]:
    """``class_0`` … ``class_{C-1}``: the names of a head that was never told its classes.

    Args:
        num_classes: the number of classes C.

    Returns:
        The C placeholder names.

    Examples:
        >>> placeholder_names(2)
        ['class_0', 'class_1']
    """
    return [f"class_{i}" for i in range(num_classes)]


def is_placeholder(names: Sequence[str]) -> bool:
    """Whether ``names`` are exactly the placeholder names of :func:`placeholder_names`.

    Args:
        names: class names.

    Returns:
        True for ``class_0`` … ``class_{C-1}`` in order.

    Examples:
        >>> is_placeholder(["class_0", "class_1"]), is_placeholder(["cat", "dog"])
        (True, False)
    """
    return list(names) == placeholder_names(len(names))


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, tuple[str, ...]], ...] | None:
    """ImageNet-1k in model index order, from timm's ``imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``.

    Returns:
        ``(WordNet id, synonyms)`` per class; None when timm is not installed.

    Examples:
        >>> imagenet_synsets()[281][0]
        'n02123045'
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*_TIMM_INFO)
    try:
        wnids = (folder / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
        lemmas = dict(line.split("\t", 1) for line in
                      (folder / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines() if "\t" in line)
    except OSError:
        return None
    return tuple((w, tuple(s.strip() for s in lemmas.get(w, w).split(","))) for w in wnids)


def imagenet_names() -> list[str]:
    """The 1000 ImageNet class names (first synonym of each), as timm's ``ImageNetInfo`` describes them.

    Returns:
        The names in model index order.

    Raises:
        InspectnetError: timm is not installed.

    Examples:
        >>> imagenet_names()[281]
        'tabby'
    """
    synsets = imagenet_synsets()
    if synsets is None:
        raise InspectnetError("ImageNet class names ship with timm, which is not installed")
    return [names[0] for _, names in synsets]


def shared_kind(model_classes: Sequence[str], a: int, b: int) -> str | None:
    """The kind of object two ImageNet classes share, read from their synonyms.

    The last word common to a synonym of each, as ``cat`` in *tabby cat* and *tiger cat*; None when they share none or
    the model's classes are not ImageNet's (other names carry no such convention). ImageNet has several classes for one
    kind of object, and a model that names a photo by a neighbouring class of the same kind is naming, not failing to
    see.

    Args:
        model_classes: the model's class names.
        a: one class index.
        b: the other class index.

    Returns:
        The shared word, or None.

    >>> names = imagenet_names()
    >>> shared_kind(names, 281, 282), shared_kind(names, 657, 517), shared_kind(["tabby cat", "tiger cat"], 0, 1)
    ('cat', None, None)
    """
    synsets = imagenet_synsets() if len(model_classes) == 1000 else None
    if a == b or synsets is None or list(model_classes) != [names[0] for _, names in synsets]:
        return None

    def kinds(c: int) -> set[str]:
        return {re.split(r"[\s_\-]+", n.casefold().strip())[-1] for n in synsets[c][1] if n.strip()}

    common = sorted(kinds(a) & kinds(b))
    return common[0] if common else None


@dataclasses.dataclass(frozen=True)
class LabelMapping:
    """Where each data class lands among the model's classes (see :func:`align_classes`).

    ``data_classes[k]`` (the data's label k) is model class ``indices[k]``, matched ``via[k]``.
    """

    data_classes: list[str]
    indices: list[int]
    via: list[str]
    model_classes: list[str]

    @property
    def index_order(self) -> bool:
        """True when the data's classes were taken in index order (placeholder model names)."""
        return bool(self.via) and all(v == INDEX_ORDER for v in self.via)

    @property
    def method(self) -> str:
        """How the classes were matched: ``"index order"`` or ``"by name"``."""
        return INDEX_ORDER if self.index_order else "by name"

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Data labels -> model class indices (``-1``, unlabelled, stays ``-1``).

        Args:
            labels: data labels (indices of ``data_classes``, or -1).

        Returns:
            The model class indices, same shape.

        Examples:
            >>> align_classes(["b", "a"], ["a", "b"]).apply(np.array([0, 1, -1])).tolist()
            [1, 0, -1]
        """
        labels = np.asarray(labels, dtype=np.int64)
        lookup = np.asarray([*self.indices, -1], dtype=np.int64)  # index -1 reads the last entry
        return lookup[labels]

    def identity(self) -> dict[str, Any]:
        """What keys a probe record: the pairs and how many classes the model has.

        Returns:
            ``{"method", "classes": {data class: model index}, "num_model_classes"}``.
        """
        return {"method": self.method, "classes": dict(zip(self.data_classes, self.indices)),
                "num_model_classes": len(self.model_classes)}

    def describe(self) -> dict[str, Any]:
        """The mapping as the manifest and the card show it, one row per data class.

        Returns:
            ``{"method", "num_model_classes", "classes": [{"data", "index", "model_class", "via"}]}``.
        """
        return {"method": self.method, "num_model_classes": len(self.model_classes),
                "classes": [{"data": d, "index": i, "model_class": self.model_classes[i], "via": v}
                            for d, i, v in zip(self.data_classes, self.indices, self.via)]}


class _Vocabulary:
    """Every name that points at a model class.

    Its own names, and ImageNet ids and synonyms when the model's names are ImageNet's.
    """

    def __init__(self, model_classes: Sequence[str]):
        self.model_classes = list(model_classes)
        self.by_name = _index(enumerate(self.model_classes))
        synsets = imagenet_synsets() if len(self.model_classes) == 1000 else None
        self.imagenet = synsets is not None and self.model_classes == [names[0] for _, names in synsets]
        self.by_wnid: dict[str, int] = {}
        self.by_synonym: dict[str, set[int]] = {}
        if self.imagenet:
            self.by_wnid = {w: i for i, (w, _) in enumerate(synsets)}
            self.by_synonym = _index((i, s) for i, (_, names) in enumerate(synsets) for s in names)

    def lookup(self, name: str) -> tuple[set[int], str]:
        """Candidate indices of ``name`` and how they were found (empty set: no match)."""
        if name in self.by_wnid:
            return {self.by_wnid[name]}, BY_WNID
        key = normalize(name)
        if key in self.by_name:
            return self.by_name[key], BY_MODEL_NAME
        return self.by_synonym.get(key, set()), BY_SYNONYM

    def label(self, index: int) -> str:
        wnid = next((w for w, i in self.by_wnid.items() if i == index), None)
        return f"{self.model_classes[index]} ({index}{', ' + wnid if wnid else ''})"

    def closest(self, name: str, n: int = 3) -> list[str]:
        """The model classes whose names (or synonyms) are closest to ``name``."""
        keys = {**{k: min(v) for k, v in self.by_synonym.items()}, **{k: min(v) for k, v in self.by_name.items()}}
        near = difflib.get_close_matches(normalize(name), list(keys), n=n * 3, cutoff=0.5)
        seen: list[int] = []
        for k in near:
            if keys[k] not in seen:
                seen.append(keys[k])
        return [self.label(i) for i in seen[:n]]


def _index(pairs) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for i, name in pairs:
        out.setdefault(normalize(name), set()).add(i)
    return out


def align_classes(data_classes: Sequence[str], model_classes: Sequence[str], *,
                  class_map: Mapping[str, int | str] | None = None, strict: bool = True,
                  what: str = "data") -> LabelMapping:
    """Map each of ``data_classes`` onto an index of ``model_classes`` (rules in the module doc).

    Args:
        data_classes: the data's class names (folder names, WordNet ids, ...).
        model_classes: the model's class names.
        class_map: data class -> model index or name, for classes no name or id matches.
        strict: refuse ``class_map`` keys that are no data class; False for evaluation data, which may
            hold only some of the classes the map names.
        what: names the data in error messages.

    Returns:
        The mapping.

    Raises:
        InspectnetError: ``class_map`` names classes the data lacks (when ``strict``), a name matches several
            model classes, or a data class matches none.

    Examples:
        >>> align_classes(["a", "b"], placeholder_names(2)).method
        'index order'
        >>> align_classes(["cat"], ["dog", "cats"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: data: class 'cat' (closest: cats (1)) matches no class of the model ...
    """
    data_classes, model_classes = list(data_classes), list(model_classes)
    class_map = dict(class_map or {})
    vocab = _Vocabulary(model_classes)
    stray = sorted(set(class_map) - set(data_classes))
    if stray and strict:
        raise InspectnetError(f"--class-map names {_quoted(stray)}, which {what} does not have; its classes are "
                              f"{_quoted(data_classes, 8)}")
    indices: list[int | None] = []
    via: list[str] = []
    ambiguous: list[str] = []
    for name in data_classes:
        if name in class_map:
            indices.append(_from_class_map(name, class_map[name], vocab))
            via.append(BY_CLASS_MAP)
            continue
        found, how = vocab.lookup(name)
        indices.append(min(found) if len(found) == 1 else None)
        via.append(how)
        if len(found) > 1:
            ambiguous.append(f"{name!r} could be {' or '.join(vocab.label(i) for i in sorted(found))}")
    if ambiguous:
        raise InspectnetError(f"{what}: {'; '.join(ambiguous)}; name the folder by its WordNet id or pass "
                              f"--class-map FILE.json")
    unmatched = [n for n, i in zip(data_classes, indices) if i is None]
    if unmatched and not class_map and is_placeholder(model_classes) and len(data_classes) == len(model_classes):
        return LabelMapping(data_classes, list(range(len(data_classes))), [INDEX_ORDER] * len(data_classes),
                            model_classes)
    if unmatched:
        raise InspectnetError(_unmatched_message(unmatched, len(data_classes), vocab, what, bool(class_map)))
    _refuse_duplicates(data_classes, indices, class_map, vocab, what)
    return LabelMapping(data_classes, [int(i) for i in indices], via, model_classes)


def _from_class_map(name: str, value: Any, vocab: _Vocabulary) -> int:
    size = len(vocab.model_classes)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InspectnetError(f"--class-map: {name!r} maps to {value!r}; expected a model class index or name")
    if isinstance(value, int):
        if not 0 <= value < size:
            raise InspectnetError(f"--class-map: {name!r} maps to index {value}, but the model has {size} classes "
                                  f"(0-{size - 1})")
        return value
    found, _ = vocab.lookup(value)
    if len(found) != 1:
        why = "matches no class of the model" if not found else \
            "is ambiguous: " + " or ".join(vocab.label(i) for i in sorted(found))
        near = "" if found else f" (closest: {', '.join(vocab.closest(value)) or 'none'})"
        raise InspectnetError(f"--class-map: {name!r} maps to {value!r}, which {why}{near}")
    return min(found)


def _refuse_duplicates(data_classes: list[str], indices: list[int | None], class_map: dict[str, Any],
                       vocab: _Vocabulary, what: str) -> None:
    groups: dict[int, list[str]] = {}
    for name, i in zip(data_classes, indices):
        groups.setdefault(int(i), []).append(name)
    clashes = [(i, names) for i, names in groups.items() if len(names) > 1 and not set(names) <= set(class_map)]
    if clashes:
        i, names = clashes[0]
        raise InspectnetError(f"{what}: classes {_quoted(names)} all map to model class {vocab.label(i)}; merge "
                              f"them, or list each in --class-map FILE.json to say so")


def _unmatched_message(unmatched: list[str], num_data: int, vocab: _Vocabulary, what: str, mapped: bool) -> str:
    size = len(vocab.model_classes)
    remedy = "add them to the --class-map file" if mapped else "pass --class-map FILE.json"
    if is_placeholder(vocab.model_classes):
        return (f"{what}: classes {_quoted(unmatched)} match none of the model's {size} placeholder class names "
                f"(class_0 ...), and index order needs exactly {size} data classes; give the model a head of "
                f"the data's size (--num-classes {num_data}, with --reset-head for a saved or pretrained model) "
                f"or {remedy}")
    parts = [f"{n!r}" + (f" (closest: {', '.join(near)})" if (near := vocab.closest(n)) else "")
             for n in unmatched[:5]]
    more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
    head = (f"{what}: class {parts[0]} matches" if len(unmatched) == 1 else
            f"{what}: {len(unmatched)} classes {'; '.join(parts)}{more} match")
    ids = " (or WordNet ids)" if vocab.imagenet else ""
    return (f"{head} no class of the model ({size} classes); name folders by the model's class names{ids}, "
            f"or {remedy}")


def _quoted(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def read_class_map(path: str | Path) -> dict[str, int | str]:
    """Read a ``--class-map`` file: a JSON object ``{"data class": model index or model class name}``.

    Args:
        path: the JSON file.

    Returns:
        The mapping.

    Raises:
        InspectnetError: the file is missing, not valid JSON, or not a non-empty object of indices or names.

    Examples:
        >>> read_class_map("no/such.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: --class-map no/such.json does not exist; expected a JSON file ...
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise InspectnetError(f"--class-map {path} does not exist; expected a JSON file "
                              '{"folder name": model index or class name}')
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InspectnetError(f"--class-map {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not doc:
        raise InspectnetError(f"--class-map {path} must be a non-empty JSON object "
                              '{"folder name": model index or class name}')
    return doc
