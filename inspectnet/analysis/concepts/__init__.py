"""Concepts discovered from a layer's activation map cells.

Non-negative factorisation and TopK sparse autoencoders, streamed over a dataset, with exact class
importance where the head pools the layer.

The defaults live here, free of torch, so the command line can show them without importing it.
"""

METHODS = ("nmf", "sae")
DEFAULT_K = 16                 # concepts per run
DEFAULT_ACTIVE = 4             # codes a TopK autoencoder keeps per cell
DEFAULT_SEEDS = 3              # runs whose concepts are matched for stability
MATCH_COSINE = 0.8             # a concept is stable when its Hungarian match reaches this cosine
NAME_IOU = 0.5                 # a concept recovers a labelled concept when its mask IoU reaches this
NAME_QUANTILES = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)   # top fractions tried as a concept mask
