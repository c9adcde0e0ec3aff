"""Per-graph time at batch 1, bundle against bundle (issue 17: why INT8 was no faster than fp32).

    python bench/graph_micro.py LABEL=BUNDLE [LABEL=BUNDLE ...] [--threads N] [--runs 200] [--profile DIR]
                                [--generate BYTES] [--json OUT]

For every bundle, each per-token graph (encoder, alignment, router and head of layer 0) and one expert of each
memory type is opened exactly as the runtime opens it (``BundleExecutor.load``: the profile's providers, the
threads ``SessionConfig.threads_for`` gives it) at the smallest bucket, and timed over ``--runs`` calls on
random inputs of its static shape (the fastest call, and the median). A decode step reads the dense graphs once per layer and ``top_k`` experts,
so the estimated step is dense + top_k x (experts' mean, weighted by how many experts have each type).
``--profile DIR`` also writes onnxruntime's profile and the optimized graph per session and lists which
kernels ran (op types of the optimized graph, time per op type from the profile). ``--generate`` runs the
whole runtime (``EdgeAgent.generate``) for that many bytes and reports bytes/s. Ratios are against the first
bundle, in the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
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
    from m3edge.runtime.graph import SessionConfig
    from m3edge import targets

    b = open_bundle(path)
    target = targets.Target.from_dict(b.manifest["target"])
    session = SessionConfig(threads=threads or target.threads, target=target)
    ex = BundleExecutor(b, session)
    rng = np.random.default_rng(0)
    cfg = ex.cfg
    rows = {}
    picks = [(r, None) for r in DENSE] + [("expert", e) for e in range(min(6, cfg.n_experts))]
    for role, expert in picks:
        layer = 0 if role in ("router", "expert") else None
        entries = [g for g in b.graphs if g["role"] == role and g["layer"] == layer and g["expert"] == expert]
        if not entries:
            continue
        entry = min(entries, key=lambda g: g["bucket"])
        name = role if expert is None else f"expert {cfg.expert_type(expert)}"
        prof_dir = None
        if profile:
            prof_dir = profile / label / name.replace(" ", "_")
            prof_dir.mkdir(parents=True, exist_ok=True)
            ex.session = replace(session, profile_dir=str(prof_dir))
        graph = ex.load(entry)
        ex.session = session
        us, median = time_graph(graph, feeds(entry, rng), runs)
        weights = sum(ex.file_sizes[w] for w in ([entry["weights"]] if isinstance(entry["weights"], str) else entry["weights"] or []))
        row = {"graph": name, "precision": entry["precision"], "bucket": entry["bucket"], "us": round(us, 1),
               "median_us": round(median, 1),
               "weights_bytes": weights, "threads": graph.session.get_session_options().intra_op_num_threads}
        if prof_dir:
            row |= kernels(graph, prof_dir)
        rows[name] = row
    experts = [r for n, r in rows.items() if n.startswith("expert")]
    # Expert e has type e % 6: weight each type's time by how many of the experts have it.
    counts = collections.Counter(cfg.expert_type(e) for e in range(cfg.n_experts))
    mean_expert = sum(r["us"] * counts[r["graph"].split()[1]] for r in experts) / sum(counts[r["graph"].split()[1]] for r in experts)
    dense = rows["encoder"]["us"] + rows["alignment"]["us"] + rows["head"]["us"] + cfg.n_layers * rows["router"]["us"]
    step = dense + cfg.n_layers * cfg.top_k * mean_expert
    ex.close()
    return {"label": label, "bundle": str(path), "graphs": list(rows.values()), "dense_us": round(dense, 1),
            "mean_expert_us": round(mean_expert, 1), "step_estimate_us": round(step, 1)}


def generate(path: Path, n: int, threads: int | None) -> float:
    from m3edge.runtime.agent import EdgeAgent

    with EdgeAgent.open(path, threads=threads) as agent:
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
            sys.exit(f"expected LABEL=BUNDLE_DIR, got {spec!r}")
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
              f"step ~{r['step_estimate_us']:.0f} us ({r['step_speedup_vs_' + base['label']]}x {base['label']})"
              + (f", generate {r['generate_bytes_per_s']} bytes/s" if a.generate else ""))
        for g in r["graphs"]:
            print(f"   {g['graph']:<20} {g['precision']:<17} {g['us']:>9.1f} us (median {g['median_us']:>9.1f})  "
                  f"{g['weights_bytes'] / 1e6:7.2f} MB  "
                  f"threads {g['threads']}" + (f"  ops {g['optimized_ops']}" if "optimized_ops" in g else ""))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
