"""Export of trained models to deployable ONNX artifacts, and running them."""
