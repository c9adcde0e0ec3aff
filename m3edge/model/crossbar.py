"""ResistiveArraySimulator: the torch agent's view of the crossbar that holds its memory keys.

The device model is ``m3edge.memory.crossbar`` (numpy, shared with the device runtime): differential pairs in
[g_min, g_max], levels, programming and read noise, drift, stuck-at faults, DAC/ADC, energy. This wrapper keeps
the array's columns in step with the stored memories and takes and returns tensors. Preset ``ideal`` is exact
float, which parity uses.
"""

from __future__ import annotations

import numpy as np
import torch

from m3edge.memory.crossbar import DEVICES, CrossbarArray, DeviceModel, device as get_device  # noqa: F401


class ResistiveArraySimulator:
    def __init__(self, device: str | DeviceModel = "ideal", seed: int = 0):
        self.device = get_device(device)
        self.seed = seed
        self.array: CrossbarArray | None = None
        self.weights = np.zeros((0, 0), dtype=np.float32)

    @property
    def exact(self) -> bool:
        return self.device.exact

    def program(self, weights, ids=None, written=0.0) -> None:
        """Hold a [M, m] matrix (one stored vector per row): rows whose id is already programmed keep their
        conductances (programming noise is permanent), new ids are written, missing ones are dropped."""
        w = weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
        self.weights = np.ascontiguousarray(w, dtype=np.float32)
        if self.array is None or self.array.dim != self.weights.shape[1]:
            self.array = CrossbarArray(self.weights.shape[1], self.device, self.seed)
        ids = np.arange(len(w)) if ids is None else np.asarray(ids, dtype=np.int64)
        self.array.sync(ids, self.weights, written)

    def read(self, x, now: float = 0.0, cols=None):
        """Column currents for inputs x [N, m], mapped back to the weight scale: ~ x @ weights.T (a tensor for
        a tensor, numpy for numpy); ``cols``: only those columns."""
        xn = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        out = self.array.read(np.asarray(xn, dtype=np.float32), self.weights, now, cols)
        return torch.from_numpy(out) if isinstance(x, torch.Tensor) else out

    @property
    def ledger(self):
        return None if self.array is None else self.array.ledger
