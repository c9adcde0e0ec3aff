"""EdgeAgent against the torch agent: parity, cache-size independence, faults, bad input."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from m3edge import checkpoint
from m3edge.data import load_split, windows
from m3edge.errors import BadInput
from m3edge.runtime.agent import EdgeAgent
from m3edge.runtime.options import RuntimeOptions
from m3edge.backends import session as graph

from conftest import BLOCK_TORCH, DATA, run_cli

PROMPT = b"def parse(self, text):\n    "


def clock():
    return 5000.0


def make_windows(text: bytes, n: int) -> np.ndarray:
    return windows(np.frombuffer(text, dtype=np.uint8), np.arange(1, n + 1), 8)


@pytest.fixture(scope="module")
def torch_greedy(tiny_checkpoint):
    agent = checkpoint.load(tiny_checkpoint, clock=clock)
    return agent.generate(PROMPT, 256)


@pytest.mark.parametrize("cache_experts, prefetch, policy", [
    (1, "off", "lru"), (1, "thread", "lru"), (2, "inline", "lru"), (3, "thread", "lfu"), (7, "off", "lfu"),
    (16, "thread", "lru"), (None, "off", "lru")])
def test_greedy_generation_matches_torch_for_every_cache_size(tiny_bundle, torch_greedy, cache_experts, prefetch,
                                                              policy):
    options = RuntimeOptions(cache_experts=cache_experts or 16, prefetch=prefetch, policy=policy, clock=clock)
    with EdgeAgent.open(tiny_bundle, options=options) as agent:
        assert agent.generate(PROMPT, 256) == torch_greedy
        stats = agent.stats()
    assert stats["cached_experts"] <= (cache_experts or 16) * 1  # per layer; the tiny agent has one layer
    if cache_experts == 1:
        assert stats["cache"]["evictions"] > 0


def test_experts_run_as_weights_through_shared_sessions_unless_every_expert_fits(tiny_bundle):
    from m3edge.runtime.executor import ExpertGraphs, ExpertWeights

    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(cache_experts=2, clock=clock)) as agent:
        ex = agent.executor
        assert ex.shares_sessions
        agent.generate(PROMPT, 16)
        assert ex.cache._items and all(isinstance(v, ExpertWeights) for v in ex.cache._items.values())
        files = {ex.bundle.find("expert", b, 0, e)["path"] for b in ex.capacity_buckets for e in range(8)}
        assert 0 < len(ex._shared) <= len(files)  # sessions per graph file, not per expert
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(cache_experts=8, clock=clock)) as agent:
        assert not agent.executor.shares_sessions
        agent.generate(PROMPT, 4)
        assert all(isinstance(v, ExpertGraphs) for v in agent.executor.cache._items.values())


def test_prefetch_predicts_the_next_steps_first_layer_from_export_counts(tiny_bundle):
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(cache_experts=2, prefetch="inline", clock=clock)) as agent:
        counts = np.asarray(agent.executor.bundle.manifest["expert_usage"]["next_token"])
        assert counts.shape == (8, 8) and counts.sum() > 0
        agent.generate(PROMPT, 32)
        st = agent.stats()["cache"]
    assert st["prefetched"] > 0 and st["prefetch_hits"] > 0


def test_experts_on_worker_threads_give_the_same_bytes(tiny_bundle, torch_greedy):
    # Without banks: a batch this size would run through the layer's bank, not the workers.
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(expert_workers=2, banks=False, clock=clock)) as agent:
        assert agent.executor.pool is not None and agent.executor.session.threads == 1  # 2 profile threads, split
        assert agent.generate(PROMPT, 256) == torch_greedy
        windows = agent._windows(PROMPT * 4, np.arange(1, 33))
        batched = agent._forward(windows, use_memory=False)[0]
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(banks=False, clock=clock)) as agent:
        assert np.array_equal(agent._forward(windows, use_memory=False)[0], batched)  # same sums, same order


def test_a_batch_touching_most_experts_runs_through_the_layers_bank(tiny_bundle, monkeypatch):
    sizes = (8, 32)
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)) as agent:
        ex, most = agent.executor, []
        run_bank = ex._run_bank
        monkeypatch.setattr(ex, "_run_bank", lambda layer, bank, rows, counts: most.append(int(counts.max()))
                            or run_bank(layer, bank, rows, counts))
        banked = [agent._forward(make_windows(PROMPT * 4, n), use_memory=False)[0] for n in sizes]
        # 8 tokens: every expert's rows fit its block of 8; 32: some run the rest through their own graph
        assert len(most) == 2 and most[0] <= 8 < most[1]
        agent._forward(make_windows(PROMPT, 1), use_memory=False)  # one token: 2 of 8 experts, a call each
        assert len(most) == 2
        everything = ex.expert_bytes
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(banks=False, clock=clock)) as agent:
        for n, want in zip(sizes, banked):
            assert np.array_equal(agent._forward(make_windows(PROMPT * 4, n), use_memory=False)[0], want)
    # A bank holds every expert (a second copy of their weights): only where the cache may hold them all twice.
    busy = np.full(8, 2)
    for experts, nbytes, used in ((4, None, False), (8, 2 * everything - 1, False), (8, 2 * everything, True)):
        options = RuntimeOptions(cache_experts=experts, cache_bytes=nbytes, clock=clock)
        with EdgeAgent.open(tiny_bundle, options=options) as agent:
            assert (agent.executor._bank_for(0, busy) is not None) == used


def test_sessions_get_the_profiles_threads_only_where_the_work_is(tiny_bundle, monkeypatch):
    def intra_op(agent):
        expert = agent.executor.cache.get((0, 0)).session(agent.executor.capacity_buckets[0])
        return expert.session.get_session_options().intra_op_num_threads

    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(threads=2, clock=clock)) as agent:
        assert intra_op(agent) == 1  # a tiny expert: a second thread costs more than it saves
    monkeypatch.setattr(graph, "PARALLEL_WORK", 0)
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(threads=2, clock=clock)) as agent:
        assert intra_op(agent) == 2


def test_the_agent_sizes_numpys_blas_pool(tiny_bundle):
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(2, user_api="blas"):  # whatever the test process had, restored after
        with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)):
            assert blas() == {1}  # the default: one BLAS thread beside onnxruntime's workers
        threadpool_limits(2, user_api="blas")
        with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(blas_threads=None, clock=clock)):
            assert blas() == {2}  # None leaves the process's setting alone


def test_step_logits_match_torch_on_eval_text(tiny_bundle, tiny_checkpoint):
    ref = checkpoint.load(tiny_checkpoint, clock=clock)
    text = load_split(DATA, "eval")[:3000]
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)) as agent:
        for n in (0, 1, 17, 2999):
            got = agent.step(text[:n].tobytes(), use_memory=False)
            w = torch.from_numpy(windows(text, np.array([n]), ref.cfg.context))
            assert np.abs(got - ref(w).logits[0].detach().numpy()).max() <= 1e-4


def test_sampling_is_seeded(tiny_bundle):
    pinned = RuntimeOptions(clock=clock)
    with EdgeAgent.open(tiny_bundle, options=pinned) as a, EdgeAgent.open(tiny_bundle, options=pinned) as b:
        x = a.generate("x = ", 40, temperature=0.8, seed=3)
        assert x == b.generate("x = ", 40, temperature=0.8, seed=3)


def test_bad_input_raises_value_error(tiny_bundle):
    with EdgeAgent.open(tiny_bundle) as agent:
        for call, word in [(lambda: agent.step(123), "bytes or str"),
                           (lambda: agent.generate(b"x", -1), "max_bytes"),
                           (lambda: agent.generate(b"x", 2.5), "max_bytes"),
                           (lambda: agent.generate(b"x", 3, temperature=float("nan")), "temperature"),
                           (lambda: agent.generate(b"x" * (1 << 21), 1), "limit")]:
            with pytest.raises(ValueError, match=word):
                call()


def test_memory_dir_survives_a_restart(tiny_bundle, tmp_path):
    mem = tmp_path / "mem"
    with EdgeAgent.open(tiny_bundle, memory_dir=mem, options=RuntimeOptions(clock=clock)) as a:
        a.generate(PROMPT, 10)
        n = len(a.memory)
    assert n == len(PROMPT) - 1 + 10
    with EdgeAgent.open(tiny_bundle, memory_dir=mem, options=RuntimeOptions(clock=clock)) as b:
        assert len(b.memory) == n


def corrupt(bundle, tmp_path, how):
    import shutil

    dst = tmp_path / f"b-{how}"
    shutil.copytree(bundle, dst)
    g = next(dst.glob("graphs/expert_*.b2.*.onnx"))  # a graph file the experts of a kind share
    w = dst / "graphs" / "layer0" / "expert_01.weights"
    m = json.loads((dst / "manifest.json").read_text())
    if how == "tampered":
        g.write_bytes(g.read_bytes().replace(b"m3edge", b"m3edgf", 1))
    elif how == "truncated":
        w.write_bytes(w.read_bytes()[:50])
    elif how == "missing":
        w.unlink()
    elif how == "schema":
        m["schema_version"] = 7
    elif how == "escape":
        m["files"][0]["path"] = "../../etc/passwd"
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("how, word", [("tampered", r"graphs/expert_\w+\.b2\.[0-9a-f]+\.onnx"),
                                       ("truncated", "expert_01.weights"),
                                       ("missing", "expert_01.weights"), ("schema", "schema_version"),
                                       ("escape", "leaves the bundle")])
def test_untrusted_bundles_are_refused_before_anything_runs(tiny_bundle, tmp_path, how, word):
    bad = corrupt(tiny_bundle, tmp_path, how)
    with pytest.raises(BadInput, match=word):
        EdgeAgent.open(bad)
    r = run_cli("run", bad, "--prompt", "x")
    assert r.returncode == 2 and re.search(word, r.stderr) and "Traceback" not in r.stderr


def test_run_cli_json(tiny_bundle):
    r = run_cli("run", tiny_bundle, "--prompt", "import ", "--max-bytes", "20", "--json", "--cache-experts", "4")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert isinstance(res["text"], str) and res["bytes"] == 20
    assert res["bytes_per_s"] > 0 and {"hits", "misses", "evictions"} <= set(res["cache"])
    assert len(res["experts_used"]) == 1


def test_runtime_runs_a_bundle_without_torch(tiny_bundle):
    code = BLOCK_TORCH + f"""
