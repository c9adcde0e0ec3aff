"""Training the reference agent on bytes of real text. Seeded and reproducible on the CPU.

Memory is trained the way inference uses it. Each step reads ``streams`` runs of ``stream_len`` consecutive
bytes; each stream keeps a bank of its last ``RECENT`` experiences (the same document's earlier bytes, and the
previous document's where the stream crossed into a new file), exactly the FIFO the runtime scans. With
probability ``memory_prob`` a step retrieves, for every token, the top ``memory_read_k`` of that bank and of the
step's own earlier bytes by the associator's fused score (causal), feeds the top 5 to the alignment and all of
them to the reader; the loss is the reader's cross-entropy plus the head's own, so the memory-off model keeps
learning. Bank keys are stored detached, as in Memorizing Transformers. A stream jumps to a random place (its
bank cleared) with probability ``1 / reset_every`` per step, so short and long histories are both seen.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m3edge.config import ModelConfig
from m3edge.data import PLAIN, STATED, load_split, windows, with_facts


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3600
    batch: int = 1024  # tokens per step
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 100
    seed: int = 0
    memory_prob: float = 0.5
    streams: int = 32  # batch = streams x stream_len consecutive bytes
    reset_every: int = 64
    log_every: int = 50
    eval_bytes: int | None = None  # None: the whole eval split
    init: str | None = None  # start from this checkpoint's weights (a second stage), not a random init
    fact_every: int = 2048  # memory steps read text with a copy exercise per this many bytes (0: none); data.with_facts
    only: tuple[str, ...] = ()  # train only these top-level modules (e.g. ("reader",)), the rest frozen; () = all


MEMORY_ONLY = frozenset({"reader"})  # the agent's modules a memory-off step does not run (agent.decode)


def trainable(agent, only: tuple[str, ...]) -> list:
    """The parameters to train: all, or those of the top-level modules named in ``only`` (the rest frozen, so a
    stage that tunes the memory reader leaves the model without memory bit-identical)."""
    names = {n for n, _ in agent.named_children()}
    unknown = sorted(set(only) - names)
    if unknown:
        from m3edge.errors import BadInput

        raise BadInput(f"--only: unknown module(s) {', '.join(unknown)}; the agent has {', '.join(sorted(names))}")
    for name, module in agent.named_children():
        module.requires_grad_(not only or name in only)
    return [p for p in agent.parameters() if p.requires_grad]


def masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return (values * keep).sum() / keep.sum().clamp(min=1)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def bank_read(agent, key, ctx, qhash, bkey, bctx, bhash, bbytes, bx, mask):
    """Differentiable retrieval for one batch of streams: queries [S, T, .] against banks [S, B, .] under
    ``mask`` [S, T, B]. Returns (memory context [S, T, d], reader inputs as [S*T, R] tensors)."""
    cfg = agent.cfg
    from m3edge.memory.retrieval import FUSION, RETRIEVAL_TEMPERATURE

    spatial = torch.bmm(F.normalize(key, dim=-1), F.normalize(bkey, dim=-1).transpose(1, 2))
    fused = FUSION[0] + FUSION[1] * spatial + FUSION[2] * torch.bmm(ctx, bctx.transpose(1, 2))
    fused = fused.masked_fill(~mask, float("-inf"))
    r = min(cfg.memory_read_k, fused.shape[-1])
    top, idx = torch.topk(fused, r, dim=-1)
    valid = torch.isfinite(top)
    scores = torch.where(valid, top, torch.zeros_like(top))
    nb = torch.gather(bbytes.unsqueeze(1).expand(-1, idx.shape[1], -1), 2, idx)
    exact = (torch.gather(bhash.unsqueeze(1).expand(-1, idx.shape[1], -1), 2, idx) == qhash.unsqueeze(-1)) & valid
    k = min(cfg.memory_top_k, r)
    z = torch.where(valid[..., :k], top[..., :k] / RETRIEVAL_TEMPERATURE, torch.full_like(top[..., :k], -1e9))
    w = torch.softmax(z, dim=-1) * valid[..., :k]
    s_, t_ = idx.shape[:2]
    xs = torch.gather(bx.unsqueeze(1).expand(-1, t_, -1, -1), 2, idx[..., :k, None].expand(-1, -1, -1, bx.shape[-1]))
    values = agent.memory.encode_experience(xs.reshape(-1, bx.shape[-1]), nb[..., :k].reshape(-1)).reshape(s_, t_, k, -1)
    context = torch.einsum("stk,stkd->std", w, values)
    flat = lambda a: a.reshape(s_ * t_, -1)  # noqa: E731
    return context.reshape(s_ * t_, -1), (flat(scores), flat(nb), flat(exact.float()), flat(valid.float()))


def _prose(agent, data_dir, tc: TrainConfig) -> dict | None:
    """Online eval with memory on prose the model never saw (calibration_data/prose.txt), where present."""
    from pathlib import Path

    from m3edge.data import read_bytes
    from m3edge.evaluate import evaluate_online

    path = Path(data_dir) / "prose.txt"
    return evaluate_online(agent, read_bytes(path), max_bytes=tc.eval_bytes) if path.is_file() else None


def _log(curve: list, step: int, tc: TrainConfig, ce, ce_lm, memory: bool, out) -> None:
    if step % tc.log_every == 0 or step == tc.steps - 1:
        curve.append({"step": step, "loss": ce.item(), "bits_per_byte": ce.item() / math.log(2),
                      "lm_bits_per_byte": ce_lm.item() / math.log(2), "memory": memory,
                      "balance_loss": out.balance_loss.item()})


def train(cfg: ModelConfig, data_dir, tc: TrainConfig, progress=None):
    """Returns (agent, report). ``progress`` is an optional callable(step, loss)."""
    from m3edge.evaluate import baselines, evaluate, evaluate_online
    from m3edge.memory.index import RECENT, suffix_orders, window_hashes
    from m3edge.model.agent import MemoryMoEAgent

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    text = load_split(data_dir, "train")
    # Memory steps read the text with copy exercises spliced in (data.with_facts); memory-off steps the plain text.
    mtext, roles = with_facts(text, np.random.default_rng(tc.seed + 1), tc.fact_every) if tc.fact_every \
        else (text, np.zeros(len(text), dtype=np.uint8))
    if tc.init:
        from m3edge.checkpoint import load

        agent = load(tc.init)
        if agent.cfg != cfg:
            raise ValueError(f"{tc.init}: its config differs from the one asked to train")
    else:
        agent = MemoryMoEAgent(cfg)
    agent.train()
    params = trainable(agent, tc.only)
    observe = not tc.only or "alignment" in tc.only  # the co-occurrence counts belong to the alignment
    memory_side = bool(tc.only) and set(tc.only) <= MEMORY_ONLY
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    S = tc.streams
    T = max(1, tc.batch // S)
    order = suffix_orders(cfg.context)[:1]
    start = rng.integers(0, len(mtext) - T, S)
    empty = lambda *shape, dtype=torch.float32: torch.zeros((S, 0) + shape, dtype=dtype)  # noqa: E731
    bank = {"key": empty(cfg.memory_dim), "ctx": empty(cfg.memory_dim), "x": empty(cfg.d_model),
            "hash": empty(dtype=torch.long), "byte": empty(dtype=torch.long)}
    filled = torch.zeros(S, 0, dtype=torch.bool)
    curve = []
    t0 = time.time()
    for step in range(tc.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tc)
        # Training only modules a memory-off step never runs, such a step has nothing to teach: all read memory.
        use_memory = rng.random() < tc.memory_prob or memory_side
        if not use_memory:  # the memory-off objective: independent positions, the most varied batch
            pos = rng.integers(0, len(text), tc.batch)
            target = torch.from_numpy(text[pos].astype(np.int64))
            out = agent.decode(agent.encode(torch.from_numpy(windows(text, pos, cfg.context))))
            ce = ce_lm = F.cross_entropy(out.logits, target)
            loss = ce + out.balance_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for r in out.routed if observe else ():
                agent.alignment.observe(r.index)
            _log(curve, step, tc, ce, ce_lm, False, out)
            if progress:
                progress(step, ce.item())
            continue
        reset = rng.random(S) < 1.0 / tc.reset_every
        over = start + T >= len(mtext)
        jump = reset | over
        start[jump] = rng.integers(0, len(mtext) - T, int(jump.sum()))
        if jump.any() and filled.shape[1]:
            filled[torch.from_numpy(jump)] = False
        pos = (start[:, None] + np.arange(T)[None, :]).reshape(-1)
        start += T
        target = torch.from_numpy(mtext[pos].astype(np.int64))
        w = windows(mtext, pos, cfg.context)
        qhash = torch.from_numpy(window_hashes(w, order)[:, 0])
        enc = agent.encode(torch.from_numpy(w))
        ctx = agent.memory.context_keys(enc.key)
        cur = lambda a: a.detach().reshape(S, T, *a.shape[1:])  # noqa: E731
        bkey = torch.cat([bank["key"], cur(enc.key)], 1)
        bctx = torch.cat([bank["ctx"], cur(ctx)], 1)
        bx = torch.cat([bank["x"], cur(enc.x)], 1)
        bhash = torch.cat([bank["hash"], qhash.reshape(S, T)], 1)
        bbyte = torch.cat([bank["byte"], target.reshape(S, T)], 1)
        nb = bank["key"].shape[1]
        causal = torch.arange(T)[None, :] < torch.arange(T)[:, None]
        mask = torch.cat([filled[:, None, :].expand(S, T, nb), causal.expand(S, T, T)], 2)
        context, read = bank_read(agent, enc.key.reshape(S, T, -1), ctx.reshape(S, T, -1), qhash.reshape(S, T),
                                  bkey, bctx, bhash, bbyte, bx, mask)
        out = agent.decode(enc, context, None, read)
        # A stated code is unpredictable to anything and a restated one to the head alone: the reader's loss skips
        # stated codes, the head's keeps the text's own bytes only. The reader's loss still reaches the head
        # through the mix, so the exercises cost the model without memory a little (docs/memory.md, Training).
        role = torch.from_numpy(roles[pos])
        ce = masked_mean(F.cross_entropy(out.logits, target, reduction="none"), role != STATED)
        ce_lm = masked_mean(F.cross_entropy(out.lm_logits, target, reduction="none"), role == PLAIN)
        loss = ce + ce_lm + out.balance_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        for r in out.routed if observe else ():
            agent.alignment.observe(r.index)
        with torch.no_grad():  # the bank: each stream's last RECENT experiences, detached
            new = {"key": enc.key, "ctx": ctx, "x": enc.x, "hash": qhash, "byte": target}
            for name, a in new.items():
                bank[name] = torch.cat([bank[name], a.detach().reshape(S, T, *a.shape[1:])], 1)[:, -RECENT:]
            filled = torch.cat([filled, torch.ones(S, T, dtype=torch.bool)], 1)[:, -RECENT:]
        _log(curve, step, tc, ce, ce_lm, True, out)
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
        "eval_memory": evaluate_online(agent, eval_text, max_bytes=tc.eval_bytes),
        "prose_memory": _prose(agent, data_dir, tc),
        "baselines": baselines(text, eval_text),
    }
    return agent, report
