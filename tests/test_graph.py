import pytest

from m3edge.errors import BadInput
from m3edge.runtime import graph


def test_missing_provider_falls_back_with_one_warning(capsys):
    graph._warned.clear()
    wanted = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), ("CPUExecutionProvider", {})]
    for _ in range(2):
        assert graph.resolve_providers(wanted) == [("CPUExecutionProvider", {})]
    err = capsys.readouterr().err
    assert err.count("TensorrtExecutionProvider not available") == 1 and "falling back to CPUExecutionProvider" in err


def test_strict_refuses_a_missing_provider():
    with pytest.raises(BadInput, match="CUDAExecutionProvider is not available"):
        graph.resolve_providers([("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})], strict=True)


def test_unloadable_graph_names_the_file(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"not a protobuf")
    with pytest.raises(BadInput, match="broken.onnx"):
        graph.OrtGraph(p)
