"""Neural-network engines: one small interface, several runtimes (ONNX Runtime, TensorRT)."""
