"""ResistiveArraySimulator: stored keys held as conductances; a query read is a vector-matrix multiply.

A compact torch model used by the reference agent (the runtime has the full device model):
differential pairs G+ - G- in [g_min, g_max], ``levels`` programmable states, Gaussian programming
noise fixed at write, fresh read noise per read. Preset ``ideal`` is exact float, which parity uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceModel:
    g_min: float = 1e-6  # siemens: ~1 MOhm off state
    g_max: float = 1e-4  # ~10 kOhm on state
    levels: int = 0  # 0 = continuous
    program_noise: float = 0.0  # std as a fraction of g_max
    read_noise: float = 0.0


DEVICES = {
    "ideal": DeviceModel(),
    "reram": DeviceModel(levels=64, program_noise=0.01, read_noise=0.005),
}


class ResistiveArraySimulator:
    def __init__(self, device: str = "ideal", seed: int = 0):
        self.device = DEVICES[device]
        self.gen = torch.Generator().manual_seed(seed)
        self.g_pos = self.g_neg = None
        self.scale = 1.0

    def _to_conductance(self, w: torch.Tensor) -> torch.Tensor:
        dev = self.device
        g = dev.g_min + (dev.g_max - dev.g_min) * w
        if dev.levels:
            step = (dev.g_max - dev.g_min) / (dev.levels - 1)
            g = dev.g_min + torch.round((g - dev.g_min) / step) * step
        if dev.program_noise:
            g = g + torch.randn(g.shape, generator=self.gen) * dev.program_noise * dev.g_max
        return g.clamp(dev.g_min, dev.g_max)

    @property
    def exact(self) -> bool:
        d = self.device
        return not (d.levels or d.program_noise or d.read_noise)

    def program(self, weights: torch.Tensor) -> None:
        """Write a [M, m] matrix (one stored vector per row) into the array."""
        self.weights = weights
        self.scale = float(weights.abs().max().clamp(min=1e-12))
        w = weights / self.scale
        self.g_pos = self._to_conductance(w.clamp(min=0))
        self.g_neg = self._to_conductance((-w).clamp(min=0))

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Column currents for inputs x [N, m], mapped back to the weight scale: ~ x @ weights.T."""
        if self.exact:
            return x @ self.weights.T  # ideal: exact float, what parity with the runtime relies on
        dev = self.device
        g = self.g_pos - self.g_neg
        if dev.read_noise:
            g = g + torch.randn(g.shape, generator=self.gen) * dev.read_noise * dev.g_max
        return (x @ g.T) * self.scale / (dev.g_max - dev.g_min)
