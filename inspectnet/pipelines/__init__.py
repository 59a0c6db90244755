"""Multi-stage jobs built from the layers below: the audit and method comparisons."""
