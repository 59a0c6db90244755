"""ONNX export with a parity gate, and static int8 quantization."""
