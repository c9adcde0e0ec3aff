"""``m3edge serve BUNDLE --ray [ADDRESS] --replicas N``: the agent as a Ray Serve deployment.

Each replica builds its own ``EdgeAgent`` (its own dynamic batcher, expert cache and long-term memory) and
the app of ``m3edge.runtime.server.create_app`` around it, so every route of the single-process server is
served unchanged, whatever routes that app has. Ray Serve's HTTP proxy spreads requests over replicas and runs
each app's lifespan (shutdown: drain the batcher, save the memory). Two things are added around the app:

* ``GET /cluster/metrics``: the sum over replicas of every sample of each replica's own ``/metrics`` (each
  replica reports to a named ``MetricsBoard`` actor once a second while it serves, and before answering this
  route), plus the per-replica values labelled ``replica="<rank>"``. ``/metrics`` itself stays the answering
  replica's own; its ``path="/metrics"`` count includes the scrapes made for these reports. Ray's own Serve metrics (``ray_serve_*``: requests, latency, queue per
  replica) are on each node's Ray metrics port as usual.
* ``x-m3edge-replica`` on every response: the rank of the replica that answered.

Memory is per replica. With ``--memory-dir DIR`` replica of rank r keeps ``DIR/replica-r`` (ranks are stable
across restarts, so a restarted replica reloads its own store; two replicas never write one store). A caller
that wants its memories back sends ``serve_multiplexed_model_id: <user>``: ``ray_router.StickyRouter`` sends
every request with that id to the same replica (rendezvous hashing), the one holding its memories.

Nothing here imports ray at module level: ``import m3edge.runtime`` stays ray-free.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m3edge.errors import M3EdgeError

APP_NAME = "m3edge"
BOARD = "m3edge-metrics"
NAMESPACE = "m3edge"
REPORT_EVERY_S = 1.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


class DeployFailed(M3EdgeError):
    """The deployment did not come up (a replica failed to start, or the wait timed out)."""

    exit_code = 1


@dataclass(frozen=True)
class ReplicaConfig:
    """What each replica opens: ``EdgeAgent.open`` options, batching, expert parallelism."""

    bundle_dir: str
    memory_dir: str | None = None
    cache_experts: int | None = None
    expert_workers: int = 1
    threads: int | None = None
    batching: dict | None = field(default_factory=dict)  # BatcherConfig fields; None: batching off
    expert_parallel: bool = False
    expert_share: float = 1.0  # the part of each node's expert budget one replica's placement may use


def parse_metrics(text: str) -> dict[str, tuple[str, str, float]]:
    """Prometheus text -> {name+labels: (name, labels, value)}; HELP/TYPE lines and non-numbers skipped."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m is None or line.startswith("#"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1) + (m.group(2) or "")] = (m.group(1), m.group(2) or "", value)
    return out


def _number(v: float) -> str:
    """Counters print whole (``:g`` would round 12345678 to 1.23457e+07)."""
    return str(int(v)) if v.is_integer() else repr(v)


def merge_metrics(reports: dict[str, str]) -> str:
    """Replica rank -> its /metrics text  ->  one Prometheus text: each sample summed over replicas
    (counters add; of the gauges, queued requests and memories add too), then each replica's own value with a
    ``replica`` label."""
    parsed = {r: parse_metrics(t) for r, t in sorted(reports.items())}
    totals: dict[str, tuple[str, str, float]] = {}
    for samples in parsed.values():
        for key, (name, labels, v) in samples.items():
            t = totals.get(key)
            totals[key] = (name, labels, v + (t[2] if t else 0.0))
    lines = [f"# HELP m3edge_replicas Replicas reporting to {BOARD}.", "# TYPE m3edge_replicas gauge",
             f"m3edge_replicas {len(parsed)}"]
    for key, (name, labels, v) in sorted(totals.items()):
        lines.append(f"{key} {_number(v)}")
    for rank, samples in parsed.items():
        for key, (name, labels, v) in sorted(samples.items()):
            inner = labels[1:-1]
            lab = f'replica="{rank}"' + (f",{inner}" if inner else "")
            lines.append(f"{name}{{{lab}}} {_number(v)}")
    return "\n".join(lines) + "\n"


