"""MemoryMoEAgent: the reference agent every exported artefact is measured against.

  windows [N, K] bytes -> ByteFrontEnd -> h [N, d]
  SensoryBuffer(h) -> key [N, m], complexity [N, 1];  x = h + complexity * expand(key)   (encoder graph)
  long-term memory(key, context hashes) -> top R memories: scores, next bytes, values     (host side)
  MemoryExpertAlignment(x, context, task) -> bias [N, E], memory-type scores [N, 6]        (alignment graph)
  per layer: h = norm(x); logits = gate(h) + bias (router graph); x = x + sum_k w_k expert_k(h)
  head(final_norm(x)) -> next-byte logits [N, 256]                                       (head graph)
  MemoryReader(logits, retrieved scores / bytes / exact / valid) -> log-probs [N, 256]    (reader graph)
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
from m3edge.memory import retrieval
from m3edge.memory.synaptic import Clock
from m3edge.model.memory import M3MemorySystem
from m3edge.model.moe import MemoryMoELayer, Routed
from m3edge.model.reader import MemoryReader


@dataclass
class Encoded:
    x: torch.Tensor  # [N, d] backbone input
    key: torch.Tensor  # [N, m] sensory code: the memory query
    complexity: torch.Tensor  # [N, 1]


@dataclass
class AgentOutput:
    logits: torch.Tensor  # what the agent predicts: the reader's log-probs when memory was read, else lm_logits
    encoded: Encoded
    routed: list[Routed]
    balance_loss: torch.Tensor
    lm_logits: torch.Tensor | None = None  # the head's logits (before the memory reader)
    preference: torch.Tensor | None = None  # [N, 6] the alignment's memory-type scores (argmax: the type)


def reader_inputs(read: retrieval.Retrieved) -> tuple[torch.Tensor, ...]:
    """The retrieved memories as the reader (and the reader graph) takes them: scores, next bytes, exact, valid."""
    return (torch.from_numpy(read.scores), torch.from_numpy(read.next_bytes), torch.from_numpy(read.exact),
            torch.from_numpy(read.valid))


def task_tensor(task: str, n: int) -> torch.Tensor:
    return torch.tensor(retrieval.task_vector(task)).expand(n, -1)


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
        self.reader = MemoryReader(cfg.vocab)

    def encode(self, windows: torch.Tensor) -> Encoded:
        h = self.frontend(windows)
        key, complexity = self.memory.sensory(h)
        return Encoded(h + complexity * self.sensory_expand(key), key, complexity)

    def decode(self, enc: Encoded, memory_context: torch.Tensor | None = None, task: torch.Tensor | None = None,
               read: tuple[torch.Tensor, ...] | None = None) -> AgentOutput:
        """The backbone and head; ``read`` (the reader's inputs for retrieved memories) mixes memory in."""
        x = enc.x
        if memory_context is None:
            memory_context = torch.zeros_like(x)
        bias, pref = self.alignment(x, memory_context, task)
        routed = []
        for norm, layer in zip(self.norms, self.layers):
            y, r = layer(norm(x), bias)
            x = x + y
            routed.append(r)
        lm = self.head(self.final_norm(x))
        logits = lm if read is None else self.reader(lm, *read)
        balance = sum(r.balance_loss for r in routed) * self.cfg.balance_loss
        return AgentOutput(logits, enc, routed, balance, lm, pref)

    def forward(self, windows: torch.Tensor, memory_context: torch.Tensor | None = None) -> AgentOutput:
        return self.decode(self.encode(windows), memory_context)

    @torch.no_grad()
    def step(self, windows: torch.Tensor, use_memory: bool = True, mode: str = "hybrid", task: str = "general",
             scene: str = "", next_bytes: torch.Tensor | None = None, reconsolidate: bool = True) -> AgentOutput:
        """One inference pass over windows, reading long-term memory when asked. ``next_bytes``: the windows
        are consecutive positions of one text with these known next bytes, so each row also retrieves the
        rows before it (a prompt or an eval chunk, ingested in one pass)."""
        enc = self.encode(windows)
        t = task_tensor(task, windows.shape[0])
        if not use_memory:
            return self.decode(enc, None, t)
        seg = None if next_bytes is None else self.memory.segment(enc.x, enc.key, windows, next_bytes)
        read = self.memory.read(enc.key, windows, mode, task, scene, seg)
        out = self.decode(enc, torch.from_numpy(read.context(self.cfg.memory_top_k)), t, reader_inputs(read))
        if reconsolidate:
            self.memory.storage.reconsolidate_groups(read.reconsolidation_groups(self.cfg.memory_top_k))
        return out

    @torch.no_grad()
    def remember(self, out: AgentOutput, windows: torch.Tensor, next_bytes: torch.Tensor, task: str = "general",
                 scene: str = "", defer: bool = False) -> list[int]:
        """Store (state, observed byte) experiences; surprise is the byte's code length / 8 bits. ``defer``:
        a decode step's row, held for the next batched write and read at once (as the runtime does)."""
        logp = torch.log_softmax(out.logits, dim=-1).gather(1, next_bytes.unsqueeze(1)).squeeze(1)
        surprise = (-logp / math.log(self.cfg.vocab)).clamp(0, 1)
        e = out.encoded
        return self.memory.store(e.x, e.key, windows, next_bytes, e.complexity, surprise, out.preference, task, scene,
                                 defer)

    @torch.no_grad()
    def generate(self, prompt: bytes, max_bytes: int, temperature: float = 0.0, seed: int | None = None,
                 use_memory: bool = True, mode: str = "hybrid", task: str = "general", scene: str = "") -> bytes:
        """Greedy (temperature 0) or sampled continuation; every observed byte becomes an experience. The
        prompt is one batched pass: each of its bytes is predicted from memory and the prompt before it."""
        k = self.cfg.context
        text = bytearray(prompt)
        gen = torch.Generator().manual_seed(seed if seed is not None else 0)
        if use_memory and len(text) > 1:
            data = np.frombuffer(bytes(text), dtype=np.uint8)
            w = torch.from_numpy(make_windows(data, np.arange(1, len(data)), k))
            nb = torch.from_numpy(data[1:].astype(np.int64))
            out = self.step(w, use_memory, mode, task, scene, next_bytes=nb)
            self.remember(out, w, nb, task, scene)
        for _ in range(max_bytes):
            data = np.frombuffer(bytes(text), dtype=np.uint8)
            w = torch.from_numpy(make_windows(data, np.array([len(data)]), k))
            out = self.step(w, use_memory, mode, task, scene)
            logits = out.logits[0]
            if temperature > 0:
                nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
            else:
                nxt = int(torch.argmax(logits))
            if use_memory:
                self.remember(out, w, torch.tensor([nxt]), task, scene, defer=True)
            text.append(nxt)
        self.memory.flush()
        return bytes(text[len(prompt):])
