"""Model cards and HTML reports: rendered from result dictionaries only."""
