"""``python -m m3edge.bench.graph_micro``: per-graph time of a bundle, driven as a user runs it."""

import json
import subprocess
import sys


def test_graph_micro_times_every_graph_and_lists_the_kernels_that_ran(tiny_bundle, tmp_path):
    out = tmp_path / "micro.json"
    r = subprocess.run([sys.executable, "-m", "m3edge.bench.graph_micro", f"a={tiny_bundle}", f"b={tiny_bundle}",
                        "--runs", "3", "--profile", str(tmp_path / "prof"), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    a, b = json.loads(out.read_text())
    assert a["label"] == "a" and b["step_speedup_vs_a"] > 0
    graphs = {g["graph"]: g for g in a["graphs"]}
    assert {"encoder", "router", "head"} <= set(graphs)
    assert all(g["us"] > 0 and g["optimized_ops"] for g in graphs.values())
    assert "== a: dense" in r.stdout


def test_graph_micro_names_a_malformed_argument(tmp_path):
    r = subprocess.run([sys.executable, "-m", "m3edge.bench.graph_micro", "no-label"], capture_output=True, text=True)
    assert r.returncode == 2 and "expected LABEL=BUNDLE_DIR" in r.stderr
