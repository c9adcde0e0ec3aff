"""What every part of the benchmark shares: the prompts, this process's peak RSS, the machine, a spread."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import numpy as np

PROMPT_BYTES = 48
ROOT = Path(__file__).resolve().parents[2]  # the source tree: the full suite's checkpoints and results live here


def prompts(data_dir: Path, n: int) -> list[bytes]:
    from m3edge.data import load_split

    text = load_split(data_dir, "eval").tobytes()
    starts = np.linspace(0, len(text) - PROMPT_BYTES - 1, n).astype(int)
    return [text[s:s + PROMPT_BYTES] for s in starts]


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork and exec, so a worker
    would report its parent's size whenever the parent was the larger (measured: every row read 4 GB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def spread(values) -> dict:
    """A figure as DESIGN asks for it: the median of several runs, with the runs' min and max."""
    v = [float(x) for x in values]
    return {"median": float(np.median(v)), "min": min(v), "max": max(v), "runs": v}
