"""m3edge bench runs every configuration through its real path; no assertion on time."""

import json

from m3edge.bench import format_report, run_bench

from conftest import DATA, run_cli


def test_engines_do_the_same_work_and_the_sweep_is_reported(tiny_bundle):
    r = run_bench(tiny_bundle, DATA, threads=1, n_prompts=1, n_bytes=4, cache_sizes=(1, 4), policies=("lru",))
    torch_row, runtime_row = r["rows"]
    assert (torch_row["engine"], runtime_row["engine"]) == ("torch-eager", "m3edge-runtime")
    assert torch_row["outputs_sha"] == runtime_row["outputs_sha"]  # identical greedy bytes: equal work
    assert all(row["bytes_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in r["rows"])
    assert [(s["experts_per_layer"], s["prefetch"]) for s in r["cache_sweep"]] == [
        (1, False), (1, True), (4, False), (4, True)]
    assert all(0 <= s["hit_rate"] <= 1 for s in r["cache_sweep"])
    assert "torch-eager" in format_report(r)


def test_bench_cli_json(tiny_bundle, tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench", tiny_bundle, "--prompts", "1", "--bytes", "2", "--cache-sizes", "", "--no-torch",
                "--json", "-o", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert set(res) >= {"machine", "threads", "rows"} and res["threads"] == 2
    assert set(res["rows"][0]) >= {"engine", "precision", "batch", "bytes_per_s", "peak_rss_mb"}
    assert json.loads(out.read_text())["rows"] == res["rows"]
