"""onnxruntime sessions of in-memory ONNX models, including models over protobuf's 2 GiB.

A ``ModelProto`` cannot be serialised past 2 GiB, so a large model (ViT-H/14, RegNetY-128GF: their
weights come from a file with external data) cannot be handed to onnxruntime as bytes. Its large
initializers are then passed as ``OrtValue`` objects (``SessionOptions.add_external_initializers``)
and the bytes hold only the structure, with those initializers marked as external data.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

#: bytes of initializer data from which a model goes to onnxruntime without its large weights
#: (protobuf refuses to serialise 2 GiB; the structure and the small constants stay well below)
INLINE_LIMIT = 1536 * 1024**2
#: initializers of more bytes than this travel as OrtValues when a model is over INLINE_LIMIT
LARGE_TENSOR = 1024 * 1024
_LOCATION = "__spa_keras_in_memory__"


def data_bytes(model: onnx.ModelProto) -> int:
    """Bytes of initializer data the model holds in memory."""
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def _tensor_bytes(t) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    n = int(np.prod(t.dims, dtype=np.int64))
    return n * max(1, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize) if t.data_type else 0


def session(model: onnx.ModelProto, options=None, outputs=()):
    """An onnxruntime CPU session of ``model`` (never changed), with ``outputs`` (``ValueInfoProto``)
    added to its graph outputs. A model over :data:`INLINE_LIMIT` bytes of weights is handed over
    without its large initializers, which go in as OrtValues (the session keeps them alive)."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    large = data_bytes(model) > INLINE_LIMIT
    if not outputs and not large:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    g = model.graph
    graph = onnx.GraphProto(name=g.name, doc_string=g.doc_string)
    for field in ("node", "input", "output", "value_info", "sparse_initializer", "quantization_annotation"):
        getattr(graph, field).extend(getattr(g, field))
    known = {o.name for o in g.output}
    graph.output.extend(o for o in outputs if o.name not in known)
    names, values = [], []
    for init in g.initializer:
        if large and _tensor_bytes(init) > LARGE_TENSOR:
            ref = onnx.TensorProto(name=init.name, dims=init.dims, data_type=init.data_type)
            ref.data_location = onnx.TensorProto.EXTERNAL
            ref.external_data.add(key="location", value=_LOCATION)
            graph.initializer.append(ref)
            names.append(init.name)
            values.append(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(numpy_helper.to_array(init))))
        else:
            graph.initializer.append(init)
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                            producer_version=model.producer_version, domain=model.domain,
                            model_version=model.model_version)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    light.graph.CopyFrom(graph)
    if names:
        options.add_external_initializers(names, values)
    result = ort.InferenceSession(light.SerializeToString(), options, providers=["CPUExecutionProvider"])
    result._spa_keras_values = values  # onnxruntime reads these buffers for the session's lifetime
    return result


def save(model: onnx.ModelProto, path: str, location: str | None = None):
    """``onnx.save``; a model over :data:`INLINE_LIMIT` bytes of weights keeps its large tensors in one
    file beside it, ``location`` (default ``<file name>.data``; ``model`` itself is not changed)."""
    import os

    if data_bytes(model) <= INLINE_LIMIT:
        onnx.save(model, path)
        return
    out = onnx.ModelProto()
    out.CopyFrom(model)  # onnx.save moves the data of the model it is given out to the file
    onnx.save(out, path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location or os.path.basename(path) + ".data", size_threshold=LARGE_TENSOR)
