import pytest

from m3edge.errors import BadInput
from m3edge import backends
from m3edge.backends.litert import runtime as litert
from m3edge.backends.onnxruntime import runtime as ort


def test_missing_provider_falls_back_with_one_warning(capsys):
    ort._warned.clear()
    wanted = [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), ("CPUExecutionProvider", {})]
    for _ in range(2):
        assert ort.resolve_providers(wanted) == [("CPUExecutionProvider", {})]
    err = capsys.readouterr().err
    assert err.count("TensorrtExecutionProvider not available") == 1 and "falling back to CPUExecutionProvider" in err


def test_strict_refuses_a_missing_provider():
    with pytest.raises(BadInput, match="CUDAExecutionProvider is not available"):
        ort.resolve_providers([("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})], strict=True)


def test_unloadable_graph_names_the_file(tmp_path):
    p = tmp_path / "broken.onnx"
    p.write_bytes(b"not a protobuf")
    with pytest.raises(BadInput, match="broken.onnx"):
        ort.OrtGraph(p)


def test_quantized_ports_round_trip_and_saturate():
    import numpy as np

    q = litert.Quant(np.int8, 0.05, -3)
    x = np.array([[-10.0, -1.0, 0.0, 0.5, 6.0]], dtype=np.float32)
    enc = q.encode(x)
    assert enc.dtype == np.int8 and enc.tolist() == [[-128, -23, -3, 7, 117]]  # -10/0.05-3 saturates at -128
    assert np.allclose(q.decode(enc), [[-6.25, -1.0, 0.0, 0.5, 6.0]])
    plain = litert.Quant(np.int32)  # an int port that is not quantized (windows): cast, never scaled
    assert not plain.quantized and plain.encode(np.array([255], dtype=np.int64)).dtype == np.int32


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(BadInput, match="backend 'coreml'"):
        backends.open_graph(tmp_path / "x", {"backend": "coreml", "path": "x"}, backends.SessionConfig())


def test_missing_litert_says_what_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_litert(name, *a, **k):
        if name.startswith(("ai_edge_litert", "tflite_runtime")):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(BadInput, match=r"m3edge\[tflite\]"):
        litert.litert_interpreter()


def test_small_graphs_get_one_thread_large_ones_the_profiles():
    cfg = backends.SessionConfig(threads=2)
    assert cfg.threads_for(100_000, 16) == 1  # `small`'s experts at batch 16: not worth a second thread
    assert cfg.threads_for(25_000_000, 1) == 2  # `seed`'s experts: worth it from one row
    assert cfg.threads_for(6_300_000, 1, "int8") == 2  # the same work in a quarter of the bytes
    assert cfg.threads_for(6_300_000, 1, "fp32") == 1
    assert backends.SessionConfig(threads=1).threads_for(10 ** 9, 256) == 1
