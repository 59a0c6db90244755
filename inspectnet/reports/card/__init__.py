"""Interpretability model cards: ``card.json`` (source of truth) rendered to ``README.md`` and ``card.html``.

``card.json`` follows a versioned schema (``schema`` = ``inspectnet-model-card``, ``schema_version``)
holding the model's identity, the data, the audit parameters, one section per audit stage
(``status`` ok/failed, ``error``, ``result``), timings and how to reproduce it. Figures are PNG files
inside the audit folder referenced by relative paths; the Markdown links them (Hugging Face shows
them from the repository) and the HTML embeds them as data URIs, so ``card.html`` is one file.

Both renderings come from one view (:func:`card_view`: sections of paragraphs, tables, figures,
preformatted text and failure reasons) through two templates, ``templates/card.md.j2`` and
``templates/card.html.j2``, so they carry the same content. Every user-provided string (class
names, file names, data specs, errors) is escaped: HTML metacharacters always (autoescape), Markdown
metacharacters in the README (the ``md`` filter), JSON quoting in its YAML header.

The audit's writers (:mod:`inspectnet.pipelines.audit.card`) bind each stage's section renderer:

>>> from inspectnet.pipelines.audit.card import write_card
>>> doc = load_card("audit")          # doctest: +SKIP
>>> write_card(doc, "audit")          # re-render README.md and card.html from card.json   # doctest: +SKIP
"""

from inspectnet.core.tables import escape_markdown as md  # the README's escaping rule, public here
from inspectnet.reports.card.caveats import caveats, data_caveats
from inspectnet.reports.card.document import (
    CARD_SCHEMA,
    CARD_SCHEMA_VERSION,
    build_card,
    check_card,
    check_copy_target,
    figure_paths,
    load_card,
    publish,
    rerender,
    write_card,
)
from inspectnet.reports.card.sections import SectionBlocks, section_title
from inspectnet.reports.card.summary import summary_section, trust_text
from inspectnet.reports.card.view import (
    INTENDED_USE,
    CardView,
    card_view,
    faithfulness_metrics,
    front_matter_fields,
    headline,
    render_html,
    render_markdown,
    sample_text,
)

__all__ = ["CARD_SCHEMA", "CARD_SCHEMA_VERSION", "INTENDED_USE", "CardView", "SectionBlocks", "build_card", "card_view",
           "caveats", "check_card", "data_caveats", "check_copy_target", "faithfulness_metrics", "figure_paths",
           "front_matter_fields", "headline", "load_card", "md", "publish", "render_html", "render_markdown", "rerender",
           "sample_text", "section_title", "summary_section", "trust_text", "write_card"]
