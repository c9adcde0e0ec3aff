"""The two contracts a backend implements, and what it declares it can do. Stdlib only.

A backend is a folder ``m3edge/backends/<name>/`` (ExecuTorch's ``backends/<name>/`` layout):

    __init__.py   a ``Backend`` subclass, ``@register``-ed: its name and ``Capabilities``; stdlib only, so
                  ``m3edge targets`` and the profile schema can list backends on a device without importing them
    runtime.py    a ``RuntimeBackend`` (``@runtime_side``): opens one graph of a bundle; must not import torch
                  (the device install has none)
    export.py     an ``ExportBackend`` (``@export_side``): builds a module's graphs, says how it calibrates;
                  host-side, imported only when an export asks for it

Everything outside a backend's folder asks the registry (``m3edge.backends.get``) and the declared capabilities,
never compares a backend's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

from m3edge.errors import BadInput

if TYPE_CHECKING:  # annotations only: this module stays stdlib
    import numpy as np


class Unsupported(BadInput):
    """An optional side of the contract a backend does not offer (callers check ``capabilities`` first)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares; the pipeline, the executor and the schema decide from these alone."""

    graph_format: str  # the graph files it writes and reads: "onnx" | "tflite"
    precisions: tuple[str, ...] = ()  # what its export side builds; empty: it has no export side
    shared_weights: bool = False  # experts of a kind share graph files and run weights files as inputs,
    # so a layer's experts can be merged into a bank and a small cache can run them through shared sessions
    providers: bool = False  # a target profile lists execution providers for it (at least one)
    device: bool = True  # it runs on the device install; False: a host-side tool (a parity oracle)
    engine: str = ""  # what runs the graphs, for ``m3edge targets`` when the profile lists no providers

    @property
    def exports(self) -> bool:
        return bool(self.precisions)


class Graph(Protocol):
    """One loaded graph: float32 (and int64 index) arrays in, float32 arrays out, in the module's port order."""

    input_names: list[str]
    output_names: list[str]

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]: ...


class Backend:
    """A backend's declaration (its folder's ``__init__``): name, other names, capabilities. ``runtime()`` and
    ``export()`` import the sides on first use."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities]
    package: ClassVar[str] = ""  # filled by ``register``: where runtime.py and export.py live

    def runs(self, graph_backend: str) -> bool:
        """Whether this backend can run graphs a bundle records for ``graph_backend`` (same file format)."""
        from m3edge.backends import get

        return get(graph_backend).capabilities.graph_format == self.capabilities.graph_format


class RuntimeBackend(ABC):
    """Opens a bundle's graph: the runtime side. Must not import torch."""

    name: ClassVar[str]

    @abstractmethod
    def open(self, src, entry: dict, cfg) -> Graph:
        """``src``: a ``bundle.GraphFile`` (checked bytes) or a path; ``entry``: the manifest's graph entry (ports,
        signature); ``cfg``: a ``SessionConfig``."""

    def open_shared(self, src, cfg) -> Graph:
        """A graph whose weights are inputs (``runtime/template.py``), run with ``run_feeds``; only for backends
        that declare ``shared_weights``."""
        raise Unsupported(f"the {self.name} backend runs no shared graphs (capabilities: shared_weights false)")


class ExportBackend(ABC):
    """Builds a module's graphs: the export side. Host-only (torch, onnx, converters)."""

    name: ClassVar[str]

    @abstractmethod
    def build(self, spec, precision: str, cal, target, opts, calibration: dict, root, built: dict):
        """Write ``spec``'s graphs at every bucket under ``root``; return an ``export.pipeline.Built``."""

    def build_bank(self, spec, precision: str, cal, target, opts, calibration: dict, root, built: dict):
        """A layer's experts merged into one graph; only for backends that declare ``shared_weights``."""
        raise Unsupported(f"the {self.name} backend builds no expert banks (capabilities: shared_weights false)")

    @abstractmethod
    def calibrator(self, target, opts) -> dict:
        """What reports/calibration.json records about how this backend calibrates INT8."""

    def versions(self) -> dict:
        """Library versions the manifest records beyond m3edge, torch, onnx and onnxruntime."""
        return {}

    def check_file(self, src, expected_in: dict, expected_out: dict) -> None:
        """Structure checks on a written graph before it is loaded (raise ``validate.ValidationError``)."""

    def check_loaded(self, graph, name: str, entry: dict, expected_in: dict, expected_out: dict) -> None:
        """Checks on a loaded graph (raise ``validate.ValidationError``)."""
