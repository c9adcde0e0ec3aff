"""Training the reference agent on bytes of real text. Seeded and reproducible on the CPU.

The long-term memory is trained too: with probability ``memory_prob`` a step retrieves, for every
token, from a bank of the previous step's experiences (other positions of the text) through the same
associator the agent uses at inference; otherwise the memory context is zero, as on an empty store.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m3edge.config import ModelConfig
from m3edge.data import load_split, windows


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch: int = 1024  # tokens per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    memory_prob: float = 0.5
    memory_bank: int = 256
    log_every: int = 50
    eval_bytes: int | None = None  # None: the whole eval split


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def train(cfg: ModelConfig, data_dir, tc: TrainConfig, progress=None):
    """Returns (agent, report). ``progress`` is an optional callable(step, loss)."""
    from m3edge.evaluate import baselines, evaluate
    from m3edge.model.agent import MemoryMoEAgent

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    text = load_split(data_dir, "train")
    agent = MemoryMoEAgent(cfg)
    agent.train()
    opt = torch.optim.AdamW(agent.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    bank = None
    curve = []
    t0 = time.time()
    for step in range(tc.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        pos = rng.integers(0, len(text), tc.batch)
        target = torch.from_numpy(text[pos].astype(np.int64))
        enc = agent.encode(torch.from_numpy(windows(text, pos, cfg.context)))
        context = None
        if bank is not None and rng.random() < tc.memory_prob:
            bx, bkey, by = bank
            values = agent.memory.encode_experience(bx, by)
            context, _, _ = agent.memory.retrieve_from(enc.key, bkey, values, torch.zeros(len(by)))
        out = agent.decode(enc, context)
        ce = F.cross_entropy(out.logits, target)
        loss = ce + out.balance_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
        opt.step()
        m = tc.memory_bank
        bank = (enc.x[:m].detach(), enc.key[:m].detach(), target[:m])
        if step % tc.log_every == 0 or step == tc.steps - 1:
            curve.append({"step": step, "loss": ce.item(), "bits_per_byte": ce.item() / math.log(2),
                          "balance_loss": out.balance_loss.item()})
        if progress:
            progress(step, ce.item())
    agent.eval()
    eval_text = load_split(data_dir, "eval")
    report = {
        "train_config": asdict(tc),
        "model_config": cfg.to_dict(),
        "train_seconds": round(time.time() - t0, 1),
        "parameters": sum(p.numel() for p in agent.parameters()),
        "loss_curve": curve,
        "eval": evaluate(agent, eval_text, max_bytes=tc.eval_bytes),
        "baselines": baselines(text, eval_text),
    }
    return agent, report