class MetricsBoard:
    """A named actor holding each replica's latest /metrics text."""

    def __init__(self):
        self.reports: dict[str, str] = {}

    def report(self, rank: str, text: str) -> None:
        self.reports[rank] = text

    def merged(self, live: list[str] | None = None) -> str:
        """The reports of ``live`` ranks (a replica removed by scaling down is left out) merged."""
        return merge_metrics({r: t for r, t in self.reports.items() if live is None or r in live})


def _board():
    import ray

    return ray.remote(MetricsBoard).options(name=BOARD, namespace=NAMESPACE, get_if_exists=True,
                                            lifetime="detached", num_cpus=0).remote()


def build_deployment():
    """The Serve deployment class (made on first use: defining it needs ray)."""
    from ray import serve

    @serve.ingress()
    class AgentServer:
        async def __init__(self, config: ReplicaConfig):
            from m3edge.runtime.agent import EdgeAgent
            from m3edge.runtime.batcher import BatcherConfig

            self.config = config
            ctx = serve.get_replica_context()
            self.rank = str(ctx.rank.rank if ctx.rank is not None else ctx.replica_id.unique_id)
            memory_dir = None if config.memory_dir is None else Path(config.memory_dir) / f"replica-{self.rank}"
            from m3edge.runtime.options import RuntimeOptions

            self.agent = EdgeAgent.open(config.bundle_dir, memory_dir=memory_dir, options=RuntimeOptions(
                cache_experts=config.cache_experts, expert_workers=config.expert_workers, threads=config.threads))
            if config.expert_parallel:
                from m3edge.runtime.expert_parallel import attach

                attach(self.agent, config.bundle_dir, share=config.expert_share)
            if config.batching is not None:
                b = dict(config.batching)
                b.setdefault("preferred_batch_sizes", tuple(t for t in self.agent.executor.token_buckets
                                                            if t <= b.get("max_batch_size", 64)) or (1,))
                self.agent.enable_batching(BatcherConfig(**b))
            self.board = _board()
            self.served, self.reporter = 0, None

        def __serve_build_asgi_app__(self):
            from m3edge.runtime.server import create_app

            return self.wrap(create_app(self.agent))

        def wrap(self, app):
            """The app plus /cluster/metrics and the replica header."""
            tag = [(b"x-m3edge-replica", self.rank.encode())]

            async def asgi(scope, receive, send):
                if scope["type"] != "http":
                    return await app(scope, receive, send)
                if scope["path"] == "/cluster/metrics":
                    return await self.cluster_metrics(app, send, tag)

                async def tagged(message):
                    if message["type"] == "http.response.start":
                        message = {**message, "headers": [*message.get("headers", []), *tag]}
                    await send(message)

                if self.reporter is None:  # started on the replica's own event loop, with its first request
                    self.reporter = asyncio.get_running_loop().create_task(self.report_loop(app))
                self.served += 1
                await app(scope, receive, tagged)

            return asgi

        async def report_loop(self, app) -> None:
            """Report this replica's /metrics to the board once a second while it serves anything."""
            reported = -1
            while True:
                if self.served != reported:
                    reported = self.served
                    try:
                        await self.report(app)
                    except Exception:  # the board restarting must not stop the replica; next tick retries
                        reported = -1
                await asyncio.sleep(REPORT_EVERY_S)

        async def own_metrics(self, app) -> str:
            """This replica's /metrics, through the app itself (so it has whatever the app reports)."""
            scope = {"type": "http", "method": "GET", "path": "/metrics", "raw_path": b"/metrics",
                     "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
                     "server": ("127.0.0.1", 0), "client": ("127.0.0.1", 0), "root_path": ""}
            body = []

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                if message["type"] == "http.response.body":
                    body.append(message.get("body", b""))

            await app(scope, receive, send)
            return b"".join(body).decode()

        async def report(self, app) -> None:
            await self.board.report.remote(self.rank, await self.own_metrics(app))

        async def cluster_metrics(self, app, send, tag) -> None:
            await self.report(app)
            live = [str(r) for r in range(serve.get_replica_context().world_size)]
            text = (await self.board.merged.remote(live)).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain; version=0.0.4"),
                                    (b"content-length", str(len(text)).encode()), *tag]})
            await send({"type": "http.response.body", "body": text})

    return AgentServer


