"""Export views: the single-token forms of the BiLSTM and TransformerEncoder experts equal the originals."""

import torch

from m3edge.config import preset
from m3edge.export.graphs import MemoryReference, split
from m3edge.export.views import EncoderStepView, LSTMStepView, export_view
from m3edge.model.experts import EpisodicExpert, MLPExpert, SemanticExpert


def test_views_equal_the_expert_on_every_row():
    torch.manual_seed(0)
    cfg = preset("small")
    x = 4 * torch.randn(512, cfg.d_model)
    for cls, view in ((EpisodicExpert, LSTMStepView), (SemanticExpert, EncoderStepView)):
        expert = cls(cfg).eval()
        v = export_view(expert)
        assert isinstance(v, view)
        with torch.no_grad():
            assert torch.allclose(v(x), expert(x), atol=2e-6, rtol=0)
        # The view shares the expert's parameters: training the agent moves the view too.
        assert {p.data_ptr() for p in v.parameters()} <= {p.data_ptr() for p in expert.parameters()}


def test_other_experts_export_as_they_are():
    e = MLPExpert(preset("tiny"))
    assert export_view(e) is e


def test_split_exports_views_and_checks_against_the_agents_experts(tiny_agent):
    for s in split(tiny_agent, [1], [1]):
        if s.role == "expert":
            assert s.checked_against is tiny_agent.layers[s.layer].experts[s.expert]
        elif s.role == "memory":  # its view writes one_hot as a comparison; judged by the agent's own method
            assert isinstance(s.checked_against, MemoryReference)
        else:
            assert s.checked_against is s.module


def test_constant_slices_compute_the_view_to_the_bit_from_copies():
    """What the LiteRT backend converts: the view's slices as constants (no parameter slicing left for the
    converter to fold), the same outputs to the bit; any other module is returned as it is."""
    from m3edge.export.views import constant_slices

    torch.manual_seed(1)
    cfg = preset("small")
    x = 4 * torch.randn(64, cfg.d_model)
    for cls in (EpisodicExpert, SemanticExpert):
        v = export_view(cls(cfg).eval())
        c = constant_slices(v)
        with torch.no_grad():
            assert torch.equal(c(x), v(x))
        assert not any(n.startswith(("lstm", "layer.self_attn.in_proj")) for n, _ in c.named_parameters())
        views = {p.data_ptr() for p in v.parameters()}
        assert all(b.data_ptr() not in views for b in c.buffers())  # copies, taken once
    e = MLPExpert(cfg)
    assert constant_slices(e) is e
