"""Measures issue 19's server cases against `m3edge serve` in a subprocess on 127.0.0.1 (not a test: numbers).

    python -m m3edge.bench.server_hardening BUNDLE [-o results.json]

1. slow clients: the server runs with a file limit of 256; 300 connections that never finish (half stop inside
   the request head, half inside the body) are held open for 10 s; /healthz is timed every 0.2 s from another
   process meanwhile; the server's log size is reported. Twice: clients that give up when the server closes
   them, and a flood that re-opens each one at once.
2. SIGTERM with 64 streaming generations of 1,024 bytes in flight: time from the signal to the exit, exit code,
   whether every stream got its end and whether the memory snapshot holds every byte generated before it.
3. abandoned generations: 5 `/v1/generate` requests of 1,024 bytes whose clients hang up once 100 bytes are
   out; bytes (= steps) the server still generates after the hang-up, over the next 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the source tree


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bundle, mem, *extra, nofile=None):
        self.port = free_port()
        self.log = tempfile.TemporaryFile()

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([sys.executable, "-m", "m3edge.cli", "serve", str(bundle), "--port",
                                      str(self.port), "--memory-dir", str(mem), *extra], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=limit)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                self.get("/healthz")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def get(self, path, timeout=10):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
            return json.loads(r.read())

    def stop(self) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return code, time.monotonic() - t0

    def log_bytes(self) -> bytes:
        self.log.seek(0)
        return self.log.read()


def post(path, body) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
            f"\r\n\r\n").encode() + data


async def slow_client(port, kind: str, stop: asyncio.Event, stats: dict, reconnect: bool):
    """Holds one connection that never completes its request; with ``reconnect``, opens another whenever the
    server closes it (a flood), else gives up (300 stuck clients, the issue's case)."""
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.1)
            continue
        stats["opened"] += 1
        if kind == "head":
            w.write(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\n")
        else:
            w.write(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000\r\n\r\n{\"prompt\": \"")
        try:
            await w.drain()
            stop_task = asyncio.ensure_future(stop.wait())
            read_task = asyncio.ensure_future(r.read(1))
            await asyncio.wait({stop_task, read_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            read_task.cancel()
        except OSError:
            pass
        stats["closed_by_server"] += not stop.is_set()
        w.close()
        if not reconnect:
            return


PROBE = """
import json, sys, time, urllib.request
port, seconds = int(sys.argv[1]), float(sys.argv[2])
lat, fail, end = [], [], time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read()
        lat.append(time.monotonic() - t0)
    except OSError as e:
        fail.append(repr(e))
    time.sleep(0.2)
print(json.dumps([lat, fail]))
"""


async def healthz_probe(port, seconds: float):
    """/healthz timed from another process (this one is busy being 300 clients)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", PROBE, str(port), str(seconds),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out)


def slow_clients(bundle, work: Path, reconnect: bool) -> dict:
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    s = Server(bundle, work / "mem-slow", nofile=256)
    baseline = []
    for _ in range(10):
        t0 = time.monotonic()
        s.get("/healthz")
        baseline.append(time.monotonic() - t0)

    async def main():
        stop = asyncio.Event()
        stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0}
        tasks = [asyncio.ensure_future(slow_client(s.port, "head" if i % 2 else "body", stop, stats, reconnect))
                 for i in range(300)]
        await asyncio.sleep(1.0)  # all 300 opened
        lat, fail = await healthz_probe(s.port, 10.0)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return stats, lat, fail

    stats, lat, fail = asyncio.run(main())
    alive = s.get("/healthz")["status"]
    code, _ = s.stop()
    log = s.log_bytes()
    lat.sort()
    return {"file_limit": 256, "slow_connections": 300, "reconnect": reconnect, "seconds": 10, "healthz_probes": len(lat) + len(fail),
            "healthz_failures": len(fail), "healthz_p50_s": lat[len(lat) // 2] if lat else None,
            "healthz_max_s": lat[-1] if lat else None, "healthz_idle_max_s": max(baseline),
            "slow_connections_opened": stats["opened"], "closed_by_server": stats["closed_by_server"],
            "log_bytes": len(log), "log_lines": log.count(b"\n"), "tracebacks": log.count(b"Traceback"),
            "status_after": alive, "exit_code": code}


def sigterm_under_load(bundle, work: Path, n=64) -> dict:
    from m3edge.runtime.memory import LongTermMemory

    mem = work / "mem-sigterm"
    s = Server(bundle, mem)
    replies = []

    def client(i):
        try:
            with socket.create_connection(("127.0.0.1", s.port), timeout=60) as c:
                c.sendall(post("/v1/completions", {"prompt": f"v{i} = ", "max_tokens": 1024, "stream": True}))
                out = b""
                while chunk := c.recv(65536):
                    out += chunk
                replies.append(out)
        except OSError as e:
            replies.append(repr(e).encode())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while s.get("/v1/stats")["active"] < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # past the prompts: every generation is producing bytes
    before = s.get("/v1/stats")
    code, elapsed = s.stop()
    for t in threads:
        t.join(60)
    store = LongTermMemory(16)
    store.load(mem)
    # The body is chunked: a stream ended properly has [DONE] as its last event, then the final empty chunk.
    ended = sum(b"data: [DONE]\n\n" in r[-40:] and r.endswith(b"0\r\n\r\n") for r in replies)
    return {"generations_in_flight": before["active"], "shutdown_timeout_s": 5.0, "exit_s": elapsed,
            "exit_code": code, "streams_ended_with_done": ended,
            "cancelled": sum(b'"finish_reason":"cancelled"' in r for r in replies),
            "bytes_generated_before_signal": before["generated_bytes"], "memories_saved": len(store),
            "log_tracebacks": s.log_bytes().count(b"Traceback")}


def abandoned(bundle, work: Path, n=5) -> dict:
    s = Server(bundle, work / "mem-abandon")
    socks = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", s.port), timeout=60)
        c.sendall(post("/v1/generate", {"prompt": f"a{i}", "max_bytes": 1024}))
        socks.append(c)
    deadline = time.monotonic() + 60
    while s.get("/v1/stats")["generated_bytes"] < 20 * n and time.monotonic() < deadline:
        time.sleep(0.05)  # every generation is past its prompt and producing bytes
    for c in socks:
        c.close()
    at_hangup = s.get("/v1/stats")["generated_bytes"]
    time.sleep(10)
    after = s.get("/v1/stats")
    code, _ = s.stop()
    return {"abandoned": n, "max_bytes": 1024, "bytes_before_hangup": at_hangup,
            "steps_after_hangup_10s": after["generated_bytes"] - at_hangup, "cancelled": after["cancelled"],
            "exit_code": code}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        out = {"slow_clients": slow_clients(args.bundle, work, False),
               "slow_clients_reconnecting": slow_clients(args.bundle, work, True),
               "sigterm": sigterm_under_load(args.bundle, work),
               "abandoned": abandoned(args.bundle, work)}
    text = json.dumps(out, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
