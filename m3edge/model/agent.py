"""MemoryMoEAgent: the reference agent every exported artefact is measured against.

  windows [N, K] bytes -> ByteFrontEnd -> h [N, d]
  SensoryBuffer(h) -> key [N, m], complexity [N, 1];  x = h + complexity * expand(key)   (encoder graph)
  long-term memory(key) -> context [N, d]                                                (host side)
  MemoryExpertAlignment(x, context) -> bias [N, E]                                       (alignment graph)
  per layer: h = norm(x); logits = gate(h) + bias (router graph); x = x + sum_k w_k expert_k(h)
  head(final_norm(x)) -> next-byte logits [N, 256]                                       (head graph)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from m3edge.config import ModelConfig
from m3edge.data import windows as make_windows
from m3edge.model.alignment import MemoryExpertAlignment
from m3edge.model.frontend import ByteFrontEnd
from m3edge.model.memory import M3MemorySystem
from m3edge.model.moe import MemoryMoELayer, Routed
from m3edge.synaptic import Clock


@dataclass
class Encoded:
    x: torch.Tensor  # [N, d] backbone input
    key: torch.Tensor  # [N, m] sensory code: the memory query
    complexity: torch.Tensor  # [N, 1]


@dataclass
class AgentOutput:
    logits: torch.Tensor
    encoded: Encoded
    routed: list[Routed]
    balance_loss: torch.Tensor


class MemoryMoEAgent(nn.Module):
    def __init__(self, cfg: ModelConfig, clock: Clock = time.time, memory_device: str = "ideal",
                 memory_capacity: int = 10_000):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.frontend = ByteFrontEnd(cfg)
        self.memory = M3MemorySystem(cfg, memory_capacity, clock, memory_device)
        self.sensory_expand = nn.Linear(cfg.memory_dim, d)
        self.alignment = MemoryExpertAlignment(cfg)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(cfg.n_layers))
        self.layers = nn.ModuleList(MemoryMoELayer(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab)

    def encode(self, windows: torch.Tensor) -> Encoded:
        h = self.frontend(windows)
        key, complexity = self.memory.sensory(h)
        return Encoded(h + complexity * self.sensory_expand(key), key, complexity)

    def decode(self, enc: Encoded, memory_context: torch.Tensor | None = None) -> AgentOutput:
        x = enc.x
        if memory_context is None:
            memory_context = torch.zeros_like(x)
        bias = self.alignment(x, memory_context)
        routed = []
        for norm, layer in zip(self.norms, self.layers):
            y, r = layer(norm(x), bias)
            x = x + y
            routed.append(r)
        logits = self.head(self.final_norm(x))
        balance = sum(r.balance_loss for r in routed) * self.cfg.balance_loss
        return AgentOutput(logits, enc, routed, balance)

    def forward(self, windows: torch.Tensor, memory_context: torch.Tensor | None = None) -> AgentOutput:
        return self.decode(self.encode(windows), memory_context)

    @torch.no_grad()
    def step(self, windows: torch.Tensor, use_memory: bool = True) -> AgentOutput:
        """One inference pass over independent windows, reading long-term memory when asked."""
        enc = self.encode(windows)
        context = self.memory.retrieve(enc.key) if use_memory else None
        return self.decode(enc, context)

    @torch.no_grad()
    def remember(self, out: AgentOutput, next_bytes: torch.Tensor) -> list[int]:
        """Store (state, observed byte) experiences; surprise is the byte's code length / 8 bits."""
        logp = torch.log_softmax(out.logits, dim=-1).gather(1, next_bytes.unsqueeze(1)).squeeze(1)
        surprise = (-logp / math.log(self.cfg.vocab)).clamp(0, 1)
        e = out.encoded
        return self.memory.store(e.x, e.key, next_bytes, e.complexity, surprise)

    @torch.no_grad()
    def generate(self, prompt: bytes, max_bytes: int, temperature: float = 0.0, seed: int | None = None,
                 use_memory: bool = True) -> bytes:
        """Greedy (temperature 0) or sampled continuation; every observed byte becomes an experience."""
        k = self.cfg.context
        text = bytearray(prompt)
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        if use_memory and len(text) > 1:
            data = np.frombuffer(bytes(text), dtype=np.uint8)
            pos = np.arange(1, len(data))
            out = self.step(torch.from_numpy(make_windows(data, pos, k)), use_memory)
            self.remember(out, torch.from_numpy(data[1:].astype(np.int64)))
        for _ in range(max_bytes):
            data = np.frombuffer(bytes(text), dtype=np.uint8)
            w = torch.from_numpy(make_windows(data, np.array([len(data)]), k))
            out = self.step(w, use_memory)
            logits = out.logits[0]
            if temperature > 0:
                nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            if use_memory:
                self.remember(out, torch.tensor([nxt]))
            text.append(nxt)
        return bytes(text[len(prompt):])
