"""Byte data: the splits in calibration_data/ and the causal windows every token sees. numpy only."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from m3edge.errors import BadInput

SPLITS = ("train", "calibration", "eval")


def read_bytes(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise BadInput(f"{path}: cannot read text ({e.strerror})") from None
    if len(data) < 2:
        raise BadInput(f"{path}: needs at least 2 bytes of text")
    return np.frombuffer(data, dtype=np.uint8)


def load_split(data_dir: str | Path, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return read_bytes(Path(data_dir) / f"{split}.txt")


def windows(data: np.ndarray, positions: np.ndarray, context: int) -> np.ndarray:
    """[N, context] int64: the ``context`` bytes before each position, left-padded with byte 0."""
    padded = np.concatenate([np.zeros(context, dtype=np.uint8), np.asarray(data, dtype=np.uint8)])
    idx = np.asarray(positions, dtype=np.int64)[:, None] + np.arange(context)
    return padded[idx].astype(np.int64)


def unigram_bits_per_byte(train: np.ndarray, test: np.ndarray) -> float:
    """Add-one smoothed byte frequencies from ``train``, scored on ``test``."""
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[test])))


def bigram_bits_per_byte(train: np.ndarray, test: np.ndarray, prior: float = 8.0) -> float:
    """P(b | a) with a Dirichlet prior toward the unigram (strength ``prior``); the first byte is unigram."""
    uni = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    uni /= uni.sum()
    pairs = np.zeros((256, 256))
    np.add.at(pairs, (train[:-1], train[1:]), 1.0)
    cond = (pairs + prior * uni) / (pairs.sum(1, keepdims=True) + prior)
    logp = np.concatenate([[np.log2(uni[test[0]])], np.log2(cond[test[:-1], test[1:]])])
    return float(-np.mean(logp))


def default_data_dir() -> Path:
    """$M3EDGE_DATA, else ./calibration_data, else the source tree's copy (editable installs)."""
    import os

    for cand in (os.environ.get("M3EDGE_DATA"), "calibration_data", Path(__file__).resolve().parents[1] / "calibration_data"):
        if cand and (Path(cand) / "train.txt").is_file():
            return Path(cand)
    raise BadInput("calibration_data not found: pass --data-dir or set M3EDGE_DATA")
