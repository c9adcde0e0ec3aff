"""The protobuf wire pieces the runtime rewrites ONNX models with: what onnx itself writes, read back."""

import onnx
import pytest
from onnx import TensorProto, helper

from m3edge.errors import BadInput
from m3edge.runtime.protowire import encode_varint, fields, int_field, message, varint


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2 ** 35 + 7])
def test_varints_round_trip(n):
    assert varint(encode_varint(n), 0) == (n, len(encode_varint(n)))


def test_fields_read_what_onnx_writes_and_messages_write_what_onnx_reads():
    t = helper.make_tensor("w", TensorProto.INT8, [2, 3], [1, 2, 3, 4, 5, 6])
    raw = t.SerializeToString()
    got = {f: (w, v) for f, w, v, _ in fields(raw)}
    assert bytes(got[8][1]) == b"w" and got[2] == (0, TensorProto.INT8)  # name, data_type
    assert b"".join(bytes(r) for *_, r in fields(raw)) == raw  # raw fields copy the message through
    made = onnx.TensorProto.FromString(int_field(2, TensorProto.INT32) + message(8, b"c") + message(9, b"\x80\0\0\0"))
    assert (made.name, made.data_type, onnx.numpy_helper.to_array(made).item()) == ("c", TensorProto.INT32, 128)


def test_a_truncated_or_unknown_field_is_bad_input():
    with pytest.raises(BadInput, match="truncated"):
        list(fields(message(1, b"abcdef")[:-2]))
    with pytest.raises(BadInput, match="wire type 3"):
        list(fields(bytes([1 << 3 | 3])))


def test_a_varint_cut_short_is_bad_input_and_a_negative_one_is_ten_bytes():
    with pytest.raises(BadInput, match="truncated varint"):
        varint(b"\x80\x80", 0)
    assert len(encode_varint(-1)) == 10 and varint(encode_varint(-1), 0)[0] == 2 ** 64 - 1
    assert onnx.AttributeProto.FromString(int_field(3, -2)).i == -2  # as protobuf writes an int64
