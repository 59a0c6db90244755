"""The exception types the command line turns into a one-line cause on stderr, and their exit codes.

Exit codes of ``inspectnet``: 0 success; 2 bad input or a failure the message explains
(:class:`InspectnetError`); 3 the command wrote its output but part of what was asked failed
(:class:`IncompleteResult`, e.g. an audit section); 1 an unexpected internal error (a bug);
130 interrupted.
"""

import re

_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_terminal_codes(text: str) -> str:
    """``text`` without terminal colour/cursor codes (ESC [ ... letter), which libraries put into messages.

    Args:
        text: a message.
    Returns:
        the message without the codes.

    >>> strip_terminal_codes("\\x1b[96mtorch.export\\x1b[0m failed")
    'torch.export failed'
    """
    return _TERMINAL_CODES.sub("", text)


class InspectnetError(Exception):
    """A user-facing error: the message names the bad input and what was expected.

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

    >>> IncompleteResult("audit sections failed: rules").exit_code
    3
    """

    exit_code = 3
