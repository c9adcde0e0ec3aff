"""``m3edge bench``: engines and expert-cache settings measured side by side, in one run, on this machine.

Every measurement runs in a fresh process (``python -m m3edge.bench worker ...``), so cold start and peak
RSS belong to that configuration alone. Threads are fixed (2 by default, a small board's spare cores).

Workloads, on prompts cut from the eval split:
  engines   greedy decoding at batch 1 (the torch agent and the runtime produce the same bytes, so they do
            the same work): torch eager fp32 vs the runtime with every expert resident
  cache     sampled decoding (temperature 0.8, fixed seed): the runtime at several experts-per-layer cache
            sizes, each eviction policy, prefetch off and on; hit rate and bytes/s
  decode    greedy decoding with long-term memory off, at batch 1 and with B streams in lockstep, for every
            engine in ``ENGINES`` (torch eager, the monolithic onnx graph, the runtime on any bundle): the
            ``full`` suite's engine rows, with the experts each runtime step touched (the bandwidth floor)
  full      ``run_full``: builds the artefacts (checkpoint, monolithic graph, fp32 / INT8 / LiteRT bundles),
            then every engine row, the floor, the cache, batching and memory-store sweeps, into one JSON
            that ``bench/report.py`` turns into README's tables and the plots
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROMPT_BYTES = 48
ROOT = Path(__file__).resolve().parents[2]  # the source tree: the full suite's checkpoints and scripts live here


def prompts(data_dir: Path, n: int) -> list[bytes]:
    from m3edge.data import load_split

    text = load_split(data_dir, "eval").tobytes()
    starts = np.linspace(0, len(text) - PROMPT_BYTES - 1, n).astype(int)
    return [text[s:s + PROMPT_BYTES] for s in starts]


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a worker
    would report its parent's size whenever the parent was the larger (measured: every row read 4 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


class TorchEngine:
    """The reference agent, eager fp32: what a user runs without m3edge."""

    def __init__(self, args: dict):
        import torch

        from m3edge import checkpoint

        torch.set_num_threads(args["threads"])
        self.torch = torch
        if args.get("checkpoint"):
            self.agent = checkpoint.load(args["checkpoint"])
        else:
            self.agent = checkpoint.agent_from_source(
                json.loads(Path(args["bundle"], "manifest.json").read_text())["source"])
        self.agent.memory.storage.clock = lambda: 0.0  # a frozen clock: identical memory behaviour everywhere

    def generate(self, prompt: bytes, n: int, temperature: float) -> bytes:
        return self.agent.generate(prompt, n, temperature, seed=0)

    def step(self, windows: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.agent.step(self.torch.from_numpy(windows), use_memory=False).logits.numpy()

    def stats(self) -> dict:
        return {}


class MonolithicEngine:
    """One onnx graph of the whole step (export/monolithic.py) in one onnxruntime session."""

    def __init__(self, args: dict):
        from m3edge.backends import SessionConfig
        from m3edge.backends.onnxruntime.runtime import OrtGraph

        self.graph = OrtGraph(args["onnx"], SessionConfig(threads=args["threads"]))

    def step(self, windows: np.ndarray) -> np.ndarray:
        return self.graph.run(windows)[0]

    def stats(self) -> dict:
        return {}


class RuntimeEngine:
    """The m3edge runtime on a bundle (any precision or backend the bundle was exported with)."""

    def __init__(self, args: dict):
        from m3edge.runtime.agent import EdgeAgent
        from m3edge.runtime.options import RuntimeOptions

        self.agent = EdgeAgent.open(args["bundle"], options=RuntimeOptions(
            cache_experts=args.get("cache"), policy=args.get("policy", "lfu"), prefetch=args.get("prefetch", "off"),
            threads=args["threads"], clock=lambda: 0.0))
        if args.get("cache") is None:
            self.agent.executor.cache.unbounded()  # every expert resident: measure the engine, not the cache
        n = self.agent.cfg
        self.touched = np.zeros((n.n_layers, n.n_experts), dtype=np.int64)  # steps in which each expert ran

    def generate(self, prompt: bytes, n: int, temperature: float) -> bytes:
        return self.agent.generate(prompt, n, temperature, seed=0)

    def step(self, windows: np.ndarray) -> np.ndarray:
        fwd = self.agent.executor.forward(windows)
        for layer, r in enumerate(fwd.routing):
            self.touched[layer, np.unique(r.index[r.keep])] += 1
        return fwd.logits

    def stats(self) -> dict:
        return dict(self.agent.stats()["cache"])


ENGINES = {"torch": TorchEngine, "monolithic": MonolithicEngine, "runtime": RuntimeEngine}


def greedy(engine, prompts: list[bytes], n: int, context: int) -> list[bytes]:
    """Greedy decoding of equal-length prompts in lockstep: one engine call per step for all streams."""
    b, length = len(prompts), len(prompts[0])
    buf = np.zeros((b, context + length + n), dtype=np.int64)  # left zero padding, as data.windows does
    buf[:, context:context + length] = np.frombuffer(b"".join(prompts), dtype=np.uint8).reshape(b, length)
    for i in range(n):
        end = context + length + i
        buf[:, end] = engine.step(buf[:, end - context:end]).argmax(-1)
    return [bytes(row[context + length:].astype(np.uint8)) for row in buf]


def _generate_workload(eng, args: dict, t0: float, t_open: float) -> dict:
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    n, temp = args["bytes"], args["temperature"]
    first = eng.generate(ps[0][:8], n, temp)[:1]  # cold start: open to the first answered byte
    t_first = time.perf_counter()
    for p in ps[:args.get("warmup", len(ps))]:  # warm-up, not timed: loads, caches and allocators settle
        eng.generate(p, n, temp)
    before = eng.stats()
    outs, times = [], []
    for _ in range(args.get("passes", 1)):
        outs, t1 = [], time.perf_counter()
        for p in ps:
            outs.append(eng.generate(p, n, temp))
        times.append(time.perf_counter() - t1)
    after = eng.stats()
    cache = {k: after[k] - before[k] for k in ("hits", "misses", "evictions", "prefetched", "prefetch_hits")} if after else {}
    if cache:  # the timed passes alone
        cache["hit_rate"] = cache["hits"] / max(1, cache["hits"] + cache["misses"])
    speeds = [len(ps) * n / t for t in times]
    return {"bytes_per_s": float(np.median(speeds)), "bytes_per_s_runs": speeds, "open_s": t_open - t0,
            "cold_start_s": t_first - t0, "peak_rss_mb": peak_rss_mb(), "cache": cache, "first": first.hex(),
            "outputs_sha": hashlib.sha256(b"".join(outs)).hexdigest()[:16]}


def _decode_workload(eng, args: dict, t0: float, t_open: float) -> dict:
    """Greedy, memory off: batch 1 (each of ``prompts`` on its own), then ``batch_prompts`` in lockstep."""
    ps = [bytes.fromhex(p) for p in args["prompts"]]
    bs = [bytes.fromhex(p) for p in args.get("batch_prompts", args["prompts"])]
    k = args["context"]
    greedy(eng, [ps[0]], 1, k)  # cold start: open to the first answer
    out = {"open_s": t_open - t0, "cold_start_s": time.perf_counter() - t0}
    phases = {"batch1": (lambda: [greedy(eng, [p], args["bytes"], k)[0] for p in ps], 1,
                         len(ps) * args["bytes"], len(ps) * args["bytes"]),
              "batched": (lambda: greedy(eng, bs, args["batch_bytes"], k), len(bs),
                          len(bs) * args["batch_bytes"], args["batch_bytes"])}
    for name, (run, streams, n_bytes, steps) in phases.items():
        run()  # warm-up pass, not timed
        touched = getattr(eng, "touched", None)
        if touched is not None:
            touched[:] = 0
        times = []
        for _ in range(args.get("passes", 1)):
            t = time.perf_counter()
            outs = run()
            times.append(time.perf_counter() - t)
        out[name] = {"bytes_per_s_runs": [n_bytes / t for t in times], "bytes": n_bytes, "streams": streams,
                     "outputs_sha": hashlib.sha256(b"".join(outs)).hexdigest()[:16],
                     "peak_rss_mb": peak_rss_mb()}  # the high-water mark only grows: the peak up to this phase
        if touched is not None:  # per step, the fraction of steps in which each expert ran
            out[name]["touched"] = (touched / (len(times) * steps)).tolist()
    return out


WORKLOADS = {"generate": _generate_workload, "decode": _decode_workload}


def worker(args: dict) -> dict:
    """One configuration, in this (fresh) process."""
    t0 = time.perf_counter()
    eng = ENGINES[args["engine"]](args)
    return WORKLOADS[args.get("workload", "generate")](eng, args, t0, time.perf_counter())


def measure(config: dict, timeout: int = 900) -> dict:
    # OMP_WAIT_POLICY=PASSIVE: torch's OpenMP threads sleep instead of spinning at each barrier, as the runtime's
    # onnxruntime sessions do (allow_spinning 0). With any other load on the cores, spinning barriers made torch
    # eager ~90x slower (small reference, batch 1: 229 ms per step spinning, 2.5 ms passive, same machine, same
    # minute). A shared development machine is the normal case here, and the baseline should not lose to it.
    env = os.environ | {"OMP_NUM_THREADS": str(config["threads"]), "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, "-m", "m3edge.bench", "worker", json.dumps(config)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench worker failed for {config['engine']}: {r.stderr.strip().splitlines()[-1:]}")
    # The last line: libraries may print to stdout before it.
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_bench(bundle: str | Path, data_dir: Path, threads: int = 2, n_prompts: int = 4, n_bytes: int = 64,
              cache_sizes=(1, 8, 16, 32, 64), policies=("lru", "lfu"), with_torch: bool = True,
              progress=None) -> dict:
    from m3edge.bundle import open_bundle

    b = open_bundle(bundle)
    cfg = b.manifest["model_config"]
    base = {"bundle": str(bundle), "threads": threads, "bytes": n_bytes,
            "prompts": [p.hex() for p in prompts(data_dir, n_prompts)]}
    precision = sorted(set(b.manifest["precision"]["graphs"].values()))
    rows, sweep = [], []
    engines = ([("torch-eager", {"engine": "torch"})] if with_torch else []) + [
        ("m3edge-runtime", {"engine": "runtime", "cache": cfg["n_experts"], "policy": "lru", "prefetch": "off"})]
    for name, extra in engines:
        r = measure(base | extra | {"temperature": 0.0})
        rows.append({"engine": name, "precision": "fp32" if name == "torch-eager" else "/".join(precision),
                     "batch": 1, "bytes_per_s": r["bytes_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                     "cold_start_s": r["cold_start_s"], "outputs_sha": r["outputs_sha"]})
        if progress:
            progress(f"{name}: {r['bytes_per_s']:.1f} bytes/s")
    sweep = cache_sweep(bundle, base, cfg["n_experts"], cache_sizes, policies, progress=progress)
    return {"machine": machine(), "threads": threads, "bundle": str(bundle), "target": b.manifest["target"]["name"],
            "workload": {"prompts": n_prompts, "prompt_bytes": PROMPT_BYTES, "bytes_per_prompt": n_bytes},
            "rows": rows, "cache_sweep": sweep}


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def spread(values) -> dict:
    """A figure as DESIGN asks for it: the median of several runs, with the runs' min and max."""
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "runs": v}


