"""Multi-stage jobs built from the layers below: the audit, the decompose command and method comparisons."""
