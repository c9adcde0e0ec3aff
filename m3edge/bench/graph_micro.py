"""Per-graph time at batch 1, bundle against bundle (issue 17: why INT8 was no faster than fp32).

    python -m m3edge.bench.graph_micro LABEL=BUNDLE [LABEL=BUNDLE ...] [--threads N] [--runs 200] [--profile DIR]
                                [--generate BYTES] [--json OUT]

For every bundle, the per-token graphs (encoder, alignment, router and head of layer 0) and every expert of
layer 0 are opened exactly as the runtime opens them (``BundleExecutor.load``: the profile's providers, the
threads ``SessionConfig.threads_for`` gives each) at the smallest bucket, and run ``--runs`` times in decode
order on random inputs of their static shapes: encoder, alignment, router, ``top_k`` experts (a different
``top_k`` each step, round robin over the layer, so expert weights come from DRAM, not from the cache), head.
Per graph: the fastest call (the graph's own time on a shared machine) and the median; per expert type the
mean of its experts' fastest calls; the step's fastest and median wall time, and an estimate from the
fastest calls (dense + n_layers x top_k x mean expert).
``--profile DIR`` also writes onnxruntime's profile and the optimized graph per session and lists which
kernels ran (op types of the optimized graph, time per op type from the profile). ``--generate`` runs the
whole runtime (``EdgeAgent.generate``) for that many bytes and reports bytes/s. Ratios are against the first
bundle, in the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

DENSE = ("encoder", "alignment", "router", "head")


def feeds(entry: dict, rng) -> list[np.ndarray]:
    out = []
    for port in entry["inputs"]:
        shape = port["shape"]
        if port["dtype"].startswith("int"):
            out.append(rng.integers(0, 256, size=shape).astype(port["dtype"]))
        else:
            out.append(rng.standard_normal(shape).astype(np.float32))
    return out


def time_graph(graph, inputs, runs: int) -> tuple[float, float]:
    """(fastest, median) microseconds per call. On a shared machine the fastest call is the graph's own time:
    measured at load 20 on 2 cores, an INT4 encoder call took 0.9-2 ms or, preempted, 20-90 ms, in about
    equal numbers, so even the median is other processes' time slices."""
    for _ in range(min(10, runs)):
        graph.run(*inputs)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        graph.run(*inputs)
        times.append(time.perf_counter() - t)
    return float(np.min(times)) * 1e6, float(np.median(times)) * 1e6


def kernels(graph, profile_dir: Path) -> dict:
    """Op types of the optimized graph onnxruntime ran, and microseconds per op type from its profile."""
    import onnx

    prof = graph.session.end_profiling()
    per_op: dict[str, float] = collections.Counter()
    for ev in json.loads(Path(prof).read_text()):
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per_op[ev["args"]["op_name"]] += ev["dur"]
    opt = [p for p in profile_dir.glob("*.optimized.onnx")]
    newest = max(opt, key=lambda p: p.stat().st_mtime) if opt else None
    ops = collections.Counter(n.op_type for n in onnx.load(str(newest), load_external_data=False).graph.node) if newest else {}
    return {"optimized_ops": dict(sorted(ops.items())), "profile_us_by_op": dict(per_op.most_common())}


