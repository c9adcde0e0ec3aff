"""The OpenAI-compatible surface of `m3edge serve`, driven by the real `openai` client against a real uvicorn
process on 127.0.0.1; also /health, CORS, JSON errors, /metrics and `m3edge run` streaming."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT
from test_server import Server

openai = pytest.importorskip("openai")

OFF = {"memory": False}  # memory off: the same request gives the same bytes every time


@pytest.fixture(scope="module")
def srv(tiny_bundle, tmp_path_factory):
    s = Server(tiny_bundle, tmp_path_factory.mktemp("mem") / "mem", "--cors", "http://example.com")
    yield s
    assert s.stop()


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key="unused", max_retries=0, timeout=60)


def reference(srv, prompt, n, **sampling):
    """The same generation through m3edge's own endpoint: what the OpenAI endpoints must return."""
    status, body = srv.post("/v1/generate", {"prompt": prompt, "max_bytes": n, "temperature": 0, **sampling, **OFF})
    assert status == 200
    return body["text"]


def test_completion_matches_generate_and_streams_the_same_text(srv, client):
    want = reference(srv, "def main(", 24)
    r = client.completions.create(model="tiny", prompt="def main(", max_tokens=24, temperature=0, extra_body=OFF)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len("def main(")
    chunks = list(client.completions.create(model="tiny", prompt="def main(", max_tokens=24, temperature=0,
                                            stream=True, extra_body=OFF))
    pieces = [c.choices[0].text for c in chunks]
    assert "".join(pieces) == want and len([p for p in pieces if p]) > 1  # arrived in several events
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_uses_the_documented_template(srv, client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    full = reference(srv, "System: Be brief.\nUser: hi\nAssistant:", 40)
    want = full.split("\nUser:")[0]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0, extra_body=OFF)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("stop" if "\nUser:" in full else "length")
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body=OFF)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens <= 40 and not chunks[-1].choices


def test_stop_strings_cut_the_text(srv, client):
    # Sampled with a seed (same seed, same bytes): greedy output of the tiny model repeats one character.
    full = reference(srv, "x = ", 48, temperature=1.0, seed=3)
    stop = next(full[i:i + 2] for i in range(4, 46) if full[i:i + 2].isascii() and full[i:i + 2].isprintable()
                and full.find(full[i:i + 2]) == i)
    for stream in (False, True):
        r = client.completions.create(model="tiny", prompt="x = ", max_tokens=48, temperature=1.0, seed=3,
                                      stop=[stop], stream=stream, extra_body=OFF)
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks) == full[:full.find(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_extensions_are_checked(client):
    a, b = (client.completions.create(model="tiny", prompt="import ", max_tokens=16, temperature=0.9, seed=7,
                                      extra_body=OFF).choices[0].text for _ in range(2))
    assert a == b
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.completions.create(model="tiny", prompt="a", extra_body={"retrieval_mode": "fuzzy"})
    assert "retrieval_mode" in e.value.body["message"] if isinstance(e.value.body, dict) else "retrieval_mode" in str(e.value)
    r = client.completions.create(model="tiny", prompt="a = ", max_tokens=4, temperature=0,
                                  extra_body={"task_type": "code_generation", "retrieval_mode": "factual",
                                              "scene": "s"})
    assert r.usage.completion_tokens == 4


@pytest.mark.parametrize("body, word", [
    ({"prompt": "a", "n": 2}, "'n'"),
    ({"prompt": "a", "max_tokens": 5000}, "max_tokens"),
    ({"prompt": "a", "top_p": 0.5}, "top_p"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "colour": 1}, "colour"),
])
def test_bad_fields_are_422_in_openai_shape(srv, body, word):
    status, reply = srv.post("/v1/completions", body)
    assert status == 422 and word in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["code"] == 422


def test_models_health_and_json_errors_everywhere(srv, client):
    ids = [m.id for m in client.models.list().data]
    assert len(ids) == 1 and ids[0] in r"tiny"
    assert srv.get("/health") == (200, {"status": "ok", "memories": srv.get("/health")[1]["memories"],
                                        "batching": True})
    status, reply = srv.get("/no/such/route")
    assert status == 404 and reply["error"]["type"] == "not_found_error" and "/no/such/route" in reply["error"]["message"]
    status, reply = srv.get("/v1/completions")
    assert status == 405 and "GET" in reply["error"]["message"]
    status, reply = srv.post("/v1/chat/completions", raw=b"[" * 5000 + b"]" * 5000)
    assert status == 400 and "nested deeper" in reply["error"]["message"]
    status, reply = srv.post("/v1/generate", raw=b'{"prompt": ' + b"[" * 100000 + b"}")
    assert status in (400, 413) and "Traceback" not in json.dumps(reply)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    status, reply = srv.get("/v1/memory/99999999")
    assert status == 404 and "no memory with id 99999999" in reply["error"]["message"]
    srv.post("/v1/generate", {"prompt": "abc", "max_bytes": 2})
    hit = srv.post("/v1/memory/search", {"query": "abc", "k": 1})[1]["results"][0]
    status, mem = srv.get(f"/v1/memory/{hit['id']}")
    assert status == 200 and mem["priority"] == pytest.approx(hit["priority"]) and mem["n_links"] == hit["associations"]
    assert all(set(link) == {"id", "weight", "next_byte", "priority"} for link in mem["links"])


def test_cors_preflight_and_headers(srv):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/chat/completions", method="OPTIONS", headers={
        "Origin": "http://example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.headers["access-control-allow-origin"] == "http://example.com"
        assert "POST" in r.headers["access-control-allow-methods"]
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/models", headers={"Origin": "http://example.com"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["access-control-allow-origin"] == "http://example.com"
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}/v1/models", headers={"Origin": "http://evil.test"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers.get("access-control-allow-origin") is None


def test_prometheus_metrics(srv, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model="tiny", prompt="z", max_tokens=5, temperature=0)
    status, text = srv.get("/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["m3edge_build_info"].samples[0].labels["version"]
    lat = [s for s in fams["m3edge_http_request_duration_seconds"].samples
           if s.name.endswith("_count") and s.labels["path"] == "/v1/completions"]
    assert lat and lat[0].value >= 1
    assert fams["m3edge_generated_bytes"].samples[0].value >= 5
    assert {"m3edge_batcher_batch_size", "m3edge_batcher_queue_size", "m3edge_batcher_rejected",
            "m3edge_expert_cache_hits", "m3edge_expert_cache_misses", "m3edge_expert_cache_evictions"} <= set(fams)
    assert any(s.value > 0 for s in fams["m3edge_batcher_batch_size"].samples if s.name.endswith("_count"))
    codes = {s.labels["code"] for s in fams["m3edge_http_requests"].samples if s.labels.get("path") == "/v1/completions"}
    assert "200" in codes


def test_run_prints_while_it_generates(tiny_bundle):
    """`m3edge run` writes each character as it is made: text is on stdout while the process still runs."""
    proc = subprocess.Popen([sys.executable, "-m", "m3edge.cli", "run", str(tiny_bundle), "--prompt", "ab",
                             "--max-bytes", "1000000", "--no-memory"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while len(seen) < 40 and time.monotonic() < deadline:
            seen += proc.stdout.read1(64)
        assert seen.startswith(b"ab") and len(seen) >= 40
        assert proc.poll() is None  # a million bytes are far from done: the text came out as it was made
    finally:
        proc.kill()
        proc.wait()
