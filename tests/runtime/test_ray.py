"""m3edge on a Ray cluster (issue 21): Ray Serve replicas over real HTTP, experts placed across nodes.

One local two-node cluster (``ray.cluster_utils.Cluster``, 127.0.0.1, no dashboard) is shared by the module:
Ray takes tens of seconds to start on two busy cores. The node-kill test runs last: it removes the worker.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

# Ray resolves 127.0.0.1 to the machine's address unless told this host is not part of a wider cluster: this
# keeps every node, driver and proxy of the test cluster on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="ray is not installed: the ray extra (pip install 'm3edge[ray]')")

from conftest import ROOT, run_cli  # noqa: E402

NODE = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 96 * 2 ** 20,
        "include_dashboard": False}
PROMPT = "def parse(self, text):\n    "


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("ray") / "tiny"
    r = run_cli("export", "--target", "host-cpu", "--preset", "tiny", "-o", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=True, head_node_args=dict(NODE))
    worker = c.add_node(**{**NODE, "num_cpus": 1})
    c.wait_for_nodes(timeout=120)
    yield c, c.head_node.node_id, worker
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def local(bundle):
    from m3edge.runtime.agent import EdgeAgent

    agent = EdgeAgent.open(bundle)
    yield agent
    agent.close()


def parallel_agent(bundle, budgets_mb, **options):
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.expert_parallel import attach

    agent = EdgeAgent.open(bundle)
    return agent, attach(agent, bundle, budgets_mb=budgets_mb, timeout_s=120, **options)


def total_mb(agent):
    from m3edge.runtime.expert_parallel import expert_sizes

    return sum(expert_sizes(agent.executor).values()) / 2 ** 20


def test_expert_parallel_is_byte_identical_to_one_process(bundle, cluster, local):
    c, head, worker = cluster
    mb = total_mb(local)
    # put_min_bytes=0: every layer's rows through the shared-memory object store (the default sends the small
    # decoding rows inline; the kill test below runs that way).
    agent, runner = parallel_agent(bundle, {head: mb, worker.node_id: mb}, put_min_bytes=0)
    try:
        # Equal budgets: each layer's experts are dealt out to both nodes.
        on = runner.stats()["nodes"]
        assert set(on) == {head, worker.node_id} and abs(on[head] - on[worker.node_id]) <= 1
        for use_memory in (True, False):
            want = local.generate(PROMPT, 32, use_memory=use_memory)
            got = agent.generate(PROMPT, 32, use_memory=use_memory)
            assert got == want
        # Memory off: with it on, retrieval scores age with the wall clock between the two calls.
        np.testing.assert_array_equal(agent.step("import numpy as", use_memory=False),
                                      local.step("import numpy as", use_memory=False))
        n = agent.cfg.n_layers
        assert runner.calls >= 32 * n  # every layer of every step went through the cluster
        assert len(agent.executor.cache) == 0  # and no expert was loaded here
    finally:
        runner.close()
        agent.close()


def test_plan_that_does_not_fit_is_refused_clearly(bundle, cluster, local):
    from m3edge.runtime.expert_parallel import ExpertParallelError

    c, head, worker = cluster
    mb = total_mb(local)
    with pytest.raises(ExpertParallelError, match=r"cannot place the experts on 2 node\(s\): expert \(\d+, \d+\) "
                                                  r"\(\d+ bytes\) fits no node"):
        parallel_agent(bundle, {head: mb / 4, worker.node_id: mb / 4})


def test_a_node_without_the_bundle_is_a_clear_error(bundle, cluster, local, tmp_path):
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.expert_parallel import ExpertParallelError, attach

    agent = EdgeAgent.open(bundle)
    try:
        with pytest.raises(ExpertParallelError, match=r"starting expert hosts failed: .*nowhere"):
            attach(agent, tmp_path / "nowhere", timeout_s=120)
    finally:
        agent.close()


class Http:
    def __init__(self, port):
        self.port = port

    def call(self, method, path, body=None, headers=None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.headers.get("x-m3edge-replica"), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("x-m3edge-replica"), e.read().decode()


def test_two_replicas_answer_consistently_over_http(bundle, cluster, local, tmp_path):
    """Two replicas, each with its experts spread over both nodes, behind `m3edge serve --ray` in a subprocess."""
    c, head, worker = cluster
    port = free_port()
    memory = tmp_path / "memory"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "m3edge.cli", "serve", str(bundle), "--ray", c.address,
                             "--replicas", "2", "--replica-cpus", "0.5", "--replica-max-ongoing", "2",
                             "--port", str(port), "--memory-dir", str(memory), "--expert-parallel"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    http = Http(port)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if http.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the Ray Serve app did not come up in 300 s"
            time.sleep(1)
        def spread(body):
            """Rounds of 6 concurrent calls until both replicas answered (Ray's proxy fills its own node's
            replica first, 2 at a time here, so 6 callers reach both): [(rank, json)]."""
            out = []
            with ThreadPoolExecutor(6) as pool:
                for _ in range(5):
                    for status, rank, text in pool.map(lambda _: http.call("POST", "/v1/generate", body), range(6)):
                        assert status == 200, text
                        out.append((rank, json.loads(text)))
                    if len({rank for rank, _ in out}) == 2:
                        break
            return out

        # The same request to either replica gets the same answer (memory off: nothing stored differs), and it
        # is the single process's answer.
        plain = spread({"prompt": PROMPT, "max_bytes": 8, "memory": False})
        assert {rank for rank, _ in plain} == {"0", "1"}
        assert {r["text"] for _, r in plain} == {local.generate(PROMPT, 8, use_memory=False).decode("utf-8", "replace")}
        # Memory on: each replica stores into its own memory.
        stored = spread({"prompt": PROMPT, "max_bytes": 4})
        assert {rank for rank, _ in stored} == {"0", "1"} and all(r["memories"] > 0 for _, r in stored)
        sent = len(plain) + len(stored)
        # A user id (Ray's multiplexed-model header) sticks each user to one replica, the one with its memories
        # (one request at a time here: a full replica would pass a request on to the next choice).
        body = {"prompt": PROMPT, "max_bytes": 2, "memory": False}
        ranks = [[http.call("POST", "/v1/generate", body, {"serve_multiplexed_model_id": f"user-{u}"})[1]
                  for _ in range(3)] for u in range(12)]
        sent += 36
        assert all(len(set(r)) == 1 for r in ranks), ranks
        assert {r[0] for r in ranks} == {"0", "1"}  # 12 users hashed over 2 replicas: both used (p = 1 - 2^-11)
        # The single-process API's checks are the same behind Ray: a bad field is a 422 with one line.
        status, _, text = http.call("POST", "/v1/generate", {"prompt": PROMPT, "max_bytes": -1})
        assert status == 422 and "max_bytes" in json.loads(text)["error"]
        # Summed metrics: both replicas, every request counted once.
        want = sent + 1
        for _ in range(30):
            status, _, text = http.call("GET", "/cluster/metrics")
            assert status == 200
            lines = text.splitlines()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in lines
                        if line.startswith("m3edge_http_requests_total{") and "replica=" not in line
                        and 'path="/v1/generate"' in line)
            if "m3edge_replicas 2" in lines and total == want:
                break
            time.sleep(1)
        assert "m3edge_replicas 2" in lines and total == want, text
        assert any(line.startswith('m3edge_http_requests_total{replica="1"') for line in lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    # Memory is per replica: each kept its own store under --memory-dir, saved when the app was deleted.
    assert sorted(p.name for p in memory.iterdir()) == ["replica-0", "replica-1"]
    assert all((memory / r / "memory.sqlite").is_file() for r in ("replica-0", "replica-1"))


def test_rendezvous_moves_only_the_users_of_a_removed_replica():
    from m3edge.runtime.ray_router import rendezvous

    replicas = ["a1", "b2", "c3"]
    first = {u: rendezvous(f"user-{u}", replicas)[0] for u in range(300)}
    assert set(first.values()) == set(replicas)
    assert first == {u: rendezvous(f"user-{u}", list(reversed(replicas)))[0] for u in range(300)}
    after = {u: rendezvous(f"user-{u}", ["a1", "c3"])[0] for u in range(300)}
    assert all(after[u] == first[u] for u in first if first[u] != "b2")


def test_ray_options_need_ray(bundle):
    r = run_cli("serve", str(bundle), "--replicas", "2")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("--replicas and --expert-parallel need --ray")
    r = run_cli("serve", str(bundle) + "-missing", "--ray", "--replicas", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def serve_once(agent, body):
    """POST /v1/generate once to ``create_app(agent)`` on uvicorn at 127.0.0.1: (status, json)."""
    import threading

    import uvicorn

    from m3edge.runtime.server import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(agent), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.1)
        status, _, text = Http(port).call("POST", "/v1/generate", body)
        return status, json.loads(text)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_killed_expert_node_is_replaced_or_fails_clearly(bundle, cluster, local):
    """Last: removes the worker node. One runner has room to take the lost experts on the head (the answer
    stays the same), the other has not (a clear error naming the dead node, never a partial sum)."""
    from m3edge.runtime.expert_parallel import ExpertParallelError

    c, head, worker = cluster
    mb = total_mb(local)
    roomy, roomy_runner = parallel_agent(bundle, {head: mb, worker.node_id: mb})
    tight, tight_runner = parallel_agent(bundle, {head: 0.6 * mb, worker.node_id: 0.6 * mb})
    try:
        want = local.generate(PROMPT, 16, use_memory=False)
        assert roomy.generate(PROMPT, 16, use_memory=False) == want
        c.remove_node(worker)
        assert roomy.generate(PROMPT, 16, use_memory=False) == want
        replaced = roomy_runner.stats()["replaced"]
        assert len(replaced) == 1 and replaced[0]["dead"] == [worker.node_id] and replaced[0]["to"] == [head]
        assert set(roomy_runner.stats()["nodes"]) == {head}
        with pytest.raises(ExpertParallelError, match=r"expert node 127\.0\.0\.1 \(\w+\) died holding \d+ experts "
                                                      r"and the 1 node\(s\) left cannot hold them"):
            tight.generate(PROMPT, 16, use_memory=False)
        # Behind the single-process server (a real socket): a 503 carrying that one line, for every request.
        status, body = serve_once(tight, {"prompt": PROMPT, "max_bytes": 4, "memory": False})
        assert status == 503 and "died holding" in body["error"] and "cannot hold them" in body["error"]
    finally:
        for r in (roomy_runner, tight_runner):
            r.close()
        roomy.close()
        tight.close()
