"""The one exception type the command line turns into a one-line cause on stderr."""


class InspectnetError(Exception):
    """A user-facing error: the message names the bad input and what was expected.

    >>> raise InspectnetError("unknown layer 'layer9'; closest: layer4, layer3")
    Traceback (most recent call last):
    ...
    inspectnet.core.errors.InspectnetError: unknown layer 'layer9'; closest: layer4, layer3
    """