def cache_sweep(bundle, base: dict, n_experts: int, cache_sizes=(1, 8, 16, 32, 64), policies=("lru", "lfu"),
                prefetch=("off", "thread", "inline"), passes: int = 1, warmup: int | None = None, progress=None) -> list[dict]:
    """Sampled decoding (temperature 0.8, fixed seed) at each experts-per-layer cache size, policy and prefetch
    setting, each in a fresh process; ``passes`` timed passes after the warm-up, bytes/s their median."""
    sweep = []
    for size in [s for s in cache_sizes if s <= n_experts]:
        for policy in policies:
            for pf in prefetch:
                cfg = base | {"bundle": str(bundle), "engine": "runtime", "cache": size, "policy": policy,
                              "prefetch": pf, "temperature": 0.8, "passes": passes}
                if warmup is not None:
                    cfg["warmup"] = warmup
                r = measure(cfg)
                sweep.append({"experts_per_layer": size, "policy": policy, "prefetch": pf,
                              "hit_rate": r["cache"]["hit_rate"], "bytes_per_s": r["bytes_per_s"],
                              "bytes_per_s_spread": spread(r["bytes_per_s_runs"]),
                              "peak_rss_mb": r["peak_rss_mb"], "evictions": r["cache"]["evictions"]})
                if progress:
                    progress(f"cache {size}/{policy}/prefetch {pf}: "
                             f"hit rate {r['cache']['hit_rate']:.2f}, {r['bytes_per_s']:.1f} bytes/s")
    return sweep


