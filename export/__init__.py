"""Host-side export: graph split, ONNX export, validation, calibration, packaging (torch, onnx)."""
