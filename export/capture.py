"""Real inputs for every graph: the calibration text run through the torch agent, recorded per graph.

Experts see the rows the router really sends them (token order); where an expert got fewer rows than a
bucket holds, the rest is filled with other tokens' real activations of the same layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from m3edge.data import windows

MEMORY_BANK = 256


def sample_positions(n_text: int, n: int) -> np.ndarray:
    """n positions spread evenly over the text (deterministic)."""
    return np.linspace(1, n_text - 1, num=min(n, n_text - 1)).astype(np.int64)


@torch.no_grad()
def memory_context(agent, enc, next_bytes: torch.Tensor, bank: int = MEMORY_BANK) -> torch.Tensor:
    """Context retrieved from a bank of the first ``bank`` experiences, as in training: real memory
    vectors through the agent's associator, without the stateful store."""
    m = min(bank, enc.x.shape[0])
    values = agent.memory.encode_experience(enc.x[:m], next_bytes[:m])
    ctx, _, _ = agent.memory.retrieve_from(enc.key, enc.key[:m], values, torch.zeros(m))
    return ctx


@dataclass
class Captured:
    inputs: dict = field(default_factory=dict)  # (role, layer, expert) -> tuple of numpy arrays
    routed: dict = field(default_factory=dict)  # (layer, expert) -> rows routed there
    expert_usage: list = field(default_factory=list)  # per layer, per expert: routed pairs

    def calibration_rows(self, role: str, layer, expert, min_rows: int) -> tuple[list[np.ndarray], bool]:
        """Rows a graph is calibrated on: an expert's routed rows, or (fewer than ``min_rows`` routed) all
        of its layer's rows, a fallback the calibration report names. Returns (arrays, fallback)."""
        if role == "expert":
            routed = self.routed[(layer, expert)]
            if len(routed) >= min_rows:
                return [routed], False
            return [self.inputs[(role, layer, expert)][0]], True
        return list(self.inputs[(role, layer, expert)]), False

    def for_bucket(self, role: str, layer, expert, bucket: int) -> tuple[np.ndarray, ...]:
        if role == "bank":  # each expert's own rows, one block per expert
            n = sum(1 for key in self.routed if key[0] == layer)
            return (np.concatenate([self.for_bucket("expert", layer, e, bucket)[0] for e in range(n)]),)
        arrays = self.inputs[(role, layer, expert)]
        if role == "expert":
            routed = self.routed[(layer, expert)]
            filler = arrays[0]
            rows = np.concatenate([routed, filler])[:bucket] if len(routed) < bucket else routed[:bucket]
            return (np.ascontiguousarray(rows),)
        return tuple(np.ascontiguousarray(a[:bucket]) for a in arrays)


@torch.no_grad()
def capture(agent, text: np.ndarray, n_tokens: int) -> Captured:
    cfg = agent.cfg
    pos = sample_positions(len(text), n_tokens)
    w = torch.from_numpy(windows(text, pos, cfg.context))
    enc = agent.encode(w)
    next_bytes = torch.from_numpy(text[pos].astype(np.int64))
    mem = memory_context(agent, enc, next_bytes)
    cap = Captured()
    cap.inputs[("encoder", None, None)] = (w.numpy(),)
    cap.inputs[("memory", None, None)] = (enc.x.numpy(), next_bytes.numpy())
    # Every task type's input in turn (general the most): an INT8 alignment is calibrated over all of them.
    from m3edge.memory.retrieval import TASK_TYPES, task_vector

    tasks = [task_vector("general")] * len(TASK_TYPES) + [task_vector(t) for t in TASK_TYPES]
    task = torch.from_numpy(np.stack([tasks[i % len(tasks)] for i in range(len(pos))]))
    cap.inputs[("alignment", None, None)] = (enc.x.numpy(), mem.numpy(), task.numpy())
    x = enc.x
    bias = agent.alignment(x, mem, task)[0]
    for layer, (norm, moe) in enumerate(zip(agent.norms, agent.layers)):
        cap.inputs[("router", layer, None)] = (x.numpy(), bias.numpy())
        h = norm(x)
        r = moe.route(h, bias)
        usage = []
        for e in range(cfg.n_experts):
            tokens = torch.nonzero((r.index == e) & r.keep)[:, 0]
            cap.routed[(layer, e)] = h[tokens].numpy()
            cap.inputs[("expert", layer, e)] = (h.numpy(),)
            usage.append(int(tokens.numel()))
        cap.expert_usage.append(usage)
        x = x + moe.dispatch(h, r)
    cap.inputs[("head", None, None)] = (x.numpy(),)
    cap.inputs[("reader", None, None)] = reader_capture(agent, text, n_tokens)
    return cap


@torch.no_grad()
def read_segment(agent, text: np.ndarray, pos: np.ndarray):
    """Real retrieval for consecutive positions of one text, from an empty store: each row reads the rows before
    it (``m3edge.memory.retrieval.Segment``). Returns (windows, encoded, retrieved); the store is left empty."""
    w = torch.from_numpy(windows(text, pos, agent.cfg.context))
    enc = agent.encode(w)
    agent.memory.reset()
    seg = agent.memory.segment(enc.x, enc.key, w, torch.from_numpy(text[pos].astype(np.int64)))
    return w, enc, agent.memory.read(enc.key, w, segment=seg)


@torch.no_grad()
def reader_capture(agent, text: np.ndarray, n_tokens: int) -> tuple[np.ndarray, ...]:
    """The reader's inputs on the first ``n_tokens`` consecutive bytes of ``text``: the head's logits with the
    retrieved memories' scores, next bytes, exact flags and validity (every first-time byte has none)."""
    from m3edge.model.agent import reader_inputs, task_tensor

    pos = np.arange(1, min(n_tokens, len(text) - 1) + 1)
    w, enc, read = read_segment(agent, text, pos)
    out = agent.decode(enc, torch.from_numpy(read.context(agent.cfg.memory_top_k)), task_tensor("general", len(pos)))
    return (out.lm_logits.numpy(),) + tuple(t.numpy() for t in reader_inputs(read))


@torch.no_grad()
def next_token_counts(agent, text: np.ndarray, n_tokens: int) -> list:
    """[E, E] counts of (an expert of the last layer at token t, an expert of layer 0 at token t+1) over the
    first ``n_tokens`` consecutive tokens of ``text``: what the runtime prefetches the next step's first layer
    from (capture's tokens are spread over the text, so they are not consecutive)."""
    e = agent.cfg.n_experts
    pos = np.arange(1, min(n_tokens, len(text) - 1) + 1)
    w = torch.from_numpy(windows(text, pos, agent.cfg.context))
    enc = agent.encode(w)
    routed = agent.decode(enc, memory_context(agent, enc, torch.from_numpy(text[pos].astype(np.int64)))).routed
    last, first = routed[-1].index[:-1], routed[0].index[1:]
    pairs = (last[:, :, None] * e + first[:, None, :]).reshape(-1)
    return np.bincount(pairs.numpy(), minlength=e * e).reshape(e, e).tolist()
