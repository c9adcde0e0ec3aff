"""Byte data: the splits in calibration_data/ and the causal windows every token sees. numpy only."""

from __future__ import annotations

from dataclasses import dataclass
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


FACT_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


# with_facts' byte roles: the text's own, a code stated, a code restated, the rest of an inserted line (its
# indent, random name, quotes and newline)
PLAIN, STATED, RESTATED, FRAME = 0, 1, 2, 3


def with_facts(text: np.ndarray, rng: np.random.Generator, every: int = 2048,
               gap: tuple[int, int] = (64, 900)) -> tuple[np.ndarray, np.ndarray]:
    """``text`` with copy exercises spliced in at line ends, and each byte's role (PLAIN, STATED, RESTATED, FRAME).

    About one exercise per ``every`` bytes: a line ``<name> = '<code>'`` (a random identifier and a random 6-16
    character code) stated once, then restated ``gap`` bytes later. Real text rarely repeats a string the model
    cannot predict, so without these the reader's gate learns that an exact context match never beats a
    confident model; with them it learns that a match copying an unpredictable string is right (the recall goal
    of issue 16). The roles let training keep the inserted lines out of the losses they would only teach noise:
    a stated code is unpredictable to anything, a restated one to the model without memory, and a line's random
    name is not the text's own. Pure: same rng, same text."""
    data = bytes(np.asarray(text, dtype=np.uint8))
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
    candidates = ends[ends < len(data) - gap[1]]
    want = max(1, len(data) // every)
    if want > len(candidates):
        raise BadInput(f"copy exercises every {every} bytes need {want} line ends to start at; the text has "
                       f"{len(candidates)} (use a larger --fact-every)")
    starts = np.sort(rng.choice(candidates, size=want, replace=False))
    inserts: list[tuple[int, bytes, int, int, int]] = []  # (at, line, code's offset, code's length, code's role)
    for s in starts:
        name = bytes(rng.choice(list(b"abcdefghijklmnopqrstuvwxyz"), int(rng.integers(3, 9))).tolist())
        if rng.random() < 0.5:
            name += b"_" + bytes(rng.choice(list(b"abcdefghijklmnopqrstuvwxyz"), int(rng.integers(2, 7))).tolist())
        code = bytes(rng.choice(list(FACT_ALPHABET), int(rng.integers(6, 17))).tolist())
        q = b"'" if rng.random() < 0.5 else b'"'
        head = b"    " * int(rng.integers(0, 3)) + name + b" = " + q
        line = head + code + q + b"\n"
        later = ends[np.searchsorted(ends, s + int(rng.integers(*gap))):][:1]
        inserts += [(int(s), line, len(head), len(code), STATED)]
        inserts += [(int(later[0]), line, len(head), len(code), RESTATED)] * len(later)
    inserts.sort(key=lambda t: t[0])
    out, roles, prev = [], [], 0
    for at, line, off, n, code_role in inserts:
        role = np.full(len(line), FRAME, dtype=np.uint8)
        role[off:off + n] = code_role
        out += [data[prev:at], line]
        roles += [np.zeros(at - prev, dtype=np.uint8), role]
        prev = at
    out.append(data[prev:])
    roles.append(np.zeros(len(data) - prev, dtype=np.uint8))
    return np.frombuffer(b"".join(out), dtype=np.uint8), np.concatenate(roles)


@dataclass(frozen=True)
class ByteCounts:
    """Byte and byte-pair counts of a training text: all the n-gram baselines need of it. The train split's are
    shipped in the package (``train_counts.npz``, 1.6 MB of text -> a few kB), so a device scores the baselines
    without the split itself."""

    unigram: np.ndarray  # [256] int64
    bigram: np.ndarray  # [256, 256] int64, bigram[a, b]: times byte b followed byte a

    @classmethod
    def of(cls, text: np.ndarray) -> ByteCounts:
        text = np.asarray(text, dtype=np.uint8)
        pairs = np.bincount(text[:-1].astype(np.int64) * 256 + text[1:], minlength=256 * 256)
        return cls(np.bincount(text, minlength=256).astype(np.int64), pairs.reshape(256, 256).astype(np.int64))

    @classmethod
    def load(cls, path: str | Path) -> ByteCounts:
        with np.load(path) as z:
            return cls(z["unigram"].astype(np.int64), z["bigram"].astype(np.int64))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, unigram=self.unigram.astype(np.uint32), bigram=self.bigram.astype(np.uint32))


def _counts(train) -> ByteCounts:
    return train if isinstance(train, ByteCounts) else ByteCounts.of(train)


def unigram_bits_per_byte(train: np.ndarray | ByteCounts, test: np.ndarray) -> float:
    """Add-one smoothed byte frequencies from ``train`` (a text or its counts), scored on ``test``."""
    counts = _counts(train).unigram.astype(np.float64) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[test])))


def bigram_bits_per_byte(train: np.ndarray | ByteCounts, test: np.ndarray, prior: float = 8.0) -> float:
    """P(b | a) with a Dirichlet prior toward the unigram (strength ``prior``); the first byte is unigram."""
    c = _counts(train)
    uni = c.unigram.astype(np.float64) + 1.0
    uni /= uni.sum()
    pairs = c.bigram.astype(np.float64)
    cond = (pairs + prior * uni) / (pairs.sum(1, keepdims=True) + prior)
    logp = np.concatenate([[np.log2(uni[test[0]])], np.log2(cond[test[:-1], test[1:]])])
    return float(-np.mean(logp))


TRAIN_COUNTS = "train_counts.npz"  # ByteCounts of train.txt, beside the splits (``python -m m3edge.data`` rewrites it)


def train_counts(data_dir: str | Path) -> ByteCounts:
    """The n-gram baselines' training counts: from ``train.txt`` when the folder has it (a user's own splits
    too), else the shipped counts of the reference train split."""
    data_dir = Path(data_dir)
    if (data_dir / "train.txt").is_file():
        return ByteCounts.of(load_split(data_dir, "train"))
    for d in (data_dir, *SHIPPED):
        if (d / TRAIN_COUNTS).is_file():
            return ByteCounts.load(d / TRAIN_COUNTS)
    raise BadInput(f"{data_dir}: has neither train.txt nor {TRAIN_COUNTS} (the n-gram baselines' training text)")


# The splits a wheel carries (eval, calibration, prose and the train split's counts; not train.txt): the
# repository's calibration_data/ installed as the m3edge.calibration_data package.
# An editable install finds the source tree's copy instead.
SHIPPED = (Path(__file__).resolve().parent / "calibration_data", Path(__file__).resolve().parents[1] / "calibration_data")


def default_data_dir() -> Path:
    """$M3EDGE_DATA, else ./calibration_data, else the source tree's copy (editable installs), else the wheel's."""
    import os

    for cand in (os.environ.get("M3EDGE_DATA"), "calibration_data", SHIPPED[1], SHIPPED[0]):
        # eval.txt, not train.txt: the wheel's copy has every split but train (its counts stand in for it).
        if cand and (Path(cand) / "eval.txt").is_file():
            return Path(cand)
    raise BadInput("calibration_data not found: pass --data-dir or set M3EDGE_DATA")


if __name__ == "__main__":  # rewrite the shipped train counts after calibration_data/train.txt changed
    ByteCounts.of(load_split(SHIPPED[1], "train")).save(SHIPPED[1] / TRAIN_COUNTS)