def measure(label: str, path: Path, threads: int | None, runs: int, profile: Path | None) -> dict:
    from m3edge.bundle import open_bundle
    from m3edge.runtime.executor import BundleExecutor
    from m3edge.backends.session import SessionConfig
    from m3edge import targets

    b = open_bundle(path)
    target = targets.Target.from_dict(b.manifest["target"])
    session = SessionConfig(threads=threads or target.threads, target=target)
    ex = BundleExecutor(b, session)
    rng = np.random.default_rng(0)
    cfg = ex.cfg

    def smallest(role, layer=None, expert=None):
        entries = [g for g in b.graphs if g["role"] == role and g["layer"] == layer and g["expert"] == expert]
        return min(entries, key=lambda g: g["bucket"]) if entries else None

    def weights(entry):
        w = entry["weights"]
        return sum(ex.file_sizes[f] for f in ([w] if isinstance(w, str) else w or []))

    def load(entry, name):
        if profile:  # one profile and optimized graph per session
            d = profile / label / name.replace(" ", "_")
            d.mkdir(parents=True, exist_ok=True)
            ex.session = replace(session, profile_dir=str(d))
        g = ex.load(entry)
        ex.session = session
        return g

    dense = {r: smallest(r, 0 if r == "router" else None) for r in DENSE}
    experts = [smallest("expert", 0, e) for e in range(cfg.n_experts)]
    graphs = {r: load(e, r) for r, e in dense.items()}
    expert_graphs = [load(e, f"expert {cfg.expert_type(i)}") if profile and i < 6 else ex.load(e)
                     for i, e in enumerate(experts)]
    profiled = {**graphs, **{f"expert {cfg.expert_type(i)}": expert_graphs[i] for i in range(min(6, len(experts)))}}
    inputs = {r: feeds(e, rng) for r, e in dense.items()}
    x = feeds(experts[0], rng)
    for r in DENSE:  # warm every session once
        graphs[r].run(*inputs[r])
    for g in expert_graphs:
        g.run(*x)
    # Decode order, one layer: the dense graphs, then top_k experts, a different top_k each step (round robin
    # over all of the layer's experts), so weights come from DRAM as in decoding (this host's L3 is 32 MB;
    # repeating one graph would time it from cache).
    times = {r: [] for r in DENSE}
    per_expert = [[] for _ in experts]
    steps = []
    k = cfg.top_k
    for s in range(runs):
        t_step = time.perf_counter()
        for r in ("encoder", "alignment", "router"):
            t = time.perf_counter()
            graphs[r].run(*inputs[r])
            times[r].append(time.perf_counter() - t)
        for j in range(k):
            e = (s * k + j) % len(experts)
            t = time.perf_counter()
            expert_graphs[e].run(*x)
            per_expert[e].append(time.perf_counter() - t)
        t = time.perf_counter()
        graphs["head"].run(*inputs["head"])
        times["head"].append(time.perf_counter() - t)
        steps.append(time.perf_counter() - t_step)
    rows = []
    for r in DENSE:
        rows.append({"graph": r, "precision": dense[r]["precision"], "us": round(min(times[r]) * 1e6, 1),
                     "median_us": round(float(np.median(times[r])) * 1e6, 1), "weights_bytes": weights(dense[r]),
                     "threads": graphs[r].session.get_session_options().intra_op_num_threads})
    by_type: dict[str, list[int]] = collections.defaultdict(list)
    for e in range(len(experts)):
        if per_expert[e]:
            by_type[cfg.expert_type(e)].append(e)
    for kind, es in by_type.items():
        rows.append({"graph": f"expert {kind}", "precision": experts[es[0]]["precision"], "experts": len(es),
                     "us": round(float(np.mean([min(per_expert[e]) for e in es])) * 1e6, 1),
                     "median_us": round(float(np.median([t for e in es for t in per_expert[e]])) * 1e6, 1),
                     "weights_bytes": weights(experts[es[0]]),
                     "threads": expert_graphs[es[0]].session.get_session_options().intra_op_num_threads})
    if profile:
        for row in rows:
            row |= kernels(profiled[row["graph"]], profile / label / row["graph"].replace(" ", "_"))
    mean_expert = float(np.mean([min(t) for t in per_expert if t])) * 1e6
    router = next(r["us"] for r in rows if r["graph"] == "router")
    dense_us = sum(r["us"] for r in rows if r["graph"] in DENSE) + (cfg.n_layers - 1) * router
    ex.close()
    return {"label": label, "bundle": str(path), "graphs": rows, "dense_us": round(dense_us, 1),
            "mean_expert_us": round(mean_expert, 1),
            # one layer measured; a step of the bundle's model: its dense graphs, a router and top_k experts per layer
            "step_estimate_us": round(dense_us + cfg.n_layers * cfg.top_k * mean_expert, 1),
            "step_fastest_us": round(min(steps) * 1e6, 1), "step_median_us": round(float(np.median(steps)) * 1e6, 1)}


def generate(path: Path, n: int, threads: int | None) -> float:
    from m3edge.runtime.agent import EdgeAgent
    from m3edge.runtime.options import RuntimeOptions

    with EdgeAgent.open(path, options=RuntimeOptions(threads=threads)) as agent:
        agent.generate(b"def ", 8)  # warm: sessions and caches
        t = time.perf_counter()
        out = agent.generate(b"def main():\n    ", n)
        return len(out) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", help="LABEL=BUNDLE_DIR; the first is the baseline")
    ap.add_argument("--threads", type=int, help="the most threads a graph gets (default: the profile's)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--profile", type=Path, help="write onnxruntime profiles and optimized graphs here")
    ap.add_argument("--generate", type=int, default=0, help="also time EdgeAgent.generate for this many bytes")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args()
    results = []
    for spec in a.bundles:
        label, _, path = spec.partition("=")
        if not path:
            ap.error(f"expected LABEL=BUNDLE_DIR, got {spec!r}")  # exit 2, one line
        r = measure(label, Path(path), a.threads, a.runs, a.profile)
        if a.generate:
            r["generate_bytes_per_s"] = round(generate(Path(path), a.generate, a.threads), 2)
        results.append(r)
    base = results[0]
    for r in results:
        r["step_speedup_vs_" + base["label"]] = round(base["step_estimate_us"] / r["step_estimate_us"], 2)
        if a.generate:
            r["generate_speedup_vs_" + base["label"]] = round(r["generate_bytes_per_s"] / base["generate_bytes_per_s"], 2)
        print(f"== {r['label']}: dense {r['dense_us']:.0f} us, mean expert {r['mean_expert_us']:.0f} us, "
              f"step ~{r['step_estimate_us']:.0f} us ({r['step_speedup_vs_' + base['label']]}x {base['label']}), "
              f"measured step fastest {r['step_fastest_us']:.0f} us, median {r['step_median_us']:.0f} us"
              + (f", generate {r['generate_bytes_per_s']} bytes/s" if a.generate else ""))
        for g in r["graphs"]:
            print(f"   {g['graph']:<20} {g['precision']:<17} {g['us']:>9.1f} us (median {g['median_us']:>9.1f})  "
                  f"{g['weights_bytes'] / 1e6:7.2f} MB  "
                  f"threads {g['threads']}" + (f"  ops {g['optimized_ops']}" if "optimized_ops" in g else ""))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
