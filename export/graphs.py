"""The graph split: which torch module becomes which bundle graph, with its static I/O per bucket.

  encoder    windows [T, K] int64           -> x [T, d], key [T, m], complexity [T, 1],
                                               context_key [T, m] (unit-length context-encoder view of key)
  memory     x [T, d], next_byte [T] int64  -> value [T, d] (the experience the long-term store keeps)
  alignment  x [T, d], memory [T, d],       -> bias [T, E], type_scores [T, 6] (memory types; argmax = a memory's
             task [T, 6] (log preferences)       type)
  router L   x [T, d], bias [T, E]          -> h [T, d] (the layer's pre-norm), logits [T, E]
  expert L,e h [C, d]                       -> y [C, d]      one graph per expert, exported on its own
                                                               (its exact single-token view: export/views.py)
  bank L     x [E*C, d]                     -> y [E*C, d]    every expert of layer L, C rows each (optional,
                                                               built from the expert graphs: onnxruntime/bank.py)
  head       x [T, d]                       -> logits [T, 256]
  reader     logits [T, 256], scores /      -> logp [T, 256]  the memory read: a kNN-LM mix of what followed the
             exact / valid [T, R] float,                      retrieved memories (m3edge/model/reader.py)
             next_bytes [T, R] int64
T runs over the profile's token buckets, C over its capacity buckets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from m3edge.backends.onnxruntime.bank import BankReference
from m3edge.export.views import export_view


class EncoderGraph(nn.Module):
    def __init__(self, agent):
        super().__init__()
        self.agent = agent

    def forward(self, windows):
        e = self.agent.encode(windows)
        ctx = F.normalize(self.agent.memory.associator.context_encoder(e.key), dim=-1)
        return e.x, e.key, e.complexity, ctx


class MemoryGraph(nn.Module):
    """The memory encoder: what an observed (state, byte) experience is stored as."""

    def __init__(self, agent):
        super().__init__()
        self.memory = agent.memory

    def forward(self, x, next_byte):
        # The agent's one_hot, written as a comparison: F.one_hot exports an index-range assertion that
        # litert-torch has no lowering for; for bytes in range the two are equal.
        vocab = self.memory.cfg.vocab
        onehot = (next_byte.unsqueeze(-1) == torch.arange(vocab, device=x.device)).to(x.dtype)
        return self.memory.memory_encoder(torch.cat([x, onehot], dim=-1))


class MemoryReference(nn.Module):
    """What MemoryGraph is checked against: the agent's own ``encode_experience`` (F.one_hot and all)."""

    def __init__(self, agent):
        super().__init__()
        self.memory = agent.memory

    def forward(self, x, next_byte):
        return self.memory.encode_experience(x, next_byte)


class AlignmentGraph(nn.Module):
    def __init__(self, agent):
        super().__init__()
        self.alignment = agent.alignment

    def forward(self, x, memory, task):
        return self.alignment(x, memory, task)


class ReaderGraph(nn.Module):
    """The memory reader: the head's logits mixed with the retrieved memories' next bytes."""

    def __init__(self, agent):
        super().__init__()
        self.reader = agent.reader

    def forward(self, logits, scores, next_bytes, exact, valid):
        return self.reader(logits, scores, next_bytes, exact, valid)


class RouterGraph(nn.Module):
    def __init__(self, agent, layer: int):
        super().__init__()
        self.norm = agent.norms[layer]
        self.gate = agent.layers[layer].gate

    def forward(self, x, bias):
        h = self.norm(x)
        return h, self.gate(h) + bias


class HeadGraph(nn.Module):
    def __init__(self, agent):
        super().__init__()
        self.norm, self.head = agent.final_norm, agent.head

    def forward(self, x):
        return self.head(self.norm(x))


# File stems (under graphs/) of the per-layer roles; the others are named after their role.
STEMS = {"expert": "layer{layer}/expert_{expert:02d}", "router": "layer{layer}/router", "bank": "layer{layer}/experts"}


