"""Sparsely Activated Networks: sparse activation functions and the SAN model."""
