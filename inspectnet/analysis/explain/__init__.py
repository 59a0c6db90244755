"""Explanations you can check.

Exact class-evidence maps, the explanation methods the audit shows (Integrated Gradients, Layer Grad-CAM,
class evidence, a random control), their faithfulness (deletion, insertion, ROAD) and the
cascading-randomisation sanity check.
"""
