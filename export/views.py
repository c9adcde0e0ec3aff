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

    def _direction(self, x, suffix: str):
        w = getattr(self.lstm, f"weight_ih_l0{suffix}")
        b = getattr(self.lstm, f"bias_ih_l0{suffix}") + getattr(self.lstm, f"bias_hh_l0{suffix}")
        n = self.lstm.hidden_size
        # torch's gate order is i, f, g, o; the forget gate multiplies c0 = 0, so it is not computed.
        # Static slices of the parameters fold into three constant matrices at export.
        i, g, o = (F.linear(x, w[k * n:(k + 1) * n], b[k * n:(k + 1) * n]) for k in (0, 2, 3))
        return torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))

    def forward(self, x):
        return self.proj(torch.cat([self._direction(x, ""), self._direction(x, "_reverse")], dim=-1))


class EncoderStepView(nn.Module):
    def __init__(self, expert: SemanticExpert):
        super().__init__()
        self.layer = expert.encoder.layers[0]

    def forward(self, x):
        layer = self.layer
        attn = layer.self_attn
        d = x.shape[-1]
        v = F.linear(x, attn.in_proj_weight[2 * d:], attn.in_proj_bias[2 * d:])
        x = layer.norm1(x + attn.out_proj(v))
        return layer.norm2(x + layer.linear2(F.gelu(layer.linear1(x))))


VIEWS = {EpisodicExpert: LSTMStepView, SemanticExpert: EncoderStepView}


def export_view(expert: nn.Module) -> nn.Module:
    """The module to export for an expert: its exact single-token view where one exists, else itself."""
    view = VIEWS.get(type(expert))
    return view(expert) if view else expert
