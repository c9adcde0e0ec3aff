"""Write a directory atomically: build it beside the target, rename it into place when complete.

The rename is the commit point: a crash or an error leaves the old directory or none, never a half-written
one. An existing target is replaced only with ``force`` and only when ``owned`` says it is ours (or it is
empty), so a typo in ``-o`` can never delete a user's folder.

A process killed mid-write (kill -9, power loss) leaves its temporary folder, ``.<name>.tmp-<pid>-*``; the next
write beside it removes those whose process is gone and says so on stderr. Killed between the two renames, it
leaves the previous version as ``.<name>.old`` and no ``<name>``: that is put back.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from m3edge.errors import BadInput, StorageError


@contextmanager
def atomic_dir(out: str | Path, force: bool, owned: Callable[[Path], bool], kind: str):
    out = Path(out).resolve()
    if out.parent.is_dir():
        recover(out)  # first: it may put the previous version back, which --force then governs
    if out.exists():
        if not force:
            raise BadInput(f"{out}: already exists (pass --force to replace it)")
        if not out.is_dir():
            raise BadInput(f"{out}: exists and is not a directory; refusing to replace it")
        if any(out.iterdir()) and not owned(out):
            raise BadInput(f"{out}: exists and is not an {kind}; refusing to replace it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # The pid in the name tells a later run whether the export that made it is still alive.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise StorageError(out, f"cannot write here ({e.strerror})") from None
    try:  # from here on, anything that stops this write (a SIGTERM's exit too) removes the temporary folder
        try:
            # mkdtemp makes it 0700; a bundle or checkpoint is handed to a service user: the umask's usual mode.
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as e:
            raise StorageError(out, f"cannot write here ({e.strerror})") from None
        try:
            yield tmp
        except OSError as e:  # the disk refused a write: one line naming the output, the temp removed below
            if e.errno not in DISK_ERRNOS:
                raise
            raise StorageError(out, f"cannot write the output ({e.strerror or e}"
                                    f"{': ' + str(e.filename) if e.filename else ''}); nothing was replaced") from None
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}
TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def recover(out: Path) -> list[str]:
    """Clean what killed writes left beside ``out`` (see the module's docstring); returns what was done."""
    done = []
    for p in sorted(out.parent.iterdir()):
        m = TMP_RE.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p}, left by an interrupted write (process {m['pid']} is gone)")
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not old.is_symlink():
        if not out.exists():
            os.replace(old, out)
            done.append(f"restored {out} from {old.name}: a write was interrupted between its two renames")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old}, the previous version an interrupted write left")
    for line in done:
        print(f"note: {line}", file=sys.stderr)
    return done
