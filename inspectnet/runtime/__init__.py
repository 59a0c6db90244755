"""Torch-free inference on exported ONNX files (ONNX Runtime, Pillow and numpy only)."""
