"""m3edge serve, as a real uvicorn process on loopback: load, bad requests, metrics, SIGTERM."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from m3edge.runtime.memory import LongTermMemory

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle, memory_dir, *extra):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "m3edge.cli", "serve", str(bundle), "--port",
                                      str(self.port), "--memory-dir", str(memory_dir), *extra],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("server did not start: " + self.proc.stderr.read())

    def request(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                payload = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            payload, status = e.read(), e.code
        try:
            return status, json.loads(payload)
        except json.JSONDecodeError:
            return status, payload.decode()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body=None, raw=None):
        return self.request("POST", path, body, raw)

    def stop(self):
        """SIGTERM, as a service manager sends it. uvicorn shuts down gracefully, then re-raises the signal,
        so a clean stop exits with -SIGTERM (or 0); anything else, or a traceback, is a failure."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        err = self.proc.stderr.read()
        assert "Traceback" not in err and "Exception in ASGI application" not in err, err
        return code in (0, -signal.SIGTERM)


@pytest.fixture
def server(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "mem")
    yield s
    s.stop()


def test_concurrent_clients_are_all_answered_and_batched(server):
    results, errors = [], []

    def client(i):
        for j in range(3):
            status, body = server.post("/v1/generate", {"prompt": f"x{i}_{j} = ", "max_bytes": 6})
            (results if status == 200 else errors).append((status, body))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 48
    assert all(body["bytes"] == 6 and isinstance(body["text"], str) for _, body in results)
    status, text = server.get("/metrics")
    assert status == 200 and "# TYPE m3edge_batcher_execution_count_total counter" in text
    counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("m3edge_batcher")}
    # prometheus-client's counters carry the _total suffix
    assert counts["m3edge_batcher_inference_count_total"] >= 48 * 6
    assert counts["m3edge_batcher_execution_count_total"] < counts["m3edge_batcher_inference_count_total"]  # batches


def test_step_and_memory_search(server):
    status, body = server.post("/v1/step", {"context": "def f(", "top": 3})
    assert status == 200 and len(body["top"]) == 3 and len(body["logits"]) == 256
    assert body["top"][0]["p"] >= body["top"][1]["p"]
    server.post("/v1/generate", {"prompt": "import os\n", "max_bytes": 4})
    status, body = server.post("/v1/memory/search", {"query": "import os", "k": 2})
    assert status == 200 and len(body["results"]) == 2 and body["results"][0]["score"] >= body["results"][1]["score"]


@pytest.mark.parametrize("raw, body, code, word", [
    (b"{not json", None, 400, "malformed JSON"),
    (None, [1, 2], 422, "JSON object"),
    (None, {"max_bytes": 3}, 422, "missing field 'prompt'"),
    (None, {"prompt": 5}, 422, "'prompt' must be a string"),
    (None, {"prompt": "a", "max_bytes": -1}, 422, "max_bytes"),
    (None, {"prompt": "a", "max_bytes": True}, 422, "max_bytes"),
    (None, {"prompt": "a", "temperature": "hot"}, 422, "temperature"),
    (None, {"prompt": "a", "colour": "red"}, 422, "unknown field 'colour'"),
    (None, {"prompt": "a" * 9000}, 422, "longer than"),
    (b"{" + b" " * 70000 + b"}", None, 413, "limit"),
    (None, {"prompt": "a", "task_type": "poetry"}, 422, "task_type"),
    (None, {"prompt": "a", "retrieval_mode": "fuzzy"}, 422, "retrieval_mode"),
    (None, {"prompt": "a", "memory": "yes"}, 422, "memory"),
])
def test_bad_requests_get_4xx_with_a_message(server, raw, body, code, word):
    status, reply = server.post("/v1/generate", body, raw)
    assert status == code and word in reply["error"]
    assert "Traceback" not in json.dumps(reply)
    assert server.get("/healthz")[0] == 200  # still serving


def test_retrieval_fields_steer_generation(server):
    """The seed's task types and retrieval modes over HTTP; a factual query with no stored match retrieves nothing,
    so it answers as memory off does."""
    unseen = "QWERTYUIOPASDFGHJKLZ"
    status, factual = server.post("/v1/generate", {"prompt": unseen, "max_bytes": 4, "retrieval_mode": "factual",
                                                   "task_type": "code_generation", "scene": "s1"})
    status_off, off = server.post("/v1/generate", {"prompt": unseen, "max_bytes": 4, "memory": False})
    assert status == status_off == 200 and factual["text"] == off["text"]
    status, body = server.post("/v1/step", {"context": "import os\nimport ", "top": 2, "task_type": "general_chat"})
    assert status == 200 and len(body["top"]) == 2


def test_routes_and_methods(server):
    assert server.get("/nope")[0] == 404
    assert server.get("/v1/generate")[0] == 405


def test_sigterm_during_load_loses_no_acknowledged_memory_write(tiny_bundle, tmp_path):
    mem = tmp_path / "mem"
    s = Server(tiny_bundle, mem)
    acked, lock = [], threading.Lock()
    prompt = "value = "

    def client():
        for _ in range(50):
            try:
                status, body = s.post("/v1/generate", {"prompt": prompt, "max_bytes": 5})
            except OSError:
                return  # the server went away: this request was never acknowledged
            if status == 200:
                with lock:
                    acked.append(body)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(acked) < 10 and time.monotonic() < deadline:  # bounded: a broken server fails, never hangs
        time.sleep(0.05)
    assert s.stop()
    for t in threads:
        t.join(timeout=60)
    per_request = len(prompt) - 1 + 5
    store = LongTermMemory(16)
    store.load(mem)
    assert len(acked) >= 10 and len(store) >= per_request * len(acked)


def test_serve_without_batching(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "mem", "--no-batching")
    try:
        status, body = s.post("/v1/generate", {"prompt": "a = ", "max_bytes": 3})
        assert status == 200 and body["bytes"] == 3
        assert "m3edge_batcher" not in s.get("/metrics")[1]
    finally:
        assert s.stop()
