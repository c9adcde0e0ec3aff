import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "calibration_data"


@pytest.fixture(scope="session")
def tiny_cfg():
    from m3edge.config import preset

    return preset("tiny")


@pytest.fixture
def tiny_agent(tiny_cfg):
    import torch

    from m3edge.model.agent import MemoryMoEAgent

    torch.manual_seed(0)
    return MemoryMoEAgent(tiny_cfg).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny agent trained for a few steps: a real checkpoint on disk, shared by the session."""
    from m3edge import checkpoint
    from m3edge.config import preset
    from m3edge.train import TrainConfig, train

    agent, report = train(preset("tiny"), DATA, TrainConfig(steps=30, batch=256, eval_bytes=4096))
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(agent, out, {"preset": "tiny"})
    return out


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory):
    """host-cpu with small buckets, written as a user's own profile file."""
    import json

    from m3edge import targets

    d = targets.load("host-cpu").to_dict() | {"name": "tiny-test", "aliases": [], "token_buckets": [1, 8],
                                               "capacity_buckets": [2, 8]}
    p = tmp_path_factory.mktemp("target") / "tiny-test.json"
    p.write_text(json.dumps(d))
    return p


def export_tiny(tmp_path_factory, checkpoint_dir, target_file, name: str):
    """Export a checkpoint for a profile file into a fresh temporary folder; returns (bundle, parity report)."""
    from m3edge import checkpoint, targets
    from m3edge.export.pipeline import ExportOptions, export_bundle

    agent, source = checkpoint.build_agent(checkpoint_dir)
    out = tmp_path_factory.mktemp(name) / "tiny"
    report = export_bundle(agent, source, targets.load(str(target_file)), out, DATA, opts=ExportOptions(parity_tokens=256))
    return out, report


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint, tiny_target):
    """The trained tiny checkpoint exported for the tiny target: a real bundle for runtime tests."""
    return export_tiny(tmp_path_factory, tiny_checkpoint, tiny_target, "bundle")[0]


# Prepended to a subprocess's code: importing torch fails there, as on a device without it.
BLOCK_TORCH = """
import builtins, sys
real = builtins.__import__
def guard(name, *a, **k):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is not installed on this device")
    return real(name, *a, **k)
builtins.__import__ = guard
"""


def run_cli(*args, env=None):
    """Run the installed CLI in a subprocess, as a user would."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "m3edge.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def memory_step(ref, dev, state, rng, step):
    """One retrieve-then-store step on the torch memory system and the device's, with the same inputs;
    asserts the two retrievals agree. ``ref`` is an M3MemorySystem, ``dev`` a LongTermMemory. Windows use few
    byte values, so exact and suffix context matches happen."""
    import numpy as np
    import torch

    key, complexity = ref.sensory(state)
    n = state.shape[0]
    w = torch.from_numpy(rng.integers(0, 3, (n, ref.cfg.context)))
    ctx_key = ref.context_keys(key)
    a = ref.read(key, w)
    for group in a.reconsolidation_groups(ref.cfg.memory_top_k):
        ref.storage.reconsolidate(group)
    b = dev.read(key.numpy(), ctx_key.numpy(), ref.hashes(w), ref.cfg.memory_read_k)
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.next_bytes, b.next_bytes), step
    assert np.allclose(a.scores, b.scores, atol=1e-6) and np.allclose(a.values, b.values, atol=1e-6), step
    nxt = torch.from_numpy(rng.integers(0, 256, n))
    surprise = torch.rand(n)
    pref = torch.softmax(torch.randn(n, 6), -1)
    ref.store(state, key, w, nxt, complexity, surprise, pref)
    dev.store(key.numpy(), ctx_key.numpy(), ref.encode_experience(state, nxt).numpy(), complexity.numpy(),
              surprise.numpy(), nxt.numpy(), ref.hashes(w), pref.argmax(-1).numpy())
