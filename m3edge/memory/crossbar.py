"""A memristor crossbar holding the long-term memory's keys; a query read is an analog vector-matrix multiply.

numpy only: the device runtime uses it directly and the torch agent's ``ResistiveArraySimulator`` wraps it,
so both agents run one device model.

Layout: one stored key per crossbar *column* (m rows = the key's dimensions), the query drives the rows as
voltages, and column currents are the scores (the VMM of Hu et al., DAC 2016; Li et al., Nat. Electron. 2018).

The model, after IBM aihwkit's inference tiles, Sandia CrossSim, MemTorch and NeuroSim:
  mapping        differential pair per weight: the positive part on G+, the negative on G-, the other device at
                 g_min; each column scaled by its own max |w| (aihwkit's column-wise weight scaling; the scale is
                 kept digitally and applied to the column's output)
  levels         ``levels`` evenly spaced programmable conductances in [g_min, g_max] (0: continuous)
  programming    Gaussian, std ``program_noise * g_max``, drawn once at write and permanent (write-verify error)
  read noise     Gaussian, std ``read_noise * g_max`` per device, fresh at every read (aihwkit's additive
                 constant w_noise); summed over a column it is a Gaussian of std ``sigma * ||x||``, drawn per column
  drift          g(t) = g0 (t / t0)^-nu, nu ~ N(nu_mean, nu_std) per device (aihwkit PCMLikeNoiseModel, after
                 Nandakumar et al. ICECS 2019 and Joshi et al. Nat. Commun. 2020); optional compensation divides
                 each column by its mean drift, read from the column's summed current at t and at t0 (aihwkit's
                 drift compensation, per column because memories are written at different times)
  stuck-at       a fraction of devices stuck at g_max (on) or g_min (off), as MemTorch's fault models
  DAC / ADC      inputs normalised to max |x| = 1 and quantised to ``dac_bits``; column outputs clipped to
                 +-``out_bound`` and quantised to ``adc_bits`` (aihwkit's inp_res / out_res / out_bound)
  energy, time   per write: devices x program-and-verify pulses; per read: the array's V^2 G t, one DAC
                 conversion per row and one ADC conversion per column, tiles read in parallel (NeuroSim's and
                 ISAAC's accounting). Figures are in ``DeviceModel``'s comments.

Every random draw of the permanent state (programming noise, drift exponents, faults) is a hash of
(seed, memory id, row, stream): a memory's programmed state depends only on its key, id and write time, so a
store reopened from disk holds the same conductances without saving them, whatever the write order or
batching. Read noise comes from a seeded generator: the same seed and the same reads give the same results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class DeviceModel:
    name: str
    g_min: float = 1e-6  # siemens
    g_max: float = 1e-4
    levels: int = 0  # 0 = continuous
    program_noise: float = 0.0  # std as a fraction of g_max, permanent
    read_noise: float = 0.0  # std as a fraction of g_max, per read
    drift_nu: float = 0.0  # mean drift exponent
    drift_nu_std: float = 0.0
    drift_t0: float = 20.0  # s after programming where g = g0 (aihwkit's t_0)
    drift_compensation: bool = True
    stuck_on: float = 0.0  # fraction of devices stuck at g_max
    stuck_off: float = 0.0  # fraction stuck at g_min
    dac_bits: int = 0  # 0 = exact inputs
    adc_bits: int = 0  # 0 = exact outputs
    out_bound: float = 12.0  # ADC range in normalised units (aihwkit IOParameters.out_bound)
    # Energy and time. Write: every device of the pair gets program-and-verify pulses.
    write_pulse_pj: float = 2.0
    write_pulses: int = 8
    write_pulse_ns: float = 50.0
    # Read: the array dissipates V^2 G t; converters per row (DAC) and per column (ADC).
    read_volts: float = 0.2
    read_ns: float = 100.0  # integration time, ISAAC's 100 ns crossbar read cycle
    adc_pj_8bit: float = 1.56  # ISAAC: 8-bit SAR ADC, 2 mW at 1.28 GS/s (Shafiee et al., ISCA 2016)
    adc_ns: float = 0.78  # one conversion at 1.28 GS/s
    # Per row conversion. An assumption, not a measured figure: a 7-bit DAC drives a row for one read at a
    # small fraction of an ADC conversion (ISAAC keeps 1-bit DACs for this reason); it is < 1% of a read.
    dac_pj: float = 0.02
    tile: int = 128  # columns per tile, one ADC per tile (ISAAC and NeuroSim's 128 x 128 subarrays)

    @property
    def exact(self) -> bool:
        """No non-ideality at all: a read is the float product, what parity tests rely on."""
        return not (self.levels or self.program_noise or self.read_noise or self.drift_nu or self.drift_nu_std
                    or self.stuck_on or self.stuck_off or self.dac_bits or self.adc_bits)

    def check(self) -> "DeviceModel":
        if not 0 < self.g_min < self.g_max:
            raise ValueError(f"device {self.name}: need 0 < g_min < g_max, got {self.g_min}, {self.g_max}")
        if self.levels == 1 or self.levels < 0:
            raise ValueError(f"device {self.name}: levels must be 0 (continuous) or >= 2, got {self.levels}")
        if self.stuck_on + self.stuck_off > 1 or min(self.stuck_on, self.stuck_off) < 0:
            raise ValueError(f"device {self.name}: stuck-at fractions must be in [0, 1] and sum to <= 1")
        return self


# ReRAM (HfOx 1T1R): 1 uS - 100 uS, 64 levels (6 bits, as programmed in the 128 x 64 arrays of Li et al.,
# Nat. Electron. 2018), write-verify error ~1% of g_max, small relaxation drift. Write ~2 pJ per 50 ns pulse,
# 0.1-10 pJ being the range in Yu & Chen, IEEE SSC Magazine 2016; 8 program-and-verify pulses per device.
# Faults: 1% of devices stuck (Chen et al., IEEE Trans. Comput. 2015 measured 1.75% stuck-off and 9% stuck-on
# on an unscreened 4 Mb chip; fault-tolerance studies use 1-10%). DAC 7 bits and ADC 9 bits are aihwkit's
# default forward resolutions (inp_res 1/(2^7 - 2), out_res 1/(2^9 - 2)).
RERAM = DeviceModel("reram", g_min=1e-6, g_max=1e-4, levels=64, program_noise=0.01, read_noise=0.005,
                    drift_nu=0.005, drift_nu_std=0.002, stuck_on=0.005, stuck_off=0.005, dac_bits=7, adc_bits=9)

# PCM: aihwkit's PCMLikeNoiseModel (g_max 25 uS; programming error 0.26-1.06 uS, about 4% of g_max; drift
# exponent mean 0.049-0.1 with std 0.008-0.045; t0 = 20 s; 1/f read noise of about 1%). Write: iterative
# programming (Papandreou et al., ISCAS 2011) of ~10 pulses of ~10 pJ, 100 ns (Le Gallo & Sebastian,
# J. Phys. D 2020); reads integrate 250 ns (aihwkit's t_read).
PCM = DeviceModel("pcm", g_min=0.1e-6, g_max=25e-6, levels=0, program_noise=0.04, read_noise=0.01,
                  drift_nu=0.06, drift_nu_std=0.02, dac_bits=7, adc_bits=9, write_pulse_pj=10.0,
                  write_pulses=10, write_pulse_ns=100.0, read_ns=250.0)

# Exact float reads with ReRAM's energy and time accounting.
IDEAL = DeviceModel("ideal")

DEVICES: dict[str, DeviceModel] = {d.name: d for d in (IDEAL, RERAM, PCM)}
DEFAULT_DEVICE = "reram"


def device(name_or_model: str | DeviceModel) -> DeviceModel:
    if isinstance(name_or_model, DeviceModel):
        return name_or_model.check()
    try:
        return DEVICES[name_or_model]
    except KeyError:
        raise ValueError(f"unknown memory device {name_or_model!r}; known: {', '.join(DEVICES)}") from None


# ---- deterministic draws ------------------------------------------------------------------------------------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche on uint64 (wrapping arithmetic is intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _base(seed: int, ids: np.ndarray, dim: int) -> np.ndarray:
    """One avalanche hash per (seed, memory id, row); each stream is one more mix of it."""
    seed_h = _mix(np.full(1, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64) + _GOLD)
    h = _mix(seed_h ^ (np.asarray(ids, dtype=np.uint64)[:, None] * _GOLD))
    return _mix(h ^ (np.arange(1, dim + 1, dtype=np.uint64)[None, :] * _M2))


def _uniform(base: np.ndarray, stream: int) -> np.ndarray:
    h = _mix(base ^ np.uint64((stream + 1) * 0xD1B54A32D192ED03 & 0xFFFFFFFFFFFFFFFF))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _normal_pair(base: np.ndarray, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard normals per cell by Box-Muller over two hashed uniforms."""
    r = np.sqrt(-2.0 * np.log(_uniform(base, 2 * stream)))
    a = 2.0 * math.pi * _uniform(base, 2 * stream + 1)
    return r * np.cos(a), r * np.sin(a)


