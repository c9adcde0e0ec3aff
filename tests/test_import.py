"""The device has no torch: the package and its runtime must import without it."""

import subprocess
import sys

from conftest import BLOCK_TORCH as GUARD

BLOCK_TORCH = GUARD + """
import m3edge, m3edge.runtime, m3edge.targets, m3edge.config, m3edge.data, m3edge.cli
import m3edge.backends, m3edge.routing, m3edge.manifest, m3edge.runtime.agent, m3edge.runtime.options
from m3edge import backends
[backends.runtime(n) for n in backends.names()]  # every runtime side, the reference one included
assert "torch" not in sys.modules
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