@dataclass
class RayServe:
    """A running deployment; ``close`` deletes the app (and stops Ray when this process started it)."""

    url: str
    replicas: int
    started_ray: bool

    def delete(self) -> None:
        """Delete the app (each replica drains and saves its memory) and its metrics board."""
        import ray
        from ray import serve

        serve.delete(APP_NAME)
        try:
            ray.kill(ray.get_actor(BOARD, namespace=NAMESPACE))
        except ValueError:  # no replica got as far as making it
            pass

    def close(self) -> None:
        import ray
        from ray import serve

        try:
            self.delete()
        finally:
            if self.started_ray:
                serve.shutdown()
                ray.shutdown()


def deploy(config: ReplicaConfig, replicas: int = 1, address: str | None = None, host: str = "127.0.0.1",
           port: int = 8000, replica_cpus: float = 1.0, max_ongoing: int = 8, timeout_s: float = 600.0) -> RayServe:
    """Connect to (``address``) or start a Ray cluster, deploy ``replicas`` replicas, wait until they serve.

    The HTTP proxy runs on the head node only (``host:port``), where ``m3edge serve --ray`` was pointed.
    ``max_ongoing``: requests a replica takes at once. Ray Serve's proxy sends a request to a replica on its
    own node first and to the others only when those are full, so this is also how many callers the head's
    replica keeps before the rest spread out; 8 lets a replica's batcher form batches of 8 decoding steps."""
    from m3edge.runtime.expert_parallel import import_ray

    ray = import_ray()
    from ray import serve

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or None, namespace=NAMESPACE, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    # Every replica places its own copy of the experts: each may use its share of every node's budget.
    config = ReplicaConfig(**(asdict(config) | {"expert_share": 1.0 / replicas,
                                                "bundle_dir": str(Path(config.bundle_dir).resolve()),
                                                "memory_dir": None if config.memory_dir is None
                                                else str(Path(config.memory_dir).resolve())}))
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    from ray.serve.config import RequestRouterConfig

    app = serve.deployment(build_deployment(), name="agent", num_replicas=replicas,
                           ray_actor_options={"num_cpus": replica_cpus}, max_ongoing_requests=max_ongoing,
                           request_router_config=RequestRouterConfig(
                               request_router_class="m3edge.runtime.ray_router.StickyRouter")).bind(config)
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(APP_NAME)
        state = getattr(status, "status", None)
        if state == "RUNNING":
            break
        if state in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            message = getattr(status, "message", "") or f"not running after {timeout_s:g} s"
            RayServe("", replicas, started).close()
            raise RuntimeError(f"Ray Serve deployment {state or 'unknown'}: {message.strip().splitlines()[-1]}")
        time.sleep(0.5)
    return RayServe(f"http://{host}:{port}", replicas, started)


def serve_cli(bundle_dir, address: str, replicas: int, replica_cpus: float, expert_parallel: bool, *, host: str,
              port: int, memory_dir, cache_experts, expert_workers: int, batching: dict | None,
              max_ongoing: int = 8) -> None:
    """``m3edge serve --ray``: check the bundle and the extra here (exit 2, one line), then serve."""
    from m3edge.bundle import open_bundle
    from m3edge.errors import BadInput

    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
        import starlette  # noqa: F401
    except ImportError:
        raise BadInput("m3edge serve --ray needs the ray extra: pip install 'm3edge[ray]'") from None
    open_bundle(bundle_dir)  # a bad bundle is refused here, not in every replica
    config = ReplicaConfig(str(bundle_dir), memory_dir, cache_experts, expert_workers,
                           max(1, round(replica_cpus)), batching, expert_parallel)
    try:
        serve_forever(config, replicas, address or None, host, port, replica_cpus, max_ongoing,
                      say=lambda m: print(m, file=sys.stderr, flush=True))
    except ConnectionError as e:
        raise BadInput(f"cannot reach the Ray cluster at {address!r}: {e}") from None
    except RuntimeError as e:
        raise DeployFailed(str(e)) from None


def serve_forever(config: ReplicaConfig, replicas: int, address: str | None, host: str, port: int,
                  replica_cpus: float, max_ongoing: int = 8, say=print) -> None:
    """The CLI's loop: deploy, print where, block until Ctrl-C or SIGTERM, then remove the app."""
    import signal

    running = deploy(config, replicas, address, host, port, replica_cpus, max_ongoing)
    say(f"serving {config.bundle_dir} on {running.url} with {replicas} Ray Serve replica(s)")
    done = {"flag": False}

    def handler(signum, frame):
        done["flag"] = True

    old = signal.signal(signal.SIGTERM, handler)
    try:
        while not done["flag"]:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        running.close()
