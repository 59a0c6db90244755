"""Influential features, decomposed heads and exact slimming (Decomposing the Deep)."""