from m3edge.runtime.agent import EdgeAgent
with EdgeAgent.open({str(tiny_bundle)!r}) as a:
    out = a.generate(b"import ", 8)
assert "torch" not in sys.modules and len(out) == 8
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_memory_that_matters_gives_the_same_logits_and_bytes_on_the_bundle(tiny_bundle, tiny_checkpoint):
    """A fact stated once, 2 kB of other text, then its cue: memory changes the continuation, and the bundle's
    log-probabilities (through its reader graph) match torch's within 1e-4, greedy bytes identical."""
    fact = b"\nsecret_code = 'QXZ7731PLUM'\n"
    filler = bytes(load_split(DATA, "eval")[:2048])
    prompt = b"import os\n" + fact + filler + b"\nsecret_code = '"
    agent = checkpoint.load(tiny_checkpoint, clock=clock)
    torch_on = agent.generate(prompt, 11)
    w = torch.from_numpy(windows(np.frombuffer(prompt + torch_on, dtype=np.uint8), np.array([len(prompt) + 11]), 8))
    torch_logp = agent.step(w).logits[0].numpy()
    agent.memory.reset()
    torch_off = agent.generate(prompt, 11, use_memory=False)
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)) as e:
        assert e.generate(prompt, 11) == torch_on
        logp = e.step(prompt + torch_on)
        assert len(e.memory) == len(prompt) - 1 + 11
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)) as e:
        assert e.generate(prompt, 11, use_memory=False) == torch_off
    assert torch_on != torch_off  # memory changed what the agent predicts
    assert np.abs(logp - torch_logp).max() <= 1e-4
    with EdgeAgent.open(tiny_bundle, options=RuntimeOptions(clock=clock)) as e:  # factual: exact matches or nothing
        e.generate(prompt, 0)
        unseen = b"QWERTYUIOPASDFGHJKLZ"  # no window of it was ever stored: factual retrieves nothing
        assert e.generate(unseen, 4, mode="factual") == e.generate(unseen, 4, use_memory=False)
        with pytest.raises(ValueError, match="unknown retrieval mode"):
            e.generate(prompt, 1, mode="fuzzy")


@pytest.mark.parametrize("field, value, says", [("prefetch", True, "prefetch must be one of off, thread, inline"),
                                                ("policy", "fifo", "policy must be one of lru, lfu"),
                                                ("cache_experts", 0, "cache_experts must be an integer >= 1"),
                                                ("banks", "yes", "banks must be true or false"),
                                                ("blas_threads", 0, "blas_threads must be an integer >= 1")])
def test_runtime_options_have_one_spelling_each(field, value, says):
    with pytest.raises(ValueError, match=says):
        RuntimeOptions(**{field: value})
    assert RuntimeOptions(prefetch="thread").cache_policy == "lru" and RuntimeOptions().cache_policy == "lfu"
