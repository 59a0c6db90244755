"""A griffe extension for the API reference: doctest lines in a docstring are shown as Python code.

The library's docstrings carry runnable ``>>>`` examples outside any ``Examples:`` section. Markdown
would read them as prose (``x[0]["a"]`` as a reference link); this wraps each run of ``>>>`` /
``...`` lines and the output lines after them in a fenced ``python`` block. Sections the docstring
parser already reads as examples are left alone.
"""

import re

import griffe

PROMPT = re.compile(r"^(\s*)(>>>|\.\.\.)( |$)")
EXAMPLES = re.compile(r"^\s*Examples?:\s*$", re.M)


def fence_doctests(text: str) -> str:
    """``text`` with every doctest run (prompts plus the output lines up to a blank line) fenced.

    Args:
        text: a docstring.

    Returns:
        The docstring with fenced doctest runs; unchanged when it has an ``Examples:`` section.

    Example:
        >>> fence_doctests("Sum.\\n\\n>>> 1 + 1\\n2\\n").splitlines()
        ['Sum.', '', '```python', '>>> 1 + 1', '2', '```']
    """
    if EXAMPLES.search(text):
        return text
    out: list[str] = []
    inside, indent = False, ""
    fenced = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
        prompt = None if fenced else PROMPT.match(line)
        if prompt and not inside:
            inside, indent = True, prompt.group(1)
            out.append(f"{indent}```python")
        elif inside and not prompt and not stripped:
            out.append(f"{indent}```")
            inside = False
        out.append(line)
    if inside:
        out.append(f"{indent}```")
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    """Fence the doctest lines of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102 - griffe's hook
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(obj.docstring.value)
