"""The few pieces of the protobuf wire format the runtime needs to rewrite an ONNX model without ``onnx``.

runtime/template.py turns external initializers into graph inputs and runtime/qdq.py rewrites INT8 MatMuls;
both read messages field by field and copy what they do not touch byte for byte.
"""

from __future__ import annotations

from m3edge.errors import BadInput


def varint(buf, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(buf):
            raise BadInput("not an ONNX model (truncated varint)")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(buf):
    """(field number, wire type, value, raw field bytes) of each field of one message."""
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(buf, i)
        elif wire == 2:
            size, i = varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = buf[i:i + size], i + size
        else:
            raise BadInput(f"not an ONNX model (protobuf wire type {wire})")
        if i > n:
            raise BadInput("not an ONNX model (truncated protobuf field)")
        yield field, wire, value, buf[start:i]


def encode_varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes, as protobuf writes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def message(field: int, payload: bytes) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(len(payload)) + payload


def int_field(field: int, value: int) -> bytes:
    return encode_varint(field << 3) + encode_varint(value)