_PROG, _NU, _STUCK = 0, 1, 2  # streams: programming noise, drift exponents, faults


# ---- the pure device functions ------------------------------------------------------------------------------

def quantize_levels(g: np.ndarray, dev: DeviceModel) -> np.ndarray:
    if not dev.levels:
        return g
    step = (dev.g_max - dev.g_min) / (dev.levels - 1)
    return dev.g_min + np.round((g - dev.g_min) / step) * step


def target_conductances(w: np.ndarray, dev: DeviceModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G+, G-, column scale) for weights [n, m]; each row of w is one stored vector (one crossbar column)."""
    w = np.asarray(w, dtype=np.float64)
    scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    wn = w / scale
    span = dev.g_max - dev.g_min
    gp = quantize_levels(dev.g_min + span * np.maximum(wn, 0), dev)
    gn = quantize_levels(dev.g_min + span * np.maximum(-wn, 0), dev)
    return gp, gn, scale[:, 0]


def program(w: np.ndarray, ids: np.ndarray, dev: DeviceModel, seed: int,
            base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Programmed conductances at t0: targets plus the permanent write error, clipped to the device range."""
    gp, gn, scale = target_conductances(w, dev)
    if dev.program_noise:
        base = _base(seed, ids, gp.shape[1]) if base is None else base
        zp, zn = _normal_pair(base, _PROG)
        sigma = dev.program_noise * dev.g_max
        gp, gn = gp + sigma * zp, gn + sigma * zn
    return np.clip(gp, dev.g_min, dev.g_max), np.clip(gn, dev.g_min, dev.g_max), scale


