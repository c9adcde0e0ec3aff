"""The device has no torch: the package and its runtime must import without it."""

import subprocess
import sys

from conftest import BLOCK_TORCH as GUARD

BLOCK_TORCH = GUARD + """
import m3edge, m3edge.runtime, m3edge.targets, m3edge.config, m3edge.data, m3edge.cli
assert "onnxruntime" not in sys.modules  # the runtime package loads its agent (and onnxruntime) on first use
from m3edge.runtime import EdgeAgent, Recall, BatcherConfig, Bundle, open_bundle, M3EdgeError, BadInput, CheckFailed
from m3edge.runtime import *
assert EdgeAgent.__module__ == "m3edge.runtime.agent" and "EdgeAgent" in dir(m3edge.runtime)
import m3edge.runtime.agent, m3edge.runtime.executor, m3edge.runtime.placement
import m3edge.runtime.expert_parallel, m3edge.runtime.ray_serve
import m3edge.backends, m3edge.routing, m3edge.manifest, m3edge.runtime.agent, m3edge.runtime.options
from m3edge import backends
[backends.runtime(n) for n in backends.names()]  # every runtime side, the reference one included
assert "torch" not in sys.modules
assert "ray" not in sys.modules, "ray is an optional extra: imported only when a Ray path is used"
print("ok")
"""


def test_import_without_torch():
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_guard_really_blocks_torch():
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH.replace("import m3edge,", "import torch, m3edge,")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "not installed on this device" in r.stderr


def test_public_names_have_docstrings():
    """Every public name of the runtime's API and of the modules the CLI exposes says what it is (issue 20)."""
    import inspect

    import m3edge.runtime as rt
    from m3edge import cli, progress
    from m3edge.export import inspectable
    from m3edge.runtime import agent

    missing = []
    for mod in (rt, agent, progress, inspectable):
        names = getattr(mod, "__all__", None) or [n for n, v in vars(mod).items()
                                                 if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__
                                                 and (inspect.isclass(v) or inspect.isfunction(v))]
        for n in names:
            v = getattr(mod, n)
            if not (v.__doc__ or "").strip():
                missing.append(f"{mod.__name__}.{n}")
            if inspect.isclass(v) and v.__module__.startswith("m3edge"):
                missing += [f"{mod.__name__}.{n}.{m}" for m, f in vars(v).items()
                            if not m.startswith("_") and callable(getattr(f, "__func__", f))
                            and not (getattr(f, "__func__", f).__doc__ or "").strip()]
    for name, cmd in cli.cli.commands.items():
        if not (cmd.help or "").strip():
            missing.append(f"m3edge {name}")
    assert not missing, missing
