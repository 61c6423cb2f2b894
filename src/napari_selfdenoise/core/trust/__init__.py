"""Model files from strangers: PyTorch files read without unpickling, TorchScript in a bounded child, ONNX checks."""
