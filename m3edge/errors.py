"""Typed errors shared by the CLI and the libraries.

The CLI maps them to exit codes: ``BadInput`` -> 2 (bad usage or input), ``CheckFailed`` -> 1
(a checked property such as a parity gate failed). The message is one line for stderr.
"""


class M3EdgeError(Exception):
    """Base of m3edge's own errors; ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class BadInput(M3EdgeError):
    """Bad usage or input: unknown target, malformed file, corrupt or missing checkpoint."""

    exit_code = 2


class CheckFailed(M3EdgeError):
    """A checked property failed: a parity gate, a verification."""

    exit_code = 1


class StorageError(BadInput):
    """A write the disk refused (full, read-only, I/O error): nothing that returned was lost, the failed write
    was rolled back. The CLI exits 2; a server maps ``http_status`` (507 Insufficient Storage)."""

    exit_code = 2
    http_status = 507

    def __init__(self, path, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")
