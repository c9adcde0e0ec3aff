"""An expert graph file with its weights as graph inputs: one session per file serves every expert sharing it.

A bundle's experts of one kind share a graph file (schema 3) and differ only in the weights file it reads as
external data. Creating a session per expert costs ~1-2 ms on a Pi-class core, more than a whole decode step,
so an expert cache that holds fewer than all experts would pay that on every miss. Here the file's external
initializers become graph inputs instead: one session per file, and an expert is its checked weights bytes,
fed as arrays (a miss reads 25-90 kB). The rewrite works on the protobuf wire format directly, so the runtime
needs no ``onnx`` package: only the fields named below are read, everything else is copied through.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from m3edge.errors import BadInput
from m3edge.runtime.protowire import fields, int_field, message, varint

# onnx.proto field numbers
MODEL_GRAPH = 7
GRAPH_INITIALIZER, GRAPH_INPUT = 5, 11
TENSOR_DIMS, TENSOR_TYPE, TENSOR_NAME, TENSOR_EXTERNAL, TENSOR_LOCATION = 1, 2, 8, 13, 14
EXTERNAL = 1  # TensorProto.DataLocation

DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
          9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


@dataclass(frozen=True)
class Tensor:
    """Where one former initializer lives in its weights file."""
    name: str
    onnx_type: int
    shape: tuple[int, ...]
    location: str
    offset: int
    length: int

    @functools.cached_property
    def _layout(self) -> tuple[np.dtype, int, int]:
        dtype = np.dtype(DTYPES[self.onnx_type])
        count = int(np.prod(self.shape, dtype=np.int64))
        return dtype, count, self.offset + count * dtype.itemsize

    def view(self, data: bytes) -> np.ndarray:
        dtype, count, end = self._layout  # once per tensor: views are made on every cache miss
        if end > len(data):
            raise BadInput(f"tensor {self.name!r} lies beyond the end of its weights file ({len(data)} bytes)")
        return np.frombuffer(data, dtype=dtype, count=count, offset=self.offset).reshape(self.shape)


@dataclass(frozen=True)
class Template:
    model: bytes  # the graph, its external initializers turned into inputs
    tensors: tuple[Tensor, ...]

    def feeds(self, data: dict[str, bytes]) -> dict[str, np.ndarray]:
        """Input name -> array, read in place from the weights files (by external-data location)."""
        return {t.name: t.view(data[t.location]) for t in self.tensors}


def _external_tensor(buf) -> Tensor | None:
    dims, onnx_type, name, location, ext = [], 0, "", 0, {}
    for field, wire, value, _ in fields(buf):
        if field == TENSOR_DIMS:
            if wire == 2:  # packed
                i = 0
                while i < len(value):
                    d, i = varint(value, i)
                    dims.append(d)
            else:
                dims.append(value)
        elif field == TENSOR_TYPE:
            onnx_type = value
        elif field == TENSOR_NAME:
            name = bytes(value).decode()
        elif field == TENSOR_EXTERNAL:
            kv = {f: bytes(v).decode() for f, _, v, _ in fields(value)}
            ext[kv.get(1, "")] = kv.get(2, "")
        elif field == TENSOR_LOCATION:
            location = value
    if location != EXTERNAL:
        return None
    if onnx_type not in DTYPES:
        raise BadInput(f"initializer {name!r} has ONNX type {onnx_type}, which m3edge cannot feed")
    nbytes = int(np.prod(dims, dtype=np.int64)) * np.dtype(DTYPES[onnx_type]).itemsize
    return Tensor(name, onnx_type, tuple(dims), ext.get("location", ""), int(ext.get("offset", 0)),
                  int(ext.get("length", nbytes)))


def _input(t: Tensor) -> bytes:
    shape = b"".join(message(1, int_field(1, d)) for d in t.shape)  # Dimension.dim_value; rank 0 is an empty shape
    tensor_type = int_field(1, t.onnx_type) + message(2, shape)
    return message(1, t.name.encode()) + message(2, message(1, tensor_type))


def weights_as_inputs(model: bytes) -> Template:
    """``model`` with every external initializer made a graph input of the same name, type and shape."""
    buf = memoryview(model)
    out, tensors, found = bytearray(), [], False
    for field, wire, value, raw in fields(buf):
        if field != MODEL_GRAPH or wire != 2:
            out += raw
            continue
        found = True
        graph, inputs = bytearray(), set()
        for gfield, gwire, gvalue, graw in fields(value):
            t = _external_tensor(gvalue) if gfield == GRAPH_INITIALIZER and gwire == 2 else None
            if gfield == GRAPH_INPUT:  # IR < 4 lists initializers among the inputs already
                inputs |= {bytes(v).decode() for f, _, v, _ in fields(gvalue) if f == 1}
            if t is None:
                graph += graw
            else:
                tensors.append(t)
        for t in tensors:
            if t.name not in inputs:
                graph += message(GRAPH_INPUT, _input(t))
        out += message(MODEL_GRAPH, bytes(graph))
    if not found:
        raise BadInput("not an ONNX model (no graph)")
    return Template(bytes(out), tuple(tensors))
