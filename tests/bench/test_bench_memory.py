"""m3edge.bench.memory: the recall cases, the real recall path on a tiny agent, goals and the generated tables."""

import numpy as np
import pytest

from m3edge.bench import memory as mb
from m3edge.data import load_split

from conftest import DATA


def test_a_recall_case_states_the_fact_once_then_the_cue():
    filler = load_split(DATA, "eval")
    prompt, code = mb.recall_case(filler, 4, 0)
    assert len(code) == 11 and prompt.count(mb.CUE + code) == 1 and prompt.endswith(mb.CUE)
    between = prompt.split(mb.CUE + code)[1]
    assert 3 * 1024 < len(between) <= 4 * 1024 + len(mb.CUE) + 2
    assert mb.reproduced(code, code) == 1.0 and mb.reproduced(b"x" * 11, code) == 0.0
    assert mb.recall_case(filler, 4, 0) == (prompt, code) and mb.recall_case(filler, 4, 1)[1] != code


def test_recall_runs_through_the_agent_with_memory_on_and_off(tiny_checkpoint):
    res = mb.recall_bench({"torch": mb.TorchAgent(str(tiny_checkpoint))}, load_split(DATA, "eval"), (1,), trials=1)
    (row,) = res["rows"]
    assert row["engine"] == "torch" and row["kb"] == 1 and 0 <= row["memory_off"] <= row["memory_on"] <= 1


def test_goals_and_tables_come_from_the_results():
    res = {"eval": [{"text": "eval", "bits_per_byte": 1.4, "bits_per_byte_without": 2.0, "ratio": 0.7, "memories": 9}],
           "recall": {"rows": [{"engine": "fp32", "kb": 4, "trials": 2, "memory_on": 1.0, "memory_off": 0.0},
                               {"engine": "fp32-reram", "kb": 4, "trials": 2, "memory_on": 0.85, "memory_off": 0.0}]},
           "decode": {"bundle": "fp32", "rows": [{"memories": 100_000, "bytes_per_s_memory_off": 1000.0,
                                                  "bytes_per_s_memory_on": 400.0, "ratio": 0.4, "ingest_4kb_s": 0.9,
                                                  "rss_growth_mb": 1.0}]}}
    goals = {g["goal"]: g["met"] for g in mb.goals(res)}
    assert goals["online bits/byte with memory <= 0.85x without (eval)"]
    assert not goals["bits/byte without memory (eval) <= 1.953"]  # 2.0: the model without memory got worse
    assert not goals["reram within 10 points of ideal at 4 kB (fp32-reram)"]
    assert not goals["decode with memory on at 100,000 memories >= 50% of memory off"]
    table = mb.markdown(res)
    assert "| fp32 | 100% / 0% |" in table and "**missed**" in table and "| 100,000 | 1000 | 400 | 40% |" in table
    assert "| bits/byte without memory (eval) <= 1.953 | 2 | **missed** |" in table
    page = f"x\n{mb.BEGIN}\nold\n{mb.END}\ny"
    assert mb.splice(page, table) == f"x\n{mb.BEGIN}\n{table}{mb.END}\ny"
    with pytest.raises(ValueError, match="markers"):
        mb.splice("no markers", table)


def test_parts_merge_keeps_what_this_run_did_not_measure(tiny_checkpoint, tiny_bundle, tmp_path):
    from conftest import run_cli
    import json

    out = tmp_path / "mem.json"
    kept = {"eval": [{"text": "eval", "ratio": 0.5, "bits_per_byte": 1.0, "bits_per_byte_without": 2.0,
                      "memories": 3, "bytes": 10}], "decode": {"rows": []}}
    out.write_text(json.dumps(kept))
    r = run_cli("bench", "--suite", "memory", "--checkpoint", tiny_checkpoint, "--bundle", f"fp32={tiny_bundle}",
                "--parts", "recall", "--recall-kb", "1", "--trials", "1", "--merge", "-o", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["eval"] == kept["eval"] and {row["engine"] for row in res["recall"]["rows"]} >= {"torch", "fp32"}
    assert any("0.85x" in g["goal"] for g in res["goals"])  # goals judged on the kept eval too
    r = run_cli("bench", "--suite", "memory", "--checkpoint", tiny_checkpoint, "--bundle", f"fp32={tiny_bundle}",
                "--parts", "recall,bogus")
    assert r.returncode == 2 and "--parts" in r.stderr and "Traceback" not in r.stderr


def test_decode_bench_runs_the_agents_real_path(tiny_bundle):
    """Memory on against off on one agent, after a fill; 4 KB prompts (the first opens the sessions, then the
    steady ones: median and slowest)."""
    text = np.frombuffer((DATA / "train.txt").read_bytes()[:20_000], dtype=np.uint8)
    res = mb.decode_bench(str(tiny_bundle), text, sizes=(0, 300), n_bytes=8, rss_bytes=16, repeats=2, ingests=2)
    assert res["repeats"] == 2 and [r["filled"] for r in res["rows"]] == [0, 300]
    for r in res["rows"]:
        assert r["bytes_per_s_memory_off"] > 0 and r["bytes_per_s_memory_on"] > 0
        assert r["ratio"] == r["bytes_per_s_memory_on"] / r["bytes_per_s_memory_off"]
        assert 0 < r["ingest_4kb_s"] <= r["ingest_4kb_max_s"] and r["ingest_4kb_first_s"] > 0
    assert res["rows"][1]["memories"] > res["rows"][0]["memories"] >= 3 * 4096  # every prompt was stored
    table = mb.markdown({"decode": res | {"bundle": "tiny"}})
    assert "first 4 KB prompt of the process" in table and "| 300 |" in table and "(median; slowest)" in table
