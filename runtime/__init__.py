"""The on-device runtime: numpy, onnxruntime or LiteRT, the standard library; never torch.

The public API, importable from here::

    from m3edge.runtime import EdgeAgent

    with EdgeAgent.open("bundle/", memory_dir="mem/") as agent:
        print(agent.generate("def main(argv):", 64).decode())

``EdgeAgent`` (and ``Recall``, ``BatcherConfig``) are imported on first use: importing this package stays
cheap (no onnxruntime) for code that only reads a bundle's manifest or a memory store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from m3edge.bundle import Bundle, open_bundle
from m3edge.errors import BadInput, CheckFailed, M3EdgeError
from m3edge.runtime.options import RuntimeOptions

if TYPE_CHECKING:  # what the lazy names are, for type checkers and IDEs
    from m3edge.runtime.agent import EdgeAgent, Recall
    from m3edge.runtime.batcher import BatcherConfig

__all__ = ["EdgeAgent", "Recall", "RuntimeOptions", "BatcherConfig", "Bundle", "open_bundle", "M3EdgeError",
           "BadInput", "CheckFailed"]

# name -> module it lives in; loaded by __getattr__ (PEP 562) the first time it is asked for.
_LAZY = {"EdgeAgent": "m3edge.runtime.agent", "Recall": "m3edge.runtime.agent",
         "BatcherConfig": "m3edge.runtime.batcher"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups do not come back here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
