"""Export trained explainers to ONNX / TensorRT and run them (installed as ``captum_vit.export``)."""

__all__: list[str] = []
