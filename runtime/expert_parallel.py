"""Expert parallelism on a Ray cluster: a bundle's experts on actors across nodes, the rest of the agent here.

    agent = EdgeAgent.open("bundle/")
    runner = attach(agent, "bundle/")          # plans, starts one ExpertHost actor per node, loads its experts
    agent.generate(b"def ", 32)                # same bytes as without ``attach``

The dispatching process runs the encoder, routers, alignment and head as before; at each MoE layer
``BundleExecutor.experts`` hands its grouped rows to ``RayExpertRunner`` (the executor's ``expert_runner``
seam): the layer's rows go into Ray's object store (``ray.put``, one copy every host reads; rows under 100 KiB,
as in decoding, ride inline in each call, Ray's in-process store), every node holding one of the layer's active
experts gets one call with the (expert, start, end) slices it owns, and the outputs come back in the order asked, so
the executor adds them per token in expert order exactly as a single process does (greedy output is byte for
byte the same, tests/runtime/test_ray.py). Each host runs its experts through the same ``BundleExecutor`` code path
(``_run_expert``: the same capacity-bucket chunks, the same sessions).

Placement (``m3edge.runtime.placement.plan``) uses each node's expert budget: the ``m3edge_expert_mb`` custom
resource a node was started with (``ray start --resources '{"m3edge_expert_mb": 400}'``), else the bundle's
target profile ``expert_memory_budget_mb``.

Failures: a host that dies (its node gone, its process killed) fails the layer's call; the runner then asks
Ray which nodes are alive, plans the dead nodes' experts onto the survivors' free budgets, loads them there
and runs the layer again (a layer's expert call is a pure function of its rows, so a retry cannot change the
answer). If they do not fit, or no node is left, the request fails with ``ExpertParallelError`` naming the
node and the experts; a host that does not answer within ``timeout_s`` fails it too. Never a partial sum.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3edge.runtime.batcher import BatcherError
from m3edge.runtime.placement import Placement, PlacementError, plan

RESOURCE = "m3edge_expert_mb"  # a node's expert budget in MiB, as a Ray custom resource


class ExpertParallelError(BatcherError):
    """Experts could not be run on the cluster; the message says which and why. A ``BatcherError`` (a
    RuntimeError) so that ``m3edge serve`` answers it as 503 with this message, the service being unable to
    answer now, rather than as a bare 500."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise ExpertParallelError("expert parallelism needs the ray extra: pip install 'm3edge[ray]'") from None
    return ray


def expert_sizes(executor) -> dict[tuple[int, int], int]:
    """(layer, expert) -> bytes of the files it loads: what ``ExpertGraphs.bytes`` counts once it is loaded."""
    from m3edge.bundle import entry_files

    out = {}
    for layer in range(executor.cfg.n_layers):
        for e in range(executor.cfg.n_experts):
            entries = [executor.bundle.find("expert", b, layer, e) for b in executor.capacity_buckets]
            out[(layer, e)] = sum(executor.file_sizes[f] for f in entry_files(entries))
    return out


class ExpertHost:
    """The actor on one node: a ``BundleExecutor`` whose cache holds exactly the experts placed here."""

    def __init__(self, bundle_dir: str, keys: list, threads: int | None = None):
        from m3edge.bundle import open_bundle
        from m3edge.runtime.cache import ExpertCache
        from m3edge.runtime.executor import BundleExecutor
        from m3edge.backends import SessionConfig
        from m3edge.targets import Target

        bundle = open_bundle(bundle_dir)  # every file's sha256 checked on this node too
        target = Target.from_dict(bundle.manifest["target"], f"{bundle_dir}/manifest.json target")
        session = SessionConfig(threads=threads or target.threads, target=target,
                                cache_dir=str(Path(bundle_dir).resolve()))
        # Unbounded: placement already kept this node within its budget, and nothing here may be evicted.
        self.executor = BundleExecutor(bundle, session, ExpertCache(None), banks=False)
        # Each expert in its own sessions, as a single process does when its cache holds every expert (the
        # shared-session path feeds weights as inputs, which could round differently at INT8).
        self.executor.shared_experts = False
        self.load(keys)

    def load(self, keys: list) -> int:
        ex = self.executor
        for key in keys:
            ex.cache.get(tuple(key))
        ex.cache.pin([tuple(k) for k in keys])
        return len(ex.cache)

    def run(self, layer: int, rows: np.ndarray, jobs: list) -> list[np.ndarray]:
        """Each job's (expert, start, end) over rows[start:end], in the order given."""
        ex = self.executor
        return [ex._run_expert(ex.cache.get((layer, e)), rows[a:b]) for e, a, b in jobs]

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