def format_report(r: dict) -> str:
    lines = [f"machine: {r['machine']['processor']}, {r['machine']['cpus']} cpus, {r['threads']} threads; "
             f"bundle {r['bundle']} ({r['target']})",
             f"{'engine':<16} {'precision':<9} {'batch':>5} {'bytes/s':>9} {'cold start s':>12} {'peak RSS MB':>11}"]
    for row in r["rows"]:
        lines.append(f"{row['engine']:<16} {row['precision']:<9} {row['batch']:>5} {row['bytes_per_s']:>9.1f} "
                     f"{row['cold_start_s']:>12.2f} {row['peak_rss_mb']:>11.1f}")
    if r["cache_sweep"]:
        lines.append(f"{'experts/layer':>13} {'policy':<6} {'prefetch':<8} {'hit rate':>8} {'bytes/s':>9} {'peak RSS MB':>11}")
        for s in r["cache_sweep"]:
            lines.append(f"{s['experts_per_layer']:>13} {s['policy']:<6} {s['prefetch']:<8} {s['hit_rate']:>8.3f} "
                         f"{s['bytes_per_s']:>9.1f} {s['peak_rss_mb']:>11.1f}")
    return "\n".join(lines)


def batching_bench(bundle: str | Path, data_dir: Path, callers=(1, 4, 16, 32), steps_per_caller: int = 160,
                   threads: int = 2, max_queue_delay_ms: float = 2.0, repeats: int = 1, progress=None) -> dict:
    """Concurrent callers each issue single-window ``step`` calls; batching off vs on, in one process.

    Reports throughput (steps/s) and p50/p99 latency per step, and the compute time of one batch of each
    size so the p99 goal (max_queue_delay + 2 x single-batch compute) can be checked. With ``repeats`` > 1
    each figure is the median of that many runs, with its spread.
    """
    import threading

    from m3edge.data import load_split
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.batcher import BatcherConfig
    from m3edge.runtime.options import RuntimeOptions

    text = load_split(data_dir, "eval").tobytes()
    agents = {}
    for batching in (False, True):
        agent = agents[batching] = EdgeAgent.open(bundle, options=RuntimeOptions(threads=threads, clock=lambda: 0.0))
        agent.executor.cache.unbounded()  # every expert resident: measure batching, not the cache
        if batching:
            buckets = tuple(agent.executor.token_buckets)
            agent.enable_batching(BatcherConfig(max_batch_size=max(buckets), preferred_batch_sizes=buckets,
                                                max_queue_delay_ms=max_queue_delay_ms, max_queue_size=4096))
        for pos in range(0, 4000, 97):  # warm-up: load every expert the workload touches
            agent._forward(agent._windows(text, np.arange(pos, pos + 64)), False)
        for b in agent.executor.token_buckets:  # and every per-token graph a batch size opens on first use
            agent._forward(agent._windows(text, np.arange(1000, 1000 + b)), False)

    def one_run(batching: bool, n: int) -> dict:
        agent = agents[batching]
        lat, lock, together = [], threading.Lock(), threading.Barrier(n)

        def caller(c):
            mine = []
            together.wait()  # steady state from the first step, not threads trickling in as they start
            for s in range(steps_per_caller):
                at = (c * 7919 + s * 131) % (len(text) - 64)
                t = time.perf_counter()
                agent.step(text[at:at + 32], use_memory=False)
                mine.append(time.perf_counter() - t)
            with lock:
                lat.extend(mine)

        before = agent.batcher.metrics() if batching else None
        ts = [threading.Thread(target=caller, args=(c,)) for c in range(n)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        run = {"steps_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50) * 1e3),
               "p99_ms": float(np.percentile(lat, 99) * 1e3)}
        if batching:  # this run's batches alone (the batcher's counters are cumulative)
            m = agent.batcher.metrics()
            run["avg_batch_size"] = ((m["inference_count"] - before["inference_count"])
                                     / max(1, m["execution_count"] - before["execution_count"]))
        return run

    # Off and on alternate, each repeat and caller count side by side, with the single-batch compute measured
    # in between: the host's speed drifts over minutes, and a slow spell must not land on one side only.
    runs = {(batching, n): [] for batching in (False, True) for n in callers}
    times = {str(b): [] for b in (1, 16, 32)}
    for _ in range(repeats):
        for n in callers:
            for batching in (False, True):
                runs[batching, n].append(one_run(batching, n))
        for b in (1, 16, 32):
            w = agents[False]._windows(text, np.arange(1000, 1000 + b))
            agents[False]._forward(w, False)
            for _ in range(5):
                t = time.perf_counter()
                agents[False]._forward(w, False)
                times[str(b)].append(time.perf_counter() - t)
    compute_ms = {b: float(np.median(t) * 1e3) for b, t in times.items()}
    rows = []
    for (batching, n), got in runs.items():
        row = {"batching": batching, "callers": n}
        for key in got[0]:
            row[key] = float(np.median([r[key] for r in got]))
            if repeats > 1:
                row[key + "_spread"] = spread([r[key] for r in got])
        rows.append(row)
        if progress:
            progress(f"batching {'on' if batching else 'off'}, {n} callers: {row['steps_per_s']:.1f} steps/s, "
                     f"p99 {row['p99_ms']:.1f} ms")
    for agent in agents.values():
        agent.close()
    return {"threads": threads, "max_queue_delay_ms": max_queue_delay_ms, "steps_per_caller": steps_per_caller,
            "repeats": repeats, "single_batch_compute_ms": compute_ms, "rows": rows}


def format_batching(r: dict) -> str:
    lines = [f"{'callers':>7} {'batching':<8} {'steps/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'avg batch':>9}"]
    for row in r["rows"]:
        lines.append(f"{row['callers']:>7} {('on' if row['batching'] else 'off'):<8} {row['steps_per_s']:>9.1f} "
                     f"{row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} {row.get('avg_batch_size', 1):>9.2f}")
    c = r["single_batch_compute_ms"]
    lines.append("single-batch compute: " + ", ".join(f"batch {k}: {v:.2f} ms" for k, v in c.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# The full suite (issue 8): every engine side by side, the bandwidth floor and every sweep, in one JSON.


def bytes_per_token(expert_bytes, touched, tokens_per_step: int = 1) -> float:
    """Expert weight bytes one token reads, at the measured routing.

    ``expert_bytes[l][e]``: bytes of expert e of layer l; ``touched[l][e]``: the fraction of steps in which that
    expert ran. A step runs ``tokens_per_step`` tokens and reads each expert it runs once, so batching divides
    the bytes over its tokens."""
    eb, t = np.asarray(expert_bytes, dtype=np.float64), np.asarray(touched, dtype=np.float64)
    if eb.shape != t.shape:
        raise ValueError(f"expert_bytes {eb.shape} and touched {t.shape} differ in shape")
    return float((eb * t).sum() / tokens_per_step)


def floor_bytes_per_s(bytes_per_tok: float, bandwidth_gbps: float) -> float:
    """The bandwidth floor as a speed: the fastest decode if reading the experts' weights were all it took
    (one generated byte = one token; GB = 1e9 bytes, as memory vendors count)."""
    if bytes_per_tok <= 0 or bandwidth_gbps <= 0:
        raise ValueError("bytes per token and bandwidth must be positive")
    return bandwidth_gbps * 1e9 / bytes_per_tok


def memory_bandwidth(mb: int = 512, repeats: int = 5) -> dict:
    """This machine's memory bandwidth: a large numpy copy (reads and writes every byte once), one thread."""
    n = mb * 2 ** 20 // 8
    src = np.ones(n)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch: page faults are not bandwidth
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        runs.append(2 * src.nbytes / (time.perf_counter() - t) / 1e9)
    return spread(runs) | {"method": f"numpy copyto of {mb} MiB (read + write), one thread"}


def expert_bytes(bundle_dir) -> list[list[int]]:
    """Weight bytes of every expert in a bundle, [layer][expert]: for onnx its shared weights file plus the
    tensors small enough to stay inline in its graph (read from the smallest bucket's graph); for a
    flatbuffer graph its file, weights and a few KB of structure."""
    import onnx

    from m3edge.bundle import open_bundle

    b = open_bundle(bundle_dir)
    cfg = b.manifest["model_config"]
    sizes = {f["path"]: f["bytes"] for f in b.manifest["files"]}
    out = [[0] * cfg["n_experts"] for _ in range(cfg["n_layers"])]
    smallest = {}
    for g in b.manifest["graphs"]:
        if g["role"] == "expert":
            key = (g["layer"], g["expert"])
            if key not in smallest or g["bucket"] < smallest[key]["bucket"]:
                smallest[key] = g
    for (layer, e), g in smallest.items():
        if g["path"].endswith(".onnx"):
            m = onnx.load(str(Path(bundle_dir, g["path"])), load_external_data=False)
            inline = sum(len(t.raw_data) for t in m.graph.initializer
                         if t.data_location != onnx.TensorProto.EXTERNAL)
            out[layer][e] = sizes.get(g.get("weights"), 0) + inline
        else:  # a flatbuffer (.tflite) holds its weights once for all its bucket signatures
            out[layer][e] = sizes[g["path"]] + (sizes.get(g.get("weights"), 0) if g.get("weights") != g["path"] else 0)
    return out


class Skipped(Exception):
    """An artefact or a row this machine cannot produce; the reason goes into the report."""


@dataclass(frozen=True)
class ModelPlan:
    """One model the full suite measures."""

    name: str
    checkpoint: str | None = None  # a trained checkpoint (the small reference) ...
    preset: str | None = None  # ... or a random-init preset
    overrides: dict = field(default_factory=dict)  # config changes to the preset: a documented subset
    buckets: tuple | None = None  # (token buckets, capacity buckets) for its bundles; None: the profiles'
    prompts: int = 4
    bytes: int = 64  # greedy bytes per prompt at batch 1
    batch: int = 16  # streams decoded in lockstep
    batch_bytes: int = 32
    passes: int = 1  # timed passes per process (each run is a fresh process)
    parity_tokens: int = 64  # eval tokens for the monolithic graph's parity check, at each of 3 batch sizes
    skip: dict = field(default_factory=dict)  # artefact key -> why this model does not build it
    note: str = ""


@dataclass(frozen=True)
class FullConfig:
    models: tuple
    work_dir: str = "runs/bench"
    data_dir: str = "calibration_data"
    threads: int = 2
    runs: int = 3  # fresh processes per engine row: figures are medians with min-max spread
    fp32_target: str = "host-cpu"
    int8_target: str = "rpi5"
    rebuild: bool = False  # re-export artefacts that exist already
    sweeps_model: str | None = "small"  # the cache and batching sweeps run on this model (None: skip)
    cache_sizes: tuple = (1, 8, 16, 32, 64)
    policies: tuple = ("lru", "lfu")
    cache_prompts: int = 4
    cache_bytes: int = 128  # per prompt: long enough that decoding, not the prompt's batch, sets the hit rate
    cache_passes: int = 2
    callers: tuple = (1, 4, 16, 32)
    steps_per_caller: int = 160  # a 16-caller batched run lasts ~0.6 s: steady state, not threads starting
    batching_repeats: int = 3
    max_queue_delay_ms: float = 2.0
    bandwidth_mb: int = 512
    memory_store: bool = True
    memory_store_args: tuple = ()  # passed to bench/memory_store.py
    skip: tuple = ()  # artefact keys (ARTEFACTS) not to build: their rows are reported as skipped


SEED_NOTE = ("the seed preset (d_model 1024, 64 experts, top-4) with 1 MoE layer instead of 2 and token / capacity "
             "buckets 1 and 16: the full 2-layer seed is 726 M parameters (2.9 GB fp32); exporting, validating and "
             "quantizing it for three precisions does not fit the 30-minute budget on 2 cores. Random init, so "
             "its routing is not a trained model's.")

FULL = FullConfig(models=(
    ModelPlan("small", checkpoint="checkpoints/small", note="the trained reference (checkpoints/small)"),
    ModelPlan("seed", preset="seed", overrides={"n_layers": 1}, buckets=((1, 16), (1, 16)), prompts=2, bytes=16,
              batch=16, batch_bytes=4, parity_tokens=16, note=SEED_NOTE,
              skip={"bundle-litert": "LiteRT conversion (litert-torch, one conversion per bucket signature) takes "
                                     "minutes for the small reference; for the seed's 64 experts of d_model 1024 it "
                                     "does not fit the 30-minute budget"}),
))

ROW_ENGINE = {"torch-eager": "torch", "onnx-monolithic": "monolithic", "m3edge-runtime": "runtime",
              "m3edge-runtime-litert": "runtime"}


@dataclass(frozen=True)
class Row:
    engine: str  # as reported
    precision: str
    artefact: str  # the key in ARTEFACTS it runs on


ROWS = (Row("torch-eager", "fp32", "checkpoint"), Row("onnx-monolithic", "fp32", "monolithic"),
        Row("m3edge-runtime", "fp32", "bundle-fp32"), Row("m3edge-runtime", "int8", "bundle-int8"),
        Row("m3edge-runtime-litert", "int8", "bundle-litert"))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() \
        else Path(path).stat().st_size


def _cli(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "m3edge.cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise Skipped(f"m3edge {args[0]} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")


def _profile(ctx: dict, name: str) -> str:
    """The profile to export for: the built-in one, or a copy with the plan's buckets (a user profile file)."""
    from m3edge import targets

    plan = ctx["plan"]
    if plan.buckets is None:
        return name
    t = targets.load(name)
    d = t.to_dict() | {"name": f"{t.name}-bench", "aliases": [], "token_buckets": list(plan.buckets[0]),
                       "capacity_buckets": list(plan.buckets[1])}
    p = ctx["dir"] / f"{t.name}-bench.json"
    p.write_text(json.dumps(d, indent=1))
    return str(p)


def _checkpoint(ctx: dict) -> Path:
    plan = ctx["plan"]
    if plan.checkpoint:
        p = Path(plan.checkpoint)
        return p if p.is_absolute() or p.exists() else ROOT / p
    import dataclasses

    from m3edge import checkpoint
    from m3edge.config import preset

    out = ctx["dir"] / "checkpoint"
    cfg = dataclasses.replace(preset(plan.preset), **plan.overrides)
    if (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) == cfg.to_dict():
        return out  # random init is seeded: the same config gives the same weights
    (ctx["dir"] / "config.json").write_text(cfg.to_json())
    agent, _ = checkpoint.build_agent(config_file=ctx["dir"] / "config.json", seed=0)
    checkpoint.save(agent, out, {"preset": plan.preset, "overrides": plan.overrides, "seed": 0})
    return out


def _monolithic(ctx: dict) -> Path:
    from m3edge import checkpoint
    from m3edge.data import load_split
    from m3edge.export.monolithic import export_monolithic, parity

    out = ctx["dir"] / "monolithic" / "agent.onnx"
    agent = checkpoint.load(ctx["artefacts"]["checkpoint"])
    if not out.is_file():
        export_monolithic(agent, out)
    ctx["report"]["monolithic_parity"] = parity(agent, out, load_split(ctx["data_dir"], "eval"),
                                                n_tokens=ctx["plan"].parity_tokens)
    return out


def _current(bundle_dir: Path, checkpoint_dir) -> bool:
    """Whether a bundle left by an earlier run may be reused: built in this bundle format from these weights.
    Anything else is rebuilt, not measured as if it were this checkpoint's export."""
    from m3edge import bundle, checkpoint

    try:
        m = json.loads((bundle_dir / bundle.MANIFEST).read_text())
        return (m.get("schema_version") == bundle.SCHEMA_VERSION
                and m["source"].get("weights_sha256") == checkpoint.read_meta(checkpoint_dir)[1]["weights_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _bundle(target: str):
    """``m3edge export`` for a target, as a user runs it. Quantized bundles pass --allow-accuracy-drop: this
    measures speed; the accuracy the export measured is recorded next to the artefact either way."""
    def build(ctx: dict) -> Path:
        out = ctx["dir"] / f"bundle-{ctx['row_key']}"
        if not _current(out, ctx["artefacts"]["checkpoint"]):  # missing, or stale: --force replaces it
            _cli("export", "--target", _profile(ctx, target), "--checkpoint", ctx["artefacts"]["checkpoint"],
                 "-o", out, "--force", "--allow-accuracy-drop")
        acc = out / "reports" / "accuracy.json"
        if acc.is_file():
            a = json.loads(acc.read_text())
            ctx["report"].setdefault("accuracy", {})[ctx["row_key"]] = {
                k: a.get(k) for k in ("passed", "top1_agreement", "routing_agreement", "bits_per_byte_increase")}
        return out
    return build


def litert_target() -> str:
    """The first profile whose backend is tflite, when this machine can run it; else Skipped with the reason."""
    from m3edge import targets

    from m3edge import backends

    litert = backends.get("litert")  # the registry's LiteRT backend, under whatever name profiles give it
    names = [t.name for t in targets.all_targets() if litert.runs(t.backend)]
    if not names:
        raise Skipped("no target profile with a LiteRT (tflite) backend (m3edge targets lists none)")
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError as e:
        raise Skipped(f"ai_edge_litert does not import ({e}); pip install 'm3edge[tflite]'")
    return names[0]


ARTEFACTS = {
    "checkpoint": _checkpoint,
    "monolithic": _monolithic,
    "bundle-fp32": lambda ctx: _bundle(ctx["cfg"].fp32_target)(ctx),
    "bundle-int8": lambda ctx: _bundle(ctx["cfg"].int8_target)(ctx),
    "bundle-litert": lambda ctx: _bundle(litert_target())(ctx),
}


def build_artefacts(plan: ModelPlan, cfg: FullConfig, report: dict, progress=None) -> dict:
    """Every artefact a row needs, built in order; one that cannot be built is ``skipped`` with its reason.
    ``cfg.rebuild`` (what ``make bench`` does) starts from an empty folder; otherwise builders reuse what is
    there (bundles by their manifest, the random-init checkpoint by its config)."""
    d = Path(cfg.work_dir) / plan.name
    if cfg.rebuild and d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    ctx = {"plan": plan, "cfg": cfg, "dir": d, "artefacts": {}, "report": report, "data_dir": cfg.data_dir}
    report["artefacts"] = {}
    for key, build in ARTEFACTS.items():
        ctx["row_key"] = key.removeprefix("bundle-")
        t = time.perf_counter()
        try:
            if key in cfg.skip:
                raise Skipped("not requested in this run's settings")
            if key in plan.skip:
                raise Skipped(plan.skip[key])
            path = build(ctx)
        except Skipped as e:
            report["artefacts"][key] = {"skipped": str(e)}
            if progress:
                progress(f"{plan.name}: {key} skipped: {e}")
            continue
        ctx["artefacts"][key] = path
        report["artefacts"][key] = {"path": str(path), "bytes": _dir_bytes(path), "build_s": time.perf_counter() - t}
        if progress:
            progress(f"{plan.name}: {key} ready ({report['artefacts'][key]['bytes'] / 1e6:.1f} MB, "
                     f"{report['artefacts'][key]['build_s']:.0f} s)")
    return ctx["artefacts"]


def _artefact_arg(key: str, path) -> dict:
    if key == "checkpoint":
        return {"checkpoint": str(path)}
    if key == "monolithic":
        return {"onnx": str(path)}
    return {"bundle": str(path)}


def _precision_bytes(artefacts: dict) -> dict:
    """Expert weight bytes [layer][expert] per artefact (the bundles'; torch and monolithic read fp32)."""
    out = {key: expert_bytes(artefacts[key]) for key in ("bundle-fp32", "bundle-int8", "bundle-litert")
           if key in artefacts}
    if "bundle-fp32" in out:
        out["checkpoint"] = out["monolithic"] = out["bundle-fp32"]
    return out


def run_model(plan: ModelPlan, cfg: FullConfig, bandwidth_gbps: float, progress=None) -> dict:
    """Every engine row for one model: ``cfg.runs`` fresh processes each, interleaved so that a slow spell
    of a shared machine spreads over all rows instead of landing on one."""
    from m3edge.config import ModelConfig

    report = {"name": plan.name, "note": plan.note}
    arts = build_artefacts(plan, cfg, report, progress)
    mcfg = ModelConfig.load(Path(arts["checkpoint"]) / "config.json")
    report["config"] = mcfg.to_dict()
    n_streams = max(plan.prompts, plan.batch)
    ps = [p.hex() for p in prompts(Path(cfg.data_dir), n_streams)]
    base = {"threads": cfg.threads, "workload": "decode", "context": mcfg.context, "passes": plan.passes,
            "prompts": ps[:plan.prompts], "batch_prompts": ps[:plan.batch], "bytes": plan.bytes,
            "batch": plan.batch, "batch_bytes": plan.batch_bytes, "temperature": 0.0}
    results: dict = {row: [] for row in ROWS}
    skipped: dict = {}
    for run in range(cfg.runs):
        for row in ROWS:
            if row.artefact not in arts:
                skipped[row] = report["artefacts"][row.artefact]["skipped"]
                continue
            if row in skipped:
                continue
            args = base | {"engine": ROW_ENGINE[row.engine]} | _artefact_arg(row.artefact, arts[row.artefact])
            try:
                r = measure(args, timeout=1800)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                skipped[row] = f"worker failed: {e}"
                continue
            results[row].append(r)
            if progress:
                progress(f"{plan.name} run {run + 1}/{cfg.runs}: {row.engine} {row.precision}: "
                         f"{np.median(r['batch1']['bytes_per_s_runs']):.1f} bytes/s at batch 1, "
                         f"{np.median(r['batched']['bytes_per_s_runs']):.1f} at batch {plan.batch}")
    eb = _precision_bytes(arts)
    fp32_runs = results[ROWS[2]]
    fp32_touched = {ph: fp32_runs[0][ph]["touched"] for ph in ("batch1", "batched")} if fp32_runs else {}
    rows = []
    for row in ROWS:
        if row in skipped or not results[row]:
            rows.append({"model": plan.name, "engine": row.engine, "precision": row.precision,
                         "skipped": skipped.get(row, "not measured")})
            continue
        rs = results[row]
        for phase in ("batch1", "batched"):
            batch = rs[0][phase]["streams"]
            speed = spread([v for r in rs for v in r[phase]["bytes_per_s_runs"]])
            cold = spread([r["cold_start_s"] for r in rs])
            out = {"model": plan.name, "engine": row.engine, "precision": row.precision, "batch": batch,
                   "bytes_per_s": speed["median"], "bytes_per_s_spread": speed,
                   "cold_start_s": cold["median"], "cold_start_spread": cold,
                   "peak_rss_mb": spread([r[phase]["peak_rss_mb"] for r in rs])["median"],
                   "outputs_sha": rs[0][phase]["outputs_sha"]}
            # torch and the monolithic graph route like the fp32 runtime (identical greedy outputs): its routing
            touched = rs[0][phase].get("touched") or fp32_touched.get(phase)
            if row.artefact in eb and touched is not None:
                bpt = bytes_per_token(eb[row.artefact], touched, batch)
                out["expert_bytes_per_token"] = bpt
                out["floor_bytes_per_s"] = floor_bytes_per_s(bpt, bandwidth_gbps)
                out["floor_ratio"] = out["floor_bytes_per_s"] / out["bytes_per_s"]  # x slower than the floor
            rows.append(out)
    report["rows"] = rows
    fp32 = [r for r in rows if r.get("precision") == "fp32" and r.get("batch") == 1 and "outputs_sha" in r]
    report["fp32_outputs_identical"] = len({r["outputs_sha"] for r in fp32}) == 1 if fp32 else None
    report["target_floors"] = target_floors(eb, fp32_touched.get("batch1"))
    report["bundle_bytes"] = {k: v["bytes"] for k, v in report["artefacts"].items() if "bytes" in v}
    return report


def target_floors(eb: dict, touched) -> list[dict]:
    """Each target profile's floor at batch 1: its DRAM bandwidth over the expert bytes its precision reads."""
    from m3edge import targets

    if touched is None or "bundle-fp32" not in eb:
        return []
    fp32 = bytes_per_token(eb["bundle-fp32"], touched)
    per = {"fp32": (fp32, "fp32 bundle"), "fp16": (fp32 / 2, "fp32 bundle's bytes / 2 (no fp16 bundle measured)")}
    if "bundle-int8" in eb:
        per["int8"] = (bytes_per_token(eb["bundle-int8"], touched), "int8 bundle")
    out = []
    for t in targets.all_targets():
        p = t.precision.get("expert", "fp32")
        bpt, basis = per.get(p, per["fp32"])
        out.append({"target": t.name, "dram_bandwidth_gbps": t.dram_bandwidth_gbps, "precision": p,
                    "expert_bytes_per_token": bpt, "bytes_basis": basis,
                    "floor_bytes_per_s": floor_bytes_per_s(bpt, t.dram_bandwidth_gbps)})
    return out


def memory_store_bench(cfg: FullConfig, progress=None) -> dict:
    """The memory-store benchmark of its own issue: bench/memory_store.py when it exists, else skipped.
    Its result goes to the work dir (bench/results-memory.json is that issue's own committed result)."""
    script = ROOT / "bench" / "memory_store.py"
    if not cfg.memory_store:
        return {"skipped": "not requested"}
    if not script.is_file():
        return {"skipped": "bench/memory_store.py is not in this tree (the memory-store issue has not landed)"}
    out = Path(cfg.work_dir).resolve() / "memory_store.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, str(script), *cfg.memory_store_args, "-o", str(out)], capture_output=True,
                       text=True, timeout=1800, env=os.environ | {"OMP_NUM_THREADS": str(cfg.threads)})
    if r.returncode != 0 or not out.is_file():
        return {"skipped": f"bench/memory_store.py failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"}
    if progress:
        progress(f"memory store: {time.perf_counter() - t:.0f} s")
    return json.loads(out.read_text()) | {"source": "bench/memory_store.py", "run_s": time.perf_counter() - t}


def _settings(cfg: FullConfig) -> dict:
    import dataclasses

    d = dataclasses.asdict(cfg)
    d["models"] = [dataclasses.asdict(m) for m in cfg.models]
    return d


def run_full(cfg: FullConfig = FULL, progress=None) -> dict:
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    res = {"suite": "full", "machine": machine(), "threads": cfg.threads,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": _settings(cfg)}
    res["memory_bandwidth"] = memory_bandwidth(cfg.bandwidth_mb)  # first, before any of our workers run
    say(f"memory bandwidth: {res['memory_bandwidth']['median']:.1f} GB/s")
    res["models"], res["rows"] = {}, []
    for plan in cfg.models:
        m = run_model(plan, cfg, res["memory_bandwidth"]["median"], progress)
        res["models"][plan.name] = m
        res["rows"] += m["rows"]
    sweep_bundle = res["models"].get(cfg.sweeps_model, {}).get("artefacts", {}).get("bundle-fp32", {}).get("path")
    if sweep_bundle:
        from m3edge.bundle import open_bundle

        n_experts = open_bundle(sweep_bundle).manifest["model_config"]["n_experts"]
        base = {"threads": cfg.threads, "bytes": cfg.cache_bytes,
                "prompts": [p.hex() for p in prompts(Path(cfg.data_dir), cfg.cache_prompts)]}
        res["cache_sweep"] = {"model": cfg.sweeps_model, "n_experts": n_experts, "passes": cfg.cache_passes,
                              "rows": cache_sweep(sweep_bundle, base, n_experts, cfg.cache_sizes, cfg.policies,
                                                  passes=cfg.cache_passes, warmup=1, progress=progress)}
        res["batching"] = batching_bench(sweep_bundle, Path(cfg.data_dir), cfg.callers, cfg.steps_per_caller,
                                         cfg.threads, cfg.max_queue_delay_ms, cfg.batching_repeats, progress) \
            | {"model": cfg.sweeps_model}
    else:
        reason = f"no fp32 bundle of model {cfg.sweeps_model!r} in this run"
        res["cache_sweep"], res["batching"] = {"skipped": reason}, {"skipped": reason}
    res["memory_store"] = memory_store_bench(cfg, progress)
    res["goals"] = goals(res)
    res["duration_s"] = time.perf_counter() - t0
    return res


def _row(res: dict, model: str, engine: str, precision: str, batch: int = 1) -> dict | None:
    for r in res.get("rows", []):
        if (r["model"], r["engine"], r["precision"], r.get("batch")) == (model, engine, precision, batch):
            return r
    return None


def _goal(name: str, measured, target: float, higher_is_better: bool = True, unit: str = "x", **extra) -> dict:
    met = None if measured is None else bool(measured >= target if higher_is_better else measured <= target)
    return {"goal": name, "target": target, "unit": unit, "measured": measured, "met": met,
            "higher_is_better": higher_is_better} | extra


def goals(res: dict) -> list[dict]:
    """Issue 8's goals, and issues 5 and 7's measured in the same run, judged from the result alone."""
    out = []
    for model in res.get("models", {}):
        torch_r, mono = _row(res, model, "torch-eager", "fp32"), _row(res, model, "onnx-monolithic", "fp32")
        for eng, label in (("m3edge-runtime", "runtime INT8"), ("m3edge-runtime-litert", "runtime INT8 (LiteRT)")):
            r = _row(res, model, eng, "int8")
            if r is None:
                continue
            out.append(_goal(f"{model}: {label} >= 2x torch eager at batch 1",
                             r["bytes_per_s"] / torch_r["bytes_per_s"] if torch_r else None, 2.0, issue=8))
            out.append(_goal(f"{model}: {label} ahead of the monolithic onnx export at batch 1",
                             r["bytes_per_s"] / mono["bytes_per_s"] if mono else None, 1.0, issue=8))
        for prec in ("fp32", "int8"):
            r = _row(res, model, "m3edge-runtime", prec)
            if r is not None and "floor_ratio" in r:
                out.append(_goal(f"{model}: runtime {prec} within 3x of this machine's bandwidth floor at batch 1",
                                 r["floor_ratio"], 3.0, higher_is_better=False, issue=8))
    cs = res.get("cache_sweep", {})
    if cs.get("rows"):
        n = cs["n_experts"]
        full = max((r for r in cs["rows"] if r["experts_per_layer"] == n), key=lambda r: r["bytes_per_s"], default=None)
        quarter = [r for r in cs["rows"] if r["experts_per_layer"] == n // 4]
        if quarter and full:
            # The quarter-cache setting closest to meeting both goals, against the fastest all-resident one.
            q = max(quarter, key=lambda r: min(r["hit_rate"] / 0.6, r["bytes_per_s"] / full["bytes_per_s"] / 0.7))
            setting = f"{n // 4} per layer, {q['policy'].upper()}, prefetch {q['prefetch']}"
            out.append(_goal(f"cache: a quarter of the experts ({setting}) hits >= 60%",
                             q["hit_rate"], 0.6, unit="", issue=5))
            out.append(_goal(f"cache: a quarter of the experts ({setting}) keeps >= 70% of the all-resident speed",
                             q["bytes_per_s"] / full["bytes_per_s"], 0.7, unit="", issue=5))
    b = res.get("batching", {})
    if b.get("rows"):
        at = {(r["callers"], r["batching"]): r for r in b["rows"]}
        if (16, True) in at and (16, False) in at:
            out.append(_goal("batching: 16 callers get >= 3x the unbatched throughput",
                             at[16, True]["steps_per_s"] / at[16, False]["steps_per_s"], 3.0, issue=7))
            c16 = b["single_batch_compute_ms"].get("16")
            if c16 is not None:
                out.append(_goal("batching: 16 callers' p99 <= max queue delay + 2 x single-batch compute",
                                 at[16, True]["p99_ms"], b["max_queue_delay_ms"] + 2 * c16, higher_is_better=False,
                                 unit="ms", issue=7))
    ms = res.get("memory_store", {})
    g = {} if "skipped" in ms else ms.get("goals", {})  # bench/memory_store.py states its own thresholds
    if "insert_per_s" in g and "insert" in ms:
        out.append(_goal(f"memory store: >= {g['insert_per_s']:,} durable inserts/s", ms["insert"]["per_s"],
                         g["insert_per_s"], unit="/s", issue=6))
    if "p50_ms" in g and "retrieval_top10_ms" in ms:
        out.append(_goal(f"memory store: top-10 retrieval p50 <= {g['p50_ms']} ms at {ms.get('memories', 0):,} "
                         f"memories ({ms.get('device', '?')})", ms["retrieval_top10_ms"]["p50"], g["p50_ms"],
                         higher_is_better=False, unit=" ms", issue=6))
    return out


def format_full(res: dict) -> str:
    lines = [f"machine: {res['machine']['processor']}, {res['machine']['cpus']} cpus, {res['threads']} threads; "
             f"memory bandwidth {res['memory_bandwidth']['median']:.1f} GB/s"]
    for r in res["rows"]:
        if "skipped" in r:
            lines.append(f"{r['model']:<6} {r['engine']:<22} {r['precision']:<5} skipped: {r['skipped']}")
            continue
        s = r["bytes_per_s_spread"]
        floor = f", floor x{r['floor_ratio']:.1f}" if "floor_ratio" in r else ""
        lines.append(f"{r['model']:<6} {r['engine']:<22} {r['precision']:<5} batch {r['batch']:>3} "
                     f"{r['bytes_per_s']:>9.1f} bytes/s [{s['min']:.1f}-{s['max']:.1f}], cold start "
                     f"{r['cold_start_s']:.2f} s, RSS {r['peak_rss_mb']:.0f} MB{floor}")
    for g in res.get("goals", []):
        state = "n/a" if g["met"] is None else ("met" if g["met"] else "MISSED")
        lines.append(f"goal {state}: {g['goal']} (measured {g['measured']}, target {g['target']})")
    return "\n".join(lines)
