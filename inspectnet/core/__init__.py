"""Lowest layer: errors, atomic storage, result containers, progress bars, device choice, timing, version."""
