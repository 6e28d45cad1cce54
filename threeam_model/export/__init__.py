"""ONNX export of SAM 2.1's per-frame path (static shapes) and the ONNX Runtime backend of the streaming engine."""
