"""Options declared once: a config dataclass field carries its default, constraint and help text.

A config is a frozen dataclass whose fields are made by :func:`option`; its ``__post_init__`` calls
:func:`validate`, so a config that exists is a valid one, whoever built it. The command line
generates its flags from the same fields (``inspectnet.cli.options.add_config_options``), so
defaults and help are written once. Errors are :class:`InvalidParameterError`, naming the keyword
(``k1=``) from Python and the flag (``--k1``) on the command line.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Config:
...     k1: int = option(5, help="top features per sample", minimum=1)
...     def __post_init__(self) -> None:
...         validate(self)
>>> Config(k1=0)
Traceback (most recent call last):
...
inspectnet.core.errors.InvalidParameterError: k1= must be at least 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from typing import Any

from inspectnet.core.errors import InvalidParameterError

METADATA_KEY = "inspectnet.option"


@dataclasses.dataclass(frozen=True)
class Option:
    """What one config field accepts and how the command line offers it.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones; ``finite``
    refuses nan and infinities; ``choices`` lists the accepted values. ``flag`` is the command-line
    spelling when it is not ``--field-name``; ``cli=False`` keeps the field off the command line
    (set by code, e.g. a file read into a dict); ``metavar`` names the value in ``--help``.
    """

    help: str
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    below: float | None = None
    finite: bool = False
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    cli: bool = True
    metavar: str | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or None when it is accepted.

        Args:
            value: the value given (a list or tuple is checked value by value unless ``choices`` is set).

        Returns:
            A message with the ``{name}`` placeholder for the parameter, or None.

        Examples:
            >>> Option("rows", minimum=1).problem(0)
            '{name} must be at least 1, got 0'
            >>> Option("rows", minimum=1).problem(3) is None
            True
        """
        if isinstance(value, list | tuple) and self.choices is None:  # a constraint on each value
            found = (self.problem(v) for v in value)
            return next((f"every value of {p}" for p in found if p is not None), None)
        if value is None or isinstance(value, bool):
            return None
        if self.choices is not None and value not in self.choices:
            return f"{{name}} must be {_either(self.choices)}, got {value!r}"
        if not isinstance(value, int | float):
            return None
        if self.finite and not math.isfinite(value):
            return f"{{name}} must be a finite number, got {value}"
        return self._range_problem(value)

    def _range_problem(self, value: float) -> str | None:
        low = (f"[{self.minimum}", value >= self.minimum) if self.minimum is not None else \
            (f"({self.above}", value > self.above) if self.above is not None else None
        high = (f"{self.maximum}]", value <= self.maximum) if self.maximum is not None else \
            (f"{self.below})", value < self.below) if self.below is not None else None
        if all(bound is None or bound[1] for bound in (low, high)):
            return None
        if low and high:
            return f"{{name}} must be within {low[0]}, {high[0]}, got {value}"
        if high:
            return f"{{name}} must be at most {self.maximum}, got {value}" if self.maximum is not None \
                else f"{{name}} must be less than {self.below}, got {value}"
        if self.minimum is not None:
            return f"{{name}} must be at least {self.minimum}, got {value}"
        return f"{{name}} must be positive, got {value}" if self.above == 0 else \
            f"{{name}} must be greater than {self.above}, got {value}"


def _either(choices: Sequence[Any]) -> str:
    names = [str(c) for c in choices]
    return " or ".join(names) if len(names) <= 2 else f"one of {', '.join(names[:-1])} or {names[-1]}"


def option(default: Any = dataclasses.MISSING, *, help: str, **constraint: Any) -> Any:
    """A config field: its ``default`` (none: required), ``help`` text and constraint (see :class:`Option`).

    Args:
        default: the value when the caller gives none; mutable defaults are not allowed (configs are frozen).
        help: one phrase for ``--help`` (the default is appended there).
        **constraint: ``minimum``, ``maximum``, ``above``, ``below``, ``finite``, ``choices``, ``flag``, ``cli``,
            ``metavar`` of :class:`Option`.

    Returns:
        A ``dataclasses.field`` carrying the :class:`Option` in its metadata.

    Examples:
        >>> option(3, help="epochs", minimum=1).metadata[METADATA_KEY].minimum
        1
    """
    return dataclasses.field(default=default, metadata={METADATA_KEY: Option(help=help, **constraint)})


MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's generators take seeds in [0, 2**32 - 1]


def seed_option(help: str) -> Any:
    """A ``seed`` config field: default 0, refused outside what every generator used here accepts.

    Args:
        help: one phrase for ``--help`` saying what the seed draws.

    Returns:
        A ``dataclasses.field`` as :func:`option` makes it.

    Examples:
        >>> seed_option("seed of the shuffling").metadata[METADATA_KEY].maximum
        4294967295
    """
    return option(0, help=help, minimum=0, maximum=MAX_SEED)


def options_of(config: Any) -> list[tuple[dataclasses.Field, Option]]:
    """The declared fields of a config class or instance, in order, with their :class:`Option`.

    Args:
        config: a dataclass (class or instance) whose fields come from :func:`option`.

    Returns:
        ``[(field, option), ...]``; fields declared otherwise are left out.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C:
        ...     n: int = option(1, help="n")
        >>> [f.name for f, _ in options_of(C)]
        ['n']
    """
    return [(f, f.metadata[METADATA_KEY]) for f in dataclasses.fields(config) if METADATA_KEY in f.metadata]


def field_types(cls: type) -> dict[str, Any]:
    """The evaluated annotations of a config class (postponed annotations included).

    Args:
        cls: a dataclass.

    Returns:
        field name -> type, e.g. ``int | None``.

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C:
        ...     n: "int | None" = None
        >>> field_types(C)["n"]
        int | None
    """
    return typing.get_type_hints(cls)


def validate(config: Any) -> None:
    """Check every declared field of ``config`` against its constraint; the first refused raises.

    Args:
        config: a dataclass instance whose fields come from :func:`option`.

    Returns:
        None.

    Raises:
        InvalidParameterError: naming the field as a keyword (the command line renames it to its flag).

    Examples:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class C:
        ...     lr: float = option(0.1, help="learning rate", above=0, finite=True)
        >>> validate(C(lr=-1.0))
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InvalidParameterError: lr= must be positive, got -1.0
    """
    for f, opt in options_of(config):
        problem = opt.problem(getattr(config, f.name))
        if problem is not None:
            raise InvalidParameterError(f.name, problem.replace("{name}", "{" + f.name + "}"))