@dataclass
class NodeInfo:
    node_id: str
    address: str
    budget: int  # bytes


def cluster_nodes(ray, default_budget_mb: float, budgets_mb: dict | None = None, share: float = 1.0) -> list[NodeInfo]:
    """Alive nodes and their expert budgets: ``budgets_mb`` (node id -> MiB) first, then the node's
    ``m3edge_expert_mb`` resource, then ``default_budget_mb`` (the bundle's profile); times ``share``, the part
    of each node one placement may use (``1 / replicas`` when every replica places its own experts)."""
    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        mb = (budgets_mb or {}).get(n["NodeID"], n.get("Resources", {}).get(RESOURCE, default_budget_mb))
        out.append(NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"), int(mb * share * 2 ** 20)))
    return sorted(out, key=lambda n: n.node_id)


class RayExpertRunner:
    """The executor's ``expert_runner``: places experts on ExpertHost actors, one per node, and runs layers
    there. ``calls`` and ``remote_s`` count the layers run and the seconds they took (the bench's overhead)."""

    def __init__(self, bundle_dir, sizes: dict, default_budget_mb: float, budgets_mb: dict | None = None,
                 threads: int | None = None, timeout_s: float = 120.0, replace: bool = True,
                 put_min_bytes: int = 100 * 1024, share: float = 1.0):
        self.ray = ray = import_ray()
        if not ray.is_initialized():
            raise ExpertParallelError("ray is not initialized: call ray.init(address) first")
        self.bundle_dir = str(Path(bundle_dir).resolve())
        self.sizes, self.threads, self.timeout_s, self.replace = dict(sizes), threads, timeout_s, replace
        self.put_min_bytes = put_min_bytes
        self.default_budget_mb, self.budgets_mb, self.share = default_budget_mb, budgets_mb, share
        self.nodes = {n.node_id: n for n in cluster_nodes(ray, default_budget_mb, budgets_mb, share)}
        try:
            self.placement = plan(self.sizes, {n: info.budget for n, info in self.nodes.items()})
        except PlacementError as e:
            raise ExpertParallelError(f"cannot place the experts on {len(self.nodes)} node(s): {e}") from None
        self.hosts: dict[str, object] = {}
        self._lock = threading.Lock()
        self.calls = 0
        self.remote_s = 0.0
        self.replaced: list[dict] = []  # one record per node lost and re-placed
        self.broken = ""  # why the experts can no longer all be run, once that is so
        for node in self.placement.nodes:
            self.hosts[node] = self._start(node, self.placement.experts_on(node))
        self._wait([h.node.remote() for h in self.hosts.values()], "starting expert hosts")

    def _start(self, node_id: str, keys: list):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = self.ray.remote(ExpertHost).options(
            num_cpus=0, max_restarts=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        return actor.remote(self.bundle_dir, keys, self.threads)

    def _wait(self, refs, what: str):
        try:
            return self.ray.get(refs, timeout=self.timeout_s)
        except self.ray.exceptions.GetTimeoutError:
            raise ExpertParallelError(f"{what}: no answer within {self.timeout_s:g} s") from None
        except self.ray.exceptions.RayError as e:  # e.g. a node without the bundle: its host failed to open it
            lines = [line for line in str(e).splitlines() if line.strip()]
            raise ExpertParallelError(f"{what} failed: {lines[-1].strip() if lines else type(e).__name__}") from None

    def __call__(self, layer: int, jobs: list, rows: np.ndarray) -> list[np.ndarray]:
        with self._lock:  # one layer at a time: a re-placement must not race another layer's dispatch
            if self.broken:  # experts were lost and could not be re-placed: every later request fails the same way
                raise ExpertParallelError(self.broken)
            t = time.perf_counter()
            for _ in range(len(self.nodes) + 1):  # each retry follows the loss of at least one node
                try:
                    out = self._run(layer, jobs, rows)
                    self.calls += 1
                    self.remote_s += time.perf_counter() - t
                    return out
                except (self.ray.exceptions.RayActorError, self.ray.exceptions.ObjectLostError) as e:
                    self._recover(e)
                except self.ray.exceptions.GetTimeoutError:
                    nodes = sorted({self.nodes[n].address for n in self.hosts if n in self.nodes})
                    raise ExpertParallelError(f"layer {layer}: the expert hosts on {', '.join(nodes)} did not answer "
                                              f"within {self.timeout_s:g} s") from None
            raise ExpertParallelError("expert hosts kept failing; giving up on this request")

    def _run(self, layer, jobs, rows):
        # Large activations go into the shared-memory object store once, every host reading the one copy; small
        # ones (decoding: a few rows of d_model floats) ride inline in each call, as Ray does for any argument
        # under its 100 KiB direct-call limit: a plasma object would cost a cross-node fetch per host.
        ref = self.ray.put(rows) if rows.nbytes >= self.put_min_bytes else rows
        by_node: dict[str, list] = {}
        for i, (e, a, b) in enumerate(jobs):
            by_node.setdefault(self.placement.node_of[(layer, e)], []).append((i, (e, a, b)))
        calls = [self.hosts[node].run.remote(layer, ref, [job for _, job in items]) for node, items in by_node.items()]
        results = self.ray.get(calls, timeout=self.timeout_s) if calls else []
        ys: list = [None] * len(jobs)
        for items, out in zip(by_node.values(), results):
            for (i, _), y in zip(items, out):
                ys[i] = y
        return ys

    def _recover(self, error) -> None:
        """Find the dead hosts, move their experts to live ones, or fail with a clear error."""
        alive = {n.node_id: n for n in cluster_nodes(self.ray, self.default_budget_mb, self.budgets_mb, self.share)}
        dead = []
        for node, host in list(self.hosts.items()):
            ok = node in alive
            if ok:
                try:
                    self.ray.get(host.node.remote(), timeout=min(10.0, self.timeout_s))
                except Exception:
                    ok = False
            if not ok:
                dead.append(node)
                del self.hosts[node]
        if not dead:
            raise ExpertParallelError(f"an expert host failed while its node is alive: {error}") from None
        lost = {k: self.sizes[k] for node in dead for k in self.placement.experts_on(node)}
        where = ", ".join(f"{self.nodes[n].address} ({n[:8]})" for n in dead)
        if not self.replace:
            self.broken = f"expert node {where} died holding {len(lost)} experts; re-placement is off"
            raise ExpertParallelError(self.broken)
        free = {n: alive[n].budget - self.placement.used.get(n, 0) for n in alive}
        try:
            moved = plan(lost, free)
        except PlacementError as e:
            self.broken = (f"expert node {where} died holding {len(lost)} experts and the {len(alive)} node(s) "
                           f"left cannot hold them: {e}")
            raise ExpertParallelError(self.broken) from None
        node_of = {k: n for k, n in self.placement.node_of.items() if n not in dead} | moved.node_of
        used = {n: sum(self.sizes[k] for k, m in node_of.items() if m == n) for n in alive}
        self.placement = Placement(node_of, used)
        loads = []
        for node in moved.nodes:
            keys = moved.experts_on(node)
            if node in self.hosts:
                loads.append(self.hosts[node].load.remote(keys))
            else:
                self.hosts[node] = self._start(node, keys)
                loads.append(self.hosts[node].node.remote())
        self._wait(loads, "re-placing experts")
        self.nodes = alive
        self.replaced.append({"dead": dead, "experts": len(lost), "to": moved.nodes})

    def stats(self) -> dict:
        return {"nodes": {n: len(self.placement.experts_on(n)) for n in self.placement.nodes},
                "calls": self.calls, "remote_s": self.remote_s, "replaced": self.replaced}

    def close(self) -> None:
        for host in self.hosts.values():
            self.ray.kill(host)
        self.hosts.clear()


def attach(agent, bundle_dir, budgets_mb: dict | None = None, threads: int | None = None,
           timeout_s: float = 120.0, replace: bool = True, put_min_bytes: int = 100 * 1024,
           share: float = 1.0) -> RayExpertRunner:
    """Run ``agent``'s experts on the Ray cluster this process is connected to (``ray.init`` first).

    ``budgets_mb``: node id -> expert budget in MiB, over the nodes' ``m3edge_expert_mb`` resources and the
    profile's ``expert_memory_budget_mb``. ``put_min_bytes``: a layer's rows of at least this size go through
    ``ray.put`` (one shared copy), smaller ones inline in each call."""
    ex = agent.executor
    target = ex.bundle.manifest["target"]
    runner = RayExpertRunner(bundle_dir, expert_sizes(ex), target["expert_memory_budget_mb"], budgets_mb,
                             threads=threads, timeout_s=timeout_s, replace=replace, put_min_bytes=put_min_bytes, share=share)
    ex.expert_runner = runner
    return runner
