"""Influential features, decomposed heads and exact slimming (Decomposing the Deep): the analyses.

The modules a saved model is rebuilt with live in :mod:`inspectnet.models.heads` and
:mod:`inspectnet.models.surgery`.
"""
