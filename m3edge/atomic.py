"""Write a directory atomically: build it beside the target, rename it into place when complete.

The rename is the commit point: a crash or an error leaves the old directory or none, never a half-written
one. An existing target is replaced only with ``force`` and only when ``owned`` says it is ours (or it is
empty), so a typo in ``-o`` can never delete a user's folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from m3edge.errors import BadInput


@contextmanager
def atomic_dir(out: str | Path, force: bool, owned: Callable[[Path], bool], kind: str):
    out = Path(out).resolve()
    if out.exists():
        if not force:
            raise BadInput(f"{out}: already exists (pass --force to replace it)")
        if not out.is_dir():
            raise BadInput(f"{out}: exists and is not a directory; refusing to replace it")
        if any(out.iterdir()) and not owned(out):
            raise BadInput(f"{out}: exists and is not an {kind}; refusing to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise BadInput(f"{out}: cannot write here ({e.strerror})") from None
    try:
        yield tmp
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
