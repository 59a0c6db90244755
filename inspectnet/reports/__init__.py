"""Model cards and HTML reports, rendered from dictionaries through Jinja2 templates (``templates/``).

Reports depend on :mod:`inspectnet.core` only, so an analysis that writes its own page
(network dissection) renders through the same templates, escaping and table helpers as the card.
"""
