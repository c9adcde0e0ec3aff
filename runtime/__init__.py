"""The on-device runtime: numpy, onnxruntime or LiteRT, the standard library; never torch."""
