"""Export views: what an expert computes on one token, written without the sequence machinery.

Every expert sees each token as a sequence of length one (row independence, see docs/seed.md). For such
a sequence two of the seed's expert kinds reduce exactly:

- BiLSTM from a zero state: the recurrent term W_hh h0 is zero and so is the forget gate's contribution
  f * c0, so each direction is one affine map and four gate nonlinearities: c = sig(i) tanh(g),
  h = sig(o) tanh(c). The reverse direction of a length-one sequence reads the same token.
- TransformerEncoder layer: attention over a single key puts weight softmax([s]) = 1 on it, so
  self-attention is out_proj(v_proj(x)); the rest (residuals, post-norms, GELU feed-forward) is unchanged.

The views share the original parameters (no copies) and are checked against the original modules like
every graph, so an exported expert is still judged against the agent's own module. What they buy: plain
MatMul graphs that INT8 quantizes fully (onnxruntime's QDQ has no LSTM), a fraction of the nodes (the
attention graph had ~90), graph files of a few kB per bucket, and no bucket-sized zero-state constants.
For the LiteRT converter, ``constant_slices`` gives a view whose parameter slices are copies taken once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m3edge.model.experts import EpisodicExpert, SemanticExpert


class LSTMStepView(nn.Module):
    def __init__(self, expert: EpisodicExpert):
        super().__init__()
        self.lstm, self.proj = expert.lstm, expert.proj

    def gates(self) -> list[torch.Tensor]:
        """Per direction, the i, g, o rows of W_ih and of b_ih + b_hh (torch's gate order is i, f, g, o; the
        forget gate multiplies c0 = 0, so it is not computed)."""
        n, out = self.lstm.hidden_size, []
        for suffix in ("", "_reverse"):
            w = getattr(self.lstm, f"weight_ih_l0{suffix}")
            b = getattr(self.lstm, f"bias_ih_l0{suffix}") + getattr(self.lstm, f"bias_hh_l0{suffix}")
            out += [t for k in (0, 2, 3) for t in (w[k * n:(k + 1) * n], b[k * n:(k + 1) * n])]
        return out

    def forward(self, x):
        return lstm_step(x, self.gates(), self.proj)

    def frozen(self) -> nn.Module:
        return _Frozen(lstm_step, self.gates(), proj=self.proj)


def lstm_step(x, gates, proj):
    dirs = []
    for d in range(2):
        i, g, o = (F.linear(x, gates[6 * d + 2 * k], gates[6 * d + 2 * k + 1]) for k in range(3))
        dirs.append(torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g)))
    return proj(torch.cat(dirs, dim=-1))


class EncoderStepView(nn.Module):
    def __init__(self, expert: SemanticExpert):
        super().__init__()
        self.layer = expert.encoder.layers[0]

    def value(self) -> list[torch.Tensor]:
        """The value rows of the attention's input projection (all a single-key attention reads)."""
        attn, d = self.layer.self_attn, self.layer.self_attn.embed_dim
        return [attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:]]

    def forward(self, x):
        return encoder_step(x, self.value(), **self._parts())

    def _parts(self) -> dict:
        layer = self.layer
        return {"out_proj": layer.self_attn.out_proj, "norm1": layer.norm1, "norm2": layer.norm2,
                "linear1": layer.linear1, "linear2": layer.linear2}

    def frozen(self) -> nn.Module:
        return _Frozen(encoder_step, self.value(), **self._parts())


def encoder_step(x, value, out_proj, norm1, norm2, linear1, linear2):
    x = norm1(x + out_proj(F.linear(x, value[0], value[1])))
    return norm2(x + linear2(F.gelu(linear1(x))))


class _Frozen(nn.Module):
    """A view whose parameter slices are taken once, as constant copies, for a converter that would fold the
    slicing itself: litert-torch's MLIR passes spent 14.2 s (fp32; 45 s at INT8) on a seed-size episodic
    expert's sliced W_ih against 0.9 s for the same matrices given whole. The same arithmetic as the view
    (``step`` is its function), so the same outputs to the bit; built at export from the current weights."""

    def __init__(self, step, consts: list[torch.Tensor], **parts: nn.Module):
        super().__init__()
        self.step, self.n = step, len(consts)
        for i, t in enumerate(consts):
            self.register_buffer(f"c{i}", t.detach().clone())
        self.parts = nn.ModuleDict(parts)

    def forward(self, x):
        return self.step(x, [getattr(self, f"c{i}") for i in range(self.n)], **self.parts)


VIEWS = {EpisodicExpert: LSTMStepView, SemanticExpert: EncoderStepView}


def export_view(expert: nn.Module) -> nn.Module:
    """The module to export for an expert: its exact single-token view where one exists, else itself."""
    view = VIEWS.get(type(expert))
    return view(expert) if view else expert


def constant_slices(module: nn.Module) -> nn.Module:
    """``module`` with a view's parameter slices as constants (``_Frozen``), for the LiteRT converter; any
    other module as it is."""
    frozen = getattr(module, "frozen", None)
    return frozen() if callable(frozen) else module
