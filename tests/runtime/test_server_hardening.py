"""Issue 19, the server: hostile and careless clients over real sockets on 127.0.0.1 against `m3edge serve` in a
subprocess. Busy port, slow heads and bodies, overload, shedding idle connections, disconnects cancelling
generations, SIGTERM under load, a bounded log."""

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from m3edge.runtime.memory import LongTermMemory
from test_server import Server


def raw_request(port, data: bytes, timeout=30) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def post_bytes(path, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"\r\n").encode() + data


def stats(s):
    status, body = s.get("/v1/stats")
    assert status == 200
    return body


def wait_for(pred, timeout=30.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def test_unusable_host_is_one_line_and_exit_2(tiny_bundle):
    r = subprocess.run([sys.executable, "-m", "m3edge.cli", "serve", str(tiny_bundle), "--host", "203.0.113.7",
                        "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "203.0.113.7" in r.stderr and "Traceback" not in r.stderr


def test_busy_port_is_one_line_and_exit_2(tiny_bundle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "m3edge.cli", "serve", str(tiny_bundle), "--port", str(port)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "already in use" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def strict_server(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "mem", "--header-timeout", "0.5", "--body-timeout", "0.5")
    yield s
    assert s.stop()


def test_slow_head_is_closed_and_slow_body_gets_408(strict_server):
    port = strict_server.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        t0 = time.monotonic()
        assert s.recv(100) == b"" and time.monotonic() - t0 < 5  # closed by the server, no answer owed
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"prompt\": ")
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in body
    # An unfinished request head is buffered up to 16 KiB, then refused.
    reply = raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000)
    assert reply.startswith(b"HTTP/1.1 400")
    assert strict_server.get("/healthz")[0] == 200


def test_overload_is_503_at_once_and_idle_connections_are_shed(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "mem", "--max-active", "2", "--max-waiting", "1", "--max-connections", "16",
               "--header-timeout", "60")
    try:
        port = s.port
        # Two running (max-active) and one waiting (max-waiting) long generations hold every slot.
        socks = []
        for i in range(3):
            c = socket.create_connection(("127.0.0.1", port), timeout=30)
            c.sendall(post_bytes("/v1/completions", {"prompt": f"p{i}", "max_tokens": 1024, "stream": True,
                                                      "memory": False}))
            socks.append(c)
        assert wait_for(lambda: stats(s)["active"] == 2 and stats(s)["waiting"] == 1)
        t0 = time.monotonic()
        status, body = s.post("/v1/completions", {"prompt": "late", "max_tokens": 4})
        assert status == 503 and "overloaded" in body["error"]["message"] and time.monotonic() - t0 < 2
        status, body = s.post("/v1/generate", {"prompt": "late", "max_bytes": 4})
        assert status == 503 and "overloaded" in body["error"]
        # 40 connections that never send a byte, over a bound of 16: the oldest idle ones are closed for new
        # ones, the generations' connections are not, and /healthz still answers at once.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(40)]
        t0 = time.monotonic()
        assert s.get("/healthz")[0] == 200 and time.monotonic() - t0 < 1.0
        assert stats(s)["active"] == 2
        readable, _, _ = select.select(idle, [], [], 1.0)
        closed = 0
        for c in readable:
            try:
                closed += c.recv(1) == b""
            except ConnectionResetError:
                closed += 1
        assert closed >= 40 - 16
        for c in idle:
            c.close()
        for c in socks:
            c.close()
        assert wait_for(lambda: stats(s)["active"] == 0 and stats(s)["waiting"] == 0, 10)  # every slot came back
    finally:
        assert s.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_cancels_its_generation(tiny_bundle, tmp_path, stream):
    s = Server(tiny_bundle, tmp_path / "mem")
    try:
        before = stats(s)["generated_bytes"]
        c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        if stream:
            c.sendall(post_bytes("/v1/completions", {"prompt": "q", "max_tokens": 1024, "stream": True,
                                                      "temperature": 0}))
            got = b""
            while b"data: " not in got:  # generating
                got += c.recv(4096)
        else:
            c.sendall(post_bytes("/v1/generate", {"prompt": "q", "max_bytes": 1024}))
            assert wait_for(lambda: stats(s)["generated_bytes"] > before + 2)
        c.close()
        assert wait_for(lambda: stats(s)["active"] == 0, 10)
        done = stats(s)
        assert done["cancelled"] == 1 and done["generated_bytes"] - before < 1024
        time.sleep(0.3)
        assert stats(s)["generated_bytes"] == done["generated_bytes"]  # nothing runs on for nobody
    finally:
        assert s.stop()


def test_sigterm_with_generations_in_flight_exits_0_within_the_deadline(tiny_bundle, tmp_path):
    mem = tmp_path / "mem"
    s = Server(tiny_bundle, mem, "--shutdown-timeout", "1")
    results, lock = [], threading.Lock()

    def client(i):
        try:
            reply = raw_request(s.port, post_bytes("/v1/completions", {"prompt": f"x{i} = ", "max_tokens": 1024,
                                                                        "stream": True}), timeout=30)
        except OSError as e:
            reply = repr(e).encode()
        with lock:
            results.append(reply)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert wait_for(lambda: stats(s)["active"] == 8, 30)
    generated = stats(s)["generated_bytes"]
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    code = s.proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    err = s.proc.stderr.read()
    for t in threads:
        t.join(timeout=30)
    assert code == 0 and elapsed < 1 + 2.0, (code, elapsed, err)
    assert "Traceback" not in err and "stopped" in err
    # Each stream was answered: cancelled at the deadline, ended properly with [DONE].
    # Chunked bodies: the last event is [DONE], then the final empty chunk.
    assert len(results) == 8 and all(b'"finish_reason":"cancelled"' in r and b"data: [DONE]\n\n" in r[-40:]
                                     and r.endswith(b"0\r\n\r\n") for r in results), results[0][-300:]
    store = LongTermMemory(16)
    store.load(mem)
    assert len(store) >= generated  # every byte generated before the signal is in the saved memory


def test_refused_connections_leave_a_bounded_log(tiny_bundle, tmp_path):
    s = Server(tiny_bundle, tmp_path / "mem")
    for _ in range(60):
        raw_request(s.port, b"GARBAGE\x00\x01 nonsense\r\n\r\n", timeout=10)
    assert s.get("/healthz")[0] == 200
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == 0
    err = s.proc.stderr.read()
    assert "Traceback" not in err
    invalid = [line for line in err.splitlines() if "Invalid HTTP request" in line]
    assert 1 <= len(invalid) <= 2, err
