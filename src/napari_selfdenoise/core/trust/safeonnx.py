"""ONNX models that can run without trusting their author: checked before onnxruntime sees them.

An ONNX model is a graph of standard operators with its weights inside: data, as far as the format goes,
with two holes that ``check_onnx`` closes:

- **external data**: a tensor may say its bytes are in a file at a path of its choosing
  (``data_location: EXTERNAL``); the runtime then reads that file (any file the user can read) into the
  model, and from there into its output. Every tensor (initializers, sparse initializers, tensor
  attributes, in every subgraph) must hold its bytes inline.
- **operator domains**: only the standard ``ai.onnx`` (``""``) and ``ai.onnx.ml`` domains are allowed; a
  custom domain names operators from native libraries, and model-local functions are refused too.

The model then runs in the same bounded child process as trusted TorchScript (``core.trust.sandbox``), so a
crash or a runaway allocation in the runtime stays there. Parsing needs the ``onnx`` package and running
it ``onnxruntime`` (the ``[onnx]`` extra).
"""

from __future__ import annotations

from ..errors import ModelFileError, SelfDenoiseError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
_EXTRA = 'pip install "napari-selfdenoise[onnx]"'


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_onnx(data: bytes, name: str) -> None:
    """Refuse an ONNX model with external data, non-standard operators or local functions (parses only)."""
    try:
        import onnx
    except ImportError as err:
        raise SelfDenoiseError(f"{name} has ONNX weights; running them needs onnx and onnxruntime: "
                               f"{_EXTRA}") from err
    try:
        model = onnx.ModelProto()
        model.ParseFromString(data)  # protobuf parsing only: nothing is resolved or loaded
    except Exception as err:  # protobuf raises its own errors on garbage
        raise ModelFileError(f"{name} is not a valid ONNX model ({type(err).__name__}); the file is damaged") from err
    for opset in model.opset_import:
        if opset.domain not in STANDARD_DOMAINS:
            raise ModelFileError(f"{name} imports the operator set {opset.domain!r}, which is not a standard "
                                 "ONNX domain (custom operators are native code); refusing it")
    if len(model.functions):
        raise ModelFileError(f"{name} defines its own ONNX functions; napari-selfdenoise runs models made of "
                             "standard operators only; refusing it")
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer)
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                raise ModelFileError(f"{name}: operator {node.op_type!r} is from the domain {node.domain!r}, "
                                     "not a standard ONNX one; refusing it")
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    tensors.append(attribute.t)
                tensors += list(attribute.tensors)
                for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + \
                        list(attribute.sparse_tensors):
                    tensors += [sparse.values, sparse.indices]
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs += list(attribute.graphs)
        for tensor in tensors:
            if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
                where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
                raise ModelFileError(f"{name}: tensor {tensor.name!r} keeps its data in an external file "
                                     f"({where[:80]!r}), which could be any file on this computer; "
                                     "refusing it")
