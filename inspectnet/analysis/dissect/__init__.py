"""Concept alignment of units (Network Dissection): streaming thresholds and IoU."""
