"""Runs a bundle's graphs in the order of the reference agent, in numpy: the static-shape dispatch.

Tokens are cut into the profile's token buckets (zero-padded, padding discarded); each layer's routed
(token, expert) pairs are grouped per expert in token order and run in chunks of the expert's capacity
buckets; weighted outputs are added back per token. Python loops run over buckets and active experts,
never over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from m3edge.bundle import Bundle
from m3edge.config import ModelConfig
from m3edge.runtime import routing
from m3edge.runtime.graph import OrtGraph, SessionConfig


@dataclass
class LayerRouting:
    logits: np.ndarray  # [N, E]
    index: np.ndarray  # [N, k]
    weight: np.ndarray  # [N, k]
    keep: np.ndarray  # [N, k]


@dataclass
class Forward:
    logits: np.ndarray
    x: np.ndarray
    key: np.ndarray
    complexity: np.ndarray
    routing: list[LayerRouting]


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    if a.shape[0] == rows:
        return a
    out = np.zeros((rows,) + a.shape[1:], dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


class BundleExecutor:
    def __init__(self, bundle: Bundle, session: SessionConfig | None = None):
        self.bundle = bundle
        self.cfg = ModelConfig.from_dict(bundle.manifest["model_config"])
        r = bundle.manifest["routing"]
        self.mode = r["mode"]
        self.capacity = r["capacity"]
        self.token_buckets = tuple(r["token_buckets"])
        self.capacity_buckets = tuple(r["capacity_buckets"])
        self.session = session or SessionConfig()
        self._graphs: dict[tuple, OrtGraph] = {}
        self.expert_calls = 0

    def graph(self, role: str, bucket: int, layer: int | None = None, expert: int | None = None) -> OrtGraph:
        key = (role, bucket, layer, expert)
        g = self._graphs.get(key)
        if g is None:
            entry = self.bundle.find(role, bucket, layer, expert)
            g = self._graphs[key] = OrtGraph(self.bundle.path(entry["path"]), self.session)
        return g

    def run_tokens(self, role: str, inputs: list[np.ndarray], layer: int | None = None) -> list[np.ndarray]:
        """Run a per-token graph over N rows in token-bucket chunks."""
        n = inputs[0].shape[0]
        outs, start = [], 0
        for rows, bucket in routing.plan_chunks(n, self.token_buckets):
            feeds = [pad_rows(a[start:start + rows], bucket) for a in inputs]
            outs.append([o[:rows] for o in self.graph(role, bucket, layer).run(*feeds)])
            start += rows
        return [np.concatenate(parts) for parts in zip(*outs)]

    def encode(self, windows: np.ndarray):
        return self.run_tokens("encoder", [windows.astype(np.int64)])

    def align(self, x: np.ndarray, memory: np.ndarray) -> np.ndarray:
        return self.run_tokens("alignment", [x, memory.astype(np.float32)])[0]

    def route(self, layer: int, x: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, LayerRouting]:
        h, logits = self.run_tokens("router", [x, bias], layer)
        values, index = routing.select_topk(logits, self.cfg.top_k)
        weight = routing.topk_weights(values)
        keep = np.ones_like(index, dtype=bool)
        if self.mode == "capacity":
            keep = routing.capacity_keep(index, weight, self.cfg.n_experts, self.capacity)
            weight = np.where(keep, weight, 0).astype(weight.dtype)
        return h, LayerRouting(logits, index, weight, keep)

    def experts(self, layer: int, h: np.ndarray, r: LayerRouting) -> np.ndarray:
        k = self.cfg.top_k
        order, counts = routing.group_by_expert(r.index, self.cfg.n_experts)
        flat_w, flat_keep = r.weight.reshape(-1), r.keep.reshape(-1)
        out = np.zeros_like(h)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for e in np.flatnonzero(counts):
            pairs = order[bounds[e]:bounds[e + 1]]
            pairs = pairs[flat_keep[pairs]]
            if pairs.size == 0:
                continue
            tokens = pairs // k  # unique within one expert: a token picks an expert at most once
            rows = h[tokens]
            ys, start = [], 0
            for n, bucket in routing.plan_chunks(len(tokens), self.capacity_buckets):
                ys.append(self.graph("expert", bucket, layer, int(e)).run(pad_rows(rows[start:start + n], bucket))[0][:n])
                start += n
                self.expert_calls += 1
            out[tokens] += np.concatenate(ys) * flat_w[pairs, None]
        return out

    def head(self, x: np.ndarray) -> np.ndarray:
        return self.run_tokens("head", [x])[0]

    def forward(self, windows: np.ndarray, memory: np.ndarray | None = None) -> Forward:
        x, key, complexity = self.encode(windows)
        if memory is None:
            memory = np.zeros_like(x)
        bias = self.align(x, memory)
        routed = []
        for layer in range(self.cfg.n_layers):
            h, r = self.route(layer, x, bias)
            x = x + self.experts(layer, h, r)
            routed.append(r)
        return Forward(self.head(x), x, key, complexity, routed)
