import json
import math

import numpy as np

from m3edge.evaluate import usage_entropy

from conftest import ROOT, run_cli


def test_usage_entropy():
    assert usage_entropy(np.ones(64)) == math.log2(64)
    assert usage_entropy(np.array([5, 0, 0])) == 0.0


def test_eval_cli_json_on_a_trained_checkpoint(tiny_checkpoint):
    r = run_cli("eval", tiny_checkpoint, "--json", "--max-bytes", "3000")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("bits_per_byte", "top1_accuracy", "experts_used", "expert_usage_entropy", "baselines"):
        assert key in res
    assert set(res["baselines"]) == {"unigram_bits_per_byte", "bigram_bits_per_byte"}
    assert res["bytes"] == 3000 and 0 <= res["top1_accuracy"] <= 1


def test_committed_reference_beats_the_ngram_baselines_and_uses_every_expert():
    r = run_cli("eval", ROOT / "checkpoints" / "small", "--json", "--max-bytes", "40000")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    b = res["baselines"]
    assert res["bits_per_byte"] < b["bigram_bits_per_byte"] < b["unigram_bits_per_byte"]
    assert res["experts_used"] == [64, 64]


def test_eval_memory_on_a_bundle_runs_online_and_reports_both(tiny_bundle):
    r = run_cli("eval", tiny_bundle, "--memory", "--max-bytes", "3000", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["memory"]
    assert {"bits_per_byte", "bits_per_byte_without", "memories"} <= set(m)
    assert m["memories"] == 3000 and m["bits_per_byte"] < m["bits_per_byte_without"]  # the memory helps
    bad = run_cli("eval", tiny_bundle, "--memory", "--task-type", "poetry")
    assert bad.returncode == 2 and "poetry" in bad.stderr and "Traceback" not in bad.stderr
