"""The exception types the command line turns into a one-line cause on stderr, and their exit codes.

Exit codes of ``inspectnet``: 0 success; 2 bad input or a failure the message explains
(:class:`InspectnetError`); 3 the command wrote its output but part of what was asked failed
(:class:`IncompleteResult`, e.g. an audit section); 1 an unexpected internal error (a bug);
130 interrupted.
"""

import re

_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_terminal_codes(text: str) -> str:
    r"""``text`` without terminal colour/cursor codes (ESC [ ... letter), which libraries put into messages.

    Args:
        text: a message.

    Returns:
        The message without the codes.

    Examples:
        >>> strip_terminal_codes("\x1b[96mtorch.export\x1b[0m failed")
        'torch.export failed'
    """
    return _TERMINAL_CODES.sub("", text)


class InspectnetError(Exception):
    """A user-facing error: the message names the bad input and what was expected.

    Args:
        *args: the message (terminal colour codes in string arguments are removed), as for ``Exception``.

    Examples:
        >>> raise InspectnetError("unknown layer 'layer9'; closest: layer4, layer3")
        Traceback (most recent call last):
        ...
        inspectnet.core.errors.InspectnetError: unknown layer 'layer9'; closest: layer4, layer3
    """

    exit_code = 2

    def __init__(self, *args: object):
        # messages quote other libraries' errors; their colour codes must not reach stderr files or cards
        super().__init__(*(strip_terminal_codes(a) if isinstance(a, str) else a for a in args))


class IncompleteResult(InspectnetError):
    """The output was written, but some asked-for part of it failed (the output says which).

    Examples:
        >>> IncompleteResult("audit sections failed: rules").exit_code
        3
    """

    exit_code = 3


class InvalidParameterError(InspectnetError, ValueError):
    """A parameter with a value it cannot take, named as the caller wrote it.

    ``message`` names parameters by placeholders: ``{k1}`` reads ``k1=`` from Python and ``--k1`` on
    the command line, ``{k1=5}`` reads ``k1=5`` and ``--k1 5``. ``parameter`` is the one at fault;
    the command line passes ``flags`` (parameter -> flag) through :meth:`with_flags`.

    Args:
        parameter: the keyword at fault (a config field or function argument).
        message: the explanation, with placeholders for every parameter it names.
        flags: how the command line spells parameters (absent ones read as keywords).

    Examples:
        >>> str(InvalidParameterError("limit", "{limit} must be at least 1, got 0"))
        'limit= must be at least 1, got 0'
        >>> str(InvalidParameterError("k2", "{k2=6} is larger than {k1=5}").with_flags({"k1": "--k1", "k2": "--k2"}))
        '--k2 6 is larger than --k1 5'
    """

    def __init__(self, parameter: str, message: str, flags: dict[str, str] | None = None):
        super().__init__(parameter, message, dict(flags or {}))

    @property
    def parameter(self) -> str:
        """The keyword at fault, as Python spells it.

        Examples:
            >>> InvalidParameterError("limit", "{limit} must be at least 1").parameter
            'limit'
        """
        return self.args[0]

    def with_flags(self, flags: dict[str, str]) -> "InvalidParameterError":
        """The same error, its parameters named by ``flags`` where they have one.

        Args:
            flags: parameter -> command-line flag (e.g. ``{"k1": "--k1"}``).

        Returns:
            A new error of the same parameter and message.
        """
        return InvalidParameterError(self.args[0], self.args[1], {**self.args[2], **flags})

    def __str__(self) -> str:
        flags = self.args[2]

        def name(match: "re.Match[str]") -> str:
            key, value = match[1], match[2]
            if key in flags:
                return flags[key] if value is None else f"{flags[key]} {value}"
            return f"{key}=" if value is None else f"{key}={value}"

        return re.sub(r"\{(\w+)(?:=([^{}]*))?\}", name, self.args[1])