def drift(gp: np.ndarray, gn: np.ndarray, age: np.ndarray, dev: DeviceModel, base: np.ndarray):
    """g0 (t / t0)^-nu with t = max(age, t0) seconds since programming; nu ~ N(mean, std) per device."""
    ratio = np.maximum(np.asarray(age, dtype=np.float64), dev.drift_t0) / dev.drift_t0
    if not (dev.drift_nu or dev.drift_nu_std) or not (ratio > 1).any():
        return gp, gn  # no drift before t0: a fresh write skips the draws
    zp, zn = _normal_pair(base, _NU)
    logr = np.log(ratio)[:, None]
    return (gp * np.exp(-logr * np.maximum(dev.drift_nu + dev.drift_nu_std * zp, 0.0)),
            gn * np.exp(-logr * np.maximum(dev.drift_nu + dev.drift_nu_std * zn, 0.0)))


def _fault_uniforms(base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _uniform(base, 2 * _STUCK + 10), _uniform(base, 2 * _STUCK + 11)


def apply_faults(gp: np.ndarray, gn: np.ndarray, ids: np.ndarray, dev: DeviceModel, seed: int,
                 base: np.ndarray | None = None):
    """Stuck devices read g_max (on) or g_min (off) whatever was programmed, and do not drift."""
    if not (dev.stuck_on or dev.stuck_off):
        return gp, gn
    base = _base(seed, ids, gp.shape[1]) if base is None else base
    out = []
    for g, u in zip((gp, gn), _fault_uniforms(base)):
        g = np.where(u < dev.stuck_on, dev.g_max, g)
        out.append(np.where((u >= dev.stuck_on) & (u < dev.stuck_on + dev.stuck_off), dev.g_min, g))
    return out[0], out[1]


def stuck_mask(ids: np.ndarray, dim: int, dev: DeviceModel, seed: int) -> np.ndarray:
    """Which devices are stuck (either state), [n, 2, dim]: for tests and reports."""
    return np.stack(_fault_uniforms(_base(seed, ids, dim)), axis=1) < dev.stuck_on + dev.stuck_off


def effective_weights(w: np.ndarray, ids: np.ndarray, age: np.ndarray, dev: DeviceModel, seed: int):
    """What the array computes with at ``age`` seconds after each column was written.

    Returns (normalised weights [n, m] in about [-1, 1], column scales [n], summed conductance per column [n]).
    A read is ``x_n @ W.T`` in normalised units times ``max|x| * scale``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    base = None if dev.exact else _base(seed, ids, np.shape(w)[1])
    gp0, gn0, scale = program(w, ids, dev, seed, base)
    gp, gn = drift(gp0, gn0, age, dev, base)
    drifted = gp is not gp0
    gp, gn = apply_faults(gp, gn, ids, dev, seed, base)
    span = dev.g_max - dev.g_min
    wn = (gp - gn) / span
    if dev.drift_compensation and drifted:
        # Summed |current| of the column at t over the same at t0 (both through the faults): the column's
        # mean drift, divided out digitally.
        gp0f, gn0f = apply_faults(gp0, gn0, ids, dev, seed, base)
        at_t0 = np.abs(gp0f - gn0f).sum(axis=1)
        now = np.abs(gp - gn).sum(axis=1)
        wn = wn * (at_t0 / np.maximum(now, 1e-30))[:, None]
    return wn.astype(np.float32), scale.astype(np.float32), (gp + gn).sum(axis=1).astype(np.float32)


def quantize_signed(x: np.ndarray, bits: int, bound: float) -> np.ndarray:
    """Clip to +-bound and round to 2^(bits-1) - 1 steps per side (aihwkit's symmetric resolution)."""
    if not bits:
        return np.clip(x, -bound, bound) if math.isfinite(bound) else x
    step = bound / (2 ** (bits - 1) - 1)
    return np.round(np.clip(x, -bound, bound) / step) * step


# ---- energy and time ----------------------------------------------------------------------------------------

@dataclass
class Ledger:
    """Energy (picojoules) and modelled device time (nanoseconds), per write and per read."""

    writes: int = 0  # stored vectors
    reads: int = 0  # query vectors
    write_pj: float = 0.0
    read_pj: float = 0.0
    write_ns: float = 0.0
    read_ns: float = 0.0


def write_cost(n: int, dim: int, dev: DeviceModel) -> tuple[float, float]:
    """(pJ, ns) to program n columns of dim cells: both devices of every pair get the pulses (one is driven to
    its target, the other to g_min). Rows of a column are written one at a time, both devices in parallel;
    columns in different tiles in parallel."""
    pj = n * dim * 2 * dev.write_pulses * dev.write_pulse_pj
    ns = min(n, dev.tile) * dim * dev.write_pulses * dev.write_pulse_ns  # new columns fill a tile in turn
    return pj, ns


def adc_pj(dev: DeviceModel) -> float:
    """Conversion energy scales about 2^bits at a fixed figure of merit (Walden); 8 bits when exact."""
    return dev.adc_pj_8bit * 2.0 ** ((dev.adc_bits or 8) - 8)


def mean_square(x: np.ndarray) -> float:
    """mean(x^2) in float64, the same sum as ``np.mean`` without its wrapper (a read per decode step)."""
    if not x.size:
        return 0.0
    x64 = x.astype(np.float64)
    return float((x64 * x64).sum()) / x.size


def read_cost(n_queries: int, x_sq_mean: float, g_total: float, n_cols: int, dim: int,
              dev: DeviceModel) -> tuple[float, float]:
    """(pJ, ns) for n_queries VMMs over n_cols columns. Array: sum_ij V_i^2 G_ij t, with V_i = x_i V_read and
    the mean x_i^2 standing in for each row (mean field); plus one DAC conversion per row and one ADC
    conversion per column. Tiles read in parallel; each tile's ADC converts its columns one after another."""
    array = (dev.read_volts ** 2) * x_sq_mean * g_total * dev.read_ns * 1e-9 * 1e12
    dac = dim * dev.dac_pj
    pj = n_queries * (array + dac + n_cols * adc_pj(dev))
    ns = n_queries * (dev.read_ns + min(n_cols, dev.tile) * dev.adc_ns)
    return pj, ns


# DRAM baseline for the energy comparison: a 64-bit DRAM access costs 1.3-2.6 nJ and an fp32 multiply-add
# 3.7 + 0.9 pJ at 45 nm (Horowitz, "Computing's energy problem", ISSCC 2014).
DRAM_PJ_PER_BIT = 1300.0 / 64
FP32_MAC_PJ = 4.6


def dram_cost(writes: int, reads: int, n_cols: int, dim: int) -> dict:
    """The same memory on DRAM: a write stores dim float32; a read streams every stored key through the CPU
    (dim float32 per memory) and multiplies-adds it with the query."""
    w = writes * dim * 32 * DRAM_PJ_PER_BIT
    r = reads * n_cols * dim * (32 * DRAM_PJ_PER_BIT + FP32_MAC_PJ)
    return {"write": w, "read": r}


# ---- the array ----------------------------------------------------------------------------------------------

@dataclass
class CrossbarArray:
    """Columns of programmed conductances, one per stored vector, in the order the caller keeps its rows.

    The caller appends (``write``) and removes (``remove``) columns as its records change; ``read`` takes the
    queries and the caller's exact weights (used only by an exact device, and to re-evaluate drift).
    """

    dim: int
    device: DeviceModel = field(default_factory=lambda: DEVICES[DEFAULT_DEVICE])
    seed: int = 0
    drift_grid: float = 0.05  # re-evaluate a column's drift when its age has grown by 5% (log time)

    def __post_init__(self):
        self.device = device(self.device)
        self.ledger = Ledger()
        self.rng = np.random.default_rng(self.seed)
        # Growable columns (amortised appends, one compaction per removal batch): a store at 100,000 memories
        # programs one column per step, which must not copy every other column.
        from m3edge.memory.synaptic import Columns

        self._cols = Columns()
        # Reads at times in [_fresh_from, _fresh_until) find every column in the grid cell it was evaluated at
        # (a cell only changes when a column's age crosses the next grid point), so they skip the check.
        self._fresh_from, self._fresh_until = math.inf, -math.inf

    def __len__(self) -> int:
        return self._cols.n

    def _col(self, name: str, shape=(), dtype=np.float32) -> np.ndarray:
        return self._cols.get(name) if name in self._cols.cols else np.zeros((0,) + shape, dtype=dtype)

    @property
    def ids(self) -> np.ndarray:
        return self._cols.id_array()

    @property
    def written(self) -> np.ndarray:
        return self._col("written", dtype=np.float64)

    @property
    def _w(self) -> np.ndarray:  # normalised effective weights ([n, 0] on an exact device)
        return self._col("w", (0,))

    @property
    def _scale(self) -> np.ndarray:
        return self._col("scale")

    @property
    def _gsum(self) -> np.ndarray:
        return self._col("gsum")

    @property
    def _epoch(self) -> np.ndarray:  # drift grid cell each column was evaluated at
        return self._col("epoch", dtype=np.int64)

    def _epochs(self, age: np.ndarray) -> np.ndarray:
        dev = self.device
        if not (dev.drift_nu or dev.drift_nu_std):
            return np.zeros(len(age), dtype=np.int64)
        return np.floor(np.log(np.maximum(age, dev.drift_t0) / dev.drift_t0) / math.log1p(self.drift_grid)).astype(np.int64)

    def write(self, ids, weights: np.ndarray, written, account: bool = True) -> None:
        """Program new columns (ids ascending, after every id held) written at time(s) ``written``."""
        ids = np.asarray(ids, dtype=np.int64)
        weights = np.asarray(weights, dtype=np.float32).reshape(len(ids), self.dim)
        written = np.broadcast_to(np.asarray(written, dtype=np.float64), (len(ids),)).copy()
        if not self.device.exact:
            w, scale, gsum = effective_weights(weights, ids, np.zeros(len(ids)), self.device, self.seed)
        else:
            # Nothing to simulate; the summed conductance (for read energy) of the pairs the weights map to.
            dev, a = self.device, np.abs(weights)
            gsum = (2 * self.dim * dev.g_min + (dev.g_max - dev.g_min) * a.sum(axis=1)
                    / np.maximum(a.max(axis=1), 1e-12)).astype(np.float32)
            w, scale = np.zeros((len(ids), 0), np.float32), np.ones(len(ids), np.float32)
        self._cols.extend(ids.tolist(), {"written": written, "w": np.asarray(w, np.float32),
                                         "scale": np.asarray(scale, np.float32), "gsum": np.asarray(gsum, np.float32),
                                         "epoch": self._epochs(np.zeros(len(ids)))})
        self._fresh_from, self._fresh_until = math.inf, -math.inf  # new columns: check them at the next read
        if account:
            self.account_writes(len(ids))

    def account_writes(self, n: int) -> None:
        """Charge the ledger for programming n columns (a caller that programs lazily charges at store time)."""
        pj, ns = write_cost(n, self.dim, self.device)
        self.ledger.writes += n
        self.ledger.write_pj += pj
        self.ledger.write_ns += ns

    def sync(self, ids, weights: np.ndarray, written, account: bool = True) -> None:
        """Make the columns match the caller's rows: drop the ids it no longer holds, program the new ones.
        Ids only grow, so new rows are the ones past the last id held."""
        ids = np.asarray(ids, dtype=np.int64)
        # Ids ascend, rows are only appended (larger ids) or removed (fewer rows): equal length and equal first
        # and last ids mean the same rows, without comparing every id on every read.
        if len(ids) == len(self.ids) and (not len(ids) or (ids[0] == self.ids[0] and ids[-1] == self.ids[-1])):
            return
        held = self.ids
        appended = len(held) and len(ids) >= len(held) and ids[0] == held[0] and ids[len(held) - 1] == held[-1]
        if len(held) and not appended:  # rows were removed (appends alone keep the held prefix)
            gone = held[~np.isin(held, ids)]
            if len(gone):
                self.remove(gone)
        start = int(np.searchsorted(ids, self.ids[-1], side="right")) if len(self.ids) else 0
        if start < len(ids):
            written = np.broadcast_to(np.asarray(written, dtype=np.float64), (len(ids),))
            self.write(ids[start:], np.asarray(weights)[start:], written[start:], account)

    def remove(self, ids) -> None:
        ids = np.asarray(list(ids), dtype=np.int64)
        self._cols.remove(ids[np.isin(ids, self.ids)].tolist())

    def _refresh_drift(self, weights: np.ndarray, now: float) -> None:
        """Re-evaluate drift for the columns whose age crossed a grid point since they were last evaluated."""
        if self._fresh_from <= now < self._fresh_until:
            return
        age = np.maximum(now - self.written, 0.0)
        epoch = self._epochs(age)
        stale = np.nonzero(epoch != self._epoch)[0]
        if len(stale):
            w, _, gsum = effective_weights(weights[stale], self.ids[stale], age[stale], self.device, self.seed)
            self._w[stale], self._gsum[stale], self._epoch[stale] = w, gsum, epoch[stale]
        self._fresh_from, self._fresh_until = now, self._next_grid_time()

    def _next_grid_time(self) -> float:
        """The earliest time a column's age reaches its next grid point, a little early (1e-6 relative and
        1 ms) so that rounding in ``_epochs`` can never cross one unseen: until then a read changes nothing."""
        dev = self.device
        if not len(self.ids) or not (dev.drift_nu or dev.drift_nu_std):
            return math.inf
        edge = dev.drift_t0 * np.exp((self._epoch + 1) * math.log1p(self.drift_grid))
        return float(np.min(self.written + edge * (1 - 1e-6) - 1e-3))

    def read(self, x: np.ndarray, weights: np.ndarray, now: float = 0.0, cols: np.ndarray | None = None) -> np.ndarray:
        """Scores [N, n] ~ x @ weights.T for inputs x [N, dim]; ``weights`` are the caller's exact rows,
        aligned with the columns (an exact device computes with them directly). ``cols``: read only these
        columns (a tiled array drives only the tiles that hold them; energy is charged for those)."""
        x = np.asarray(x, dtype=np.float32)
        dev = self.device
        sel = slice(None) if cols is None else cols if isinstance(cols, slice) else np.asarray(cols, dtype=np.int64)
        if isinstance(sel, np.ndarray) and sel.ndim == 2:
            return self._read_gathered(x, weights, now, sel)
        n_cols = len(range(*sel.indices(len(self)))) if isinstance(sel, slice) else len(sel)
        if dev.exact:
            out = x @ np.asarray(weights)[sel].T
            x_sq = mean_square(x)
        else:
            self._refresh_drift(np.asarray(weights), now)
            xmax = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12)
            xn = quantize_signed(x / xmax, dev.dac_bits, 1.0)
            y = xn @ self._w[sel].T
            if dev.read_noise:
                # Independent device noise summed along a column: N(0, sigma^2 sum_i xn_i^2 (2 devices)).
                sigma = dev.read_noise * dev.g_max / (dev.g_max - dev.g_min)
                std = sigma * np.sqrt(2.0 * (xn.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
                y = y + (self.rng.standard_normal(y.shape) * std).astype(np.float32)
            y = quantize_signed(y, dev.adc_bits, dev.out_bound)
            out = (y * xmax * self._scale[sel][None, :]).astype(np.float32)
            x_sq = mean_square(xn)
        pj, ns = read_cost(len(x), x_sq, float(self._gsum[sel].sum(dtype=np.float64)), n_cols, self.dim, dev)
        self.ledger.reads += len(x)
        self.ledger.read_pj += pj
        self.ledger.read_ns += ns
        return out


    def _read_gathered(self, x: np.ndarray, weights: np.ndarray, now: float, cols: np.ndarray) -> np.ndarray:
        """[N, E]: query i read against its own columns cols[i] (the same device model as ``read``)."""
        dev = self.device
        if dev.exact:
            out = np.einsum("nm,nem->ne", x, np.asarray(weights)[cols])
            x_sq = mean_square(x)
        else:
            self._refresh_drift(np.asarray(weights), now)
            xmax = np.maximum(np.abs(x).max(axis=1, keepdims=True), 1e-12)
            xn = quantize_signed(x / xmax, dev.dac_bits, 1.0)
            y = np.einsum("nm,nem->ne", xn, self._w[cols])
            if dev.read_noise:
                sigma = dev.read_noise * dev.g_max / (dev.g_max - dev.g_min)
                std = sigma * np.sqrt(2.0 * (xn.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
                y = y + (self.rng.standard_normal(y.shape) * std).astype(np.float32)
            y = quantize_signed(y, dev.adc_bits, dev.out_bound)
            out = (y * xmax * self._scale[cols]).astype(np.float32)
            x_sq = mean_square(xn)
        g = float(self._gsum[cols].sum(dtype=np.float64)) / max(1, len(x))
        pj, ns = read_cost(len(x), x_sq, g, cols.shape[1], self.dim, dev)
        self.ledger.reads += len(x)
        self.ledger.read_pj += pj
        self.ledger.read_ns += ns
        return out


def with_overrides(dev: DeviceModel, **changes) -> DeviceModel:
    """A preset with some parameters changed (a study of one effect at a time)."""
    return replace(dev, **changes).check()
