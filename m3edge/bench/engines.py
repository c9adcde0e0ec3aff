"""The engines a worker process measures: the torch agent, the monolithic onnx graph, the m3edge runtime.

Each takes the worker's argument dict; ``step`` runs one batch of windows (greedy decoding), ``generate``
the agent's own loop (memory, sampling), ``stats`` the expert cache's counters where there is one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class TorchEngine:
    """The reference agent, eager fp32: what a user runs without m3edge."""

    def __init__(self, args: dict):
        import torch

        from m3edge import checkpoint

        torch.set_num_threads(args["threads"])
        self.torch = torch
        if args.get("checkpoint"):
            self.agent = checkpoint.load(args["checkpoint"])
        else:
            self.agent = checkpoint.agent_from_source(
                json.loads(Path(args["bundle"], "manifest.json").read_text())["source"])
        self.agent.memory.storage.clock = lambda: 0.0  # a frozen clock: identical memory behaviour everywhere

    def generate(self, prompt: bytes, n: int, temperature: float) -> bytes:
        return self.agent.generate(prompt, n, temperature, seed=0)

    def step(self, windows: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.agent.step(self.torch.from_numpy(windows), use_memory=False).logits.numpy()

    def stats(self) -> dict:
        return {}


class MonolithicEngine:
    """One onnx graph of the whole step (export/monolithic.py) in one onnxruntime session."""

    def __init__(self, args: dict):
        from m3edge.backends import SessionConfig
        from m3edge.backends.onnxruntime.runtime import OrtGraph

        self.graph = OrtGraph(args["onnx"], SessionConfig(threads=args["threads"]))

    def step(self, windows: np.ndarray) -> np.ndarray:
        return self.graph.run(windows)[0]

    def stats(self) -> dict:
        return {}


class RuntimeEngine:
    """The m3edge runtime on a bundle (any precision or backend the bundle was exported with)."""

    def __init__(self, args: dict):
        from m3edge.runtime.agent import EdgeAgent
        from m3edge.runtime.options import RuntimeOptions

        self.agent = EdgeAgent.open(args["bundle"], options=RuntimeOptions(
            cache_experts=args.get("cache"), cache_bytes=args.get("cache_bytes"), policy=args.get("policy"),
            prefetch=args.get("prefetch") or "off", threads=args["threads"], clock=lambda: 0.0,
            engine_cache=args.get("engine_cache")))
        self.agent.executor.expert_io = args.get("expert_io", "read")
        if args.get("cache") is None and args.get("cache_bytes") is None:
            self.agent.executor.cache.unbounded()  # every expert resident: measure the engine, not the cache
        n = self.agent.cfg
        self.touched = np.zeros((n.n_layers, n.n_experts), dtype=np.int64)  # steps in which each expert ran

    def generate(self, prompt: bytes, n: int, temperature: float) -> bytes:
        return self.agent.generate(prompt, n, temperature, seed=0)

    def step(self, windows: np.ndarray) -> np.ndarray:
        fwd = self.agent.executor.forward(windows)
        for layer, r in enumerate(fwd.routing):
            self.touched[layer, np.unique(r.index[r.keep])] += 1
        return fwd.logits

    def stats(self) -> dict:
        return dict(self.agent.stats()["cache"])


ENGINES = {"torch": TorchEngine, "monolithic": MonolithicEngine, "runtime": RuntimeEngine}
