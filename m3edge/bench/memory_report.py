"""README's and docs/memory.md's memory figures, regenerated from the memory suite's JSON.

    python -m m3edge.bench memory-report [bench/results-memory-read.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from m3edge.bench.common import ROOT
from m3edge.bench.memory import markdown, splice


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m m3edge.bench memory-report")
    ap.add_argument("results", nargs="?", default=str(ROOT / "bench" / "results-memory-read.json"))
    ap.add_argument("--check", action="store_true", help="exit 1 if a page differs from the JSON; write nothing")
    a = ap.parse_args(argv)
    block = markdown(json.loads(Path(a.results).read_text()))
    stale = []
    for page in (ROOT / "README.md", ROOT / "docs" / "memory.md"):
        text = page.read_text()
        new = splice(text, block)
        if new != text:
            stale.append(page.name)
            if not a.check:
                page.write_text(new)
    if a.check and stale:
        print(f"stale: {', '.join(stale)} (run python -m m3edge.bench memory-report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
