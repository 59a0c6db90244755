"""Analyses that run from a probe record (and dissection, which streams its own pass)."""
