"""Render the report templates of ``inspectnet/reports/templates`` (Jinja2), one environment per output.

HTML (``*.html.j2``): autoescape on, and every ``{{ value }}`` goes through :func:`escape_html`
unless it is already :class:`~markupsafe.Markup` (macros, embedded pictures), so no template can
forget to escape a user string. Markdown (``*.md.j2``) has no HTML autoescape; its templates
escape each user string explicitly with the ``md`` filter and build tables with ``md_table``.

Filters: ``cell_text`` (:func:`~inspectnet.core.tables.format_value`, Markup kept), ``sort_key``,
``md``, ``md_table``, ``md_url``, ``pre`` (HTML-escaped text for a Markdown ``<pre>`` block) and
``yaml`` (a YAML scalar for front matter).

>>> render_html_template("_page.html.j2", title="A < B", intro="").count("&lt;")
2
"""

import functools
import html
import json
import re
import urllib.parse
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from inspectnet.core.tables import escape_markdown, format_value, markdown_table


def escape_html(value: Any) -> Markup:
    """``value``'s text escaped for HTML text and attributes (quotes too); Markup passes unchanged.

    Args:
        value: any value (shown with ``str``), or ``Markup``.

    Returns:
        The escaped text as ``Markup``.

    Examples:
        >>> escape_html('<a href="x">') + escape_html(Markup("<b>"))
        Markup('&lt;a href=&quot;x&quot;&gt;<b>')
    """
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def cell_text(value: Any) -> str:
    """A table cell's text: Markup (a picture) as it is, anything else through ``format_value``.

    Args:
        value: the cell.

    Returns:
        The text.

    Examples:
        >>> cell_text(0.5), cell_text(None)
        ('0.5000', 'n/a')
    """
    return value if isinstance(value, Markup) else format_value(value)


# a token a browser may break after "?", "!" or "/" (a data spec, a path): kept on one line in HTML
_BREAKABLE = re.compile(r"[^\s<>]*[?!/][^\s<>]*")


def keep_tokens(value: Any) -> Markup:
    """``value`` as escaped HTML text in which a data spec or a path never breaks across lines.

    Such tokens go into a span that does not wrap; Markup passes unchanged.

    Args:
        value: text (escaped here) or Markup.

    Returns:
        The HTML.

    >>> keep_tokens("on shapes:test?n=8 <b>")
    Markup('on <span class="tok">shapes:test?n=8</span> &lt;b&gt;')
    """
    if isinstance(value, Markup):
        return value
    text = html.escape(str(value), quote=True)
    return Markup(_BREAKABLE.sub(lambda m: f'<span class="tok">{m.group(0)}</span>', text))


def sort_key(value: Any) -> Any:
    """What a sortable HTML table sorts a cell by: the raw value (full precision), nothing for Markup.

    Args:
        value: the cell.

    Returns:
        The value, or ``""`` for Markup.

    Examples:
        >>> sort_key(0.123456789), sort_key(Markup("<img>"))
        (0.123456789, '')
    """
    return "" if isinstance(value, Markup) else value


def yaml_scalar(value: Any) -> str:
    r"""A YAML flow scalar: JSON strings and numbers are valid YAML and carry their own escaping.

    Markup characters become \u escapes, so no renderer ever sees a raw tag.

    Args:
        value: a string, number, bool or None.

    Returns:
        The scalar's text.

    Examples:
        >>> yaml_scalar("a<b")
        '"a\\u003cb"'
    """
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def markdown_url(path: str) -> str:
    """A relative path as a Markdown link target (percent-encoded: a space or ``)`` cannot end the link).

    Args:
        path: the relative path.

    Returns:
        The encoded target.

    Examples:
        >>> markdown_url("figures/a b).png")
        'figures/a%20b%29.png'
    """
    return urllib.parse.quote(str(path), safe="/")


def _table_markdown(table: Any) -> str:
    return markdown_table(table.headers, table.rows)


def _preformatted_html(text: Any) -> str:
    return html.escape(str(text), quote=False)


@functools.cache
def _environment(markdown: bool) -> Environment:
    loader = PackageLoader("inspectnet.reports", "templates")
    if markdown:
        env = Environment(loader=loader, autoescape=False, undefined=StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True, keep_trailing_newline=True)
        env.filters.update(md=escape_markdown, md_table=_table_markdown, md_url=markdown_url,
                           pre=_preformatted_html, yaml=yaml_scalar)
    else:
        env = Environment(loader=loader, autoescape=True, finalize=escape_html, undefined=StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.filters.update(tokens=keep_tokens)
    env.filters.update(cell_text=cell_text, sort_key=sort_key)
    return env


def render_html_template(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` (an ``.html.j2``) with every value HTML-escaped.

    Args:
        name: the template's file name.
        **context: the template's variables.

    Returns:
        The HTML.
    """
    return _environment(markdown=False).get_template(name).render(**context)


def render_markdown_template(name: str, **context: Any) -> str:
    """Render ``templates/<name>`` (an ``.md.j2``); the template escapes with ``md``.

    Args:
        name: the template's file name.
        **context: the template's variables.

    Returns:
        The Markdown.
    """
    return _environment(markdown=True).get_template(name).render(**context)
