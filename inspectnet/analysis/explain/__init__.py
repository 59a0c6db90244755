"""Explanations you can check: exact class-evidence maps, the explanation methods the audit shows
(Integrated Gradients, Layer Grad-CAM, class evidence, a random control), their faithfulness
(deletion, insertion, ROAD) and the cascading-randomisation sanity check."""