@dataclass
class Port:
    name: str
    dims: tuple[int, ...]  # after the leading bucket dim
    dtype: str = "float32"


@dataclass
class GraphSpec:
    role: str
    module: nn.Module
    inputs: list[Port]
    outputs: list[Port]
    buckets: tuple[int, ...]
    layer: int | None = None
    expert: int | None = None
    memory_type: str | None = None
    reference: nn.Module | None = None  # what the graph is checked against, when ``module`` is an export view
    blocks: int = 1  # a bank stacks one block of ``bucket`` rows per expert

    @property
    def checked_against(self) -> nn.Module:
        return self.reference if self.reference is not None else self.module

    @property
    def stem(self) -> str:
        return STEMS.get(self.role, self.role).format(layer=self.layer, expert=self.expert)

    @property
    def kind(self) -> str:
        """What its graph file is named after: modules of one kind may share it (same structure)."""
        return {"expert": f"expert_{self.memory_type}", "bank": "experts"}.get(self.role, self.role)

    @property
    def label(self) -> str:
        return self.stem.replace("/", ".")

    def shape(self, port: Port, bucket: int) -> list[int]:
        return [bucket * self.blocks, *port.dims]

    def example(self, bucket: int) -> tuple[torch.Tensor, ...]:
        dtypes = {"int64": torch.long, "float32": torch.float32}
        return tuple(torch.zeros(self.shape(p, bucket), dtype=dtypes[p.dtype]) for p in self.inputs)


def split(agent, token_buckets, capacity_buckets, bank_rows: int | None = None) -> list[GraphSpec]:
    """Every graph of a bundle, in build order. ``bank_rows``: add a bank per layer with that many rows per
    expert (a capacity bucket), after the layer's experts it is merged from."""
    cfg = agent.cfg
    d, e, m = cfg.d_model, cfg.n_experts, cfg.memory_dim
    tb, cb = tuple(token_buckets), tuple(capacity_buckets)
    specs = [
        GraphSpec("encoder", EncoderGraph(agent), [Port("windows", (cfg.context,), "int64")],
                  [Port("x", (d,)), Port("key", (m,)), Port("complexity", (1,)), Port("context_key", (m,))], tb),
        GraphSpec("memory", MemoryGraph(agent), [Port("x", (d,)), Port("next_byte", (), "int64")],
                  [Port("value", (d,))], tb, reference=MemoryReference(agent)),
        GraphSpec("alignment", AlignmentGraph(agent), [Port("x", (d,)), Port("memory", (d,)), Port("task", (6,))],
                  [Port("bias", (e,)), Port("type_scores", (6,))], tb),
    ]
    for layer in range(cfg.n_layers):
        specs.append(GraphSpec("router", RouterGraph(agent, layer), [Port("x", (d,)), Port("bias", (e,))],
                               [Port("h", (d,)), Port("logits", (e,))], tb, layer))
        for ex in range(e):
            expert = agent.layers[layer].experts[ex]
            specs.append(GraphSpec("expert", export_view(expert), [Port("h", (d,))], [Port("y", (d,))],
                                   cb, layer, ex, cfg.expert_type(ex), reference=expert))
        if bank_rows:
            experts = list(agent.layers[layer].experts)
            specs.append(GraphSpec("bank", BankReference(experts, bank_rows), [Port("x", (d,))], [Port("y", (d,))],
                                   (bank_rows,), layer, blocks=len(experts)))
    specs.append(GraphSpec("head", HeadGraph(agent), [Port("x", (d,))], [Port("logits", (cfg.vocab,))], tb))
    r = cfg.memory_read_k
    specs.append(GraphSpec("reader", ReaderGraph(agent), [Port("logits", (cfg.vocab,)), Port("scores", (r,)),
                                                          Port("next_bytes", (r,), "int64"), Port("exact", (r,)),
                                                          Port("valid", (r,))], [Port("logp", (cfg.vocab,))], tb))
    return specs
