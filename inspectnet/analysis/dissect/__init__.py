"""Concept alignment of units (Network Dissection): streaming thresholds and IoU.

The defaults live here, free of torch, so the command line can show them without importing it.
"""

DEFAULT_QUANTILE = 0.005       # a unit keeps its top 0.5 % of activations over the dataset
DEFAULT_IOU_THRESHOLD = 0.04   # a unit detects its best concept when IoU reaches this (NetDissect)
