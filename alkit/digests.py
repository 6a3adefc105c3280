"""Content digests of files: one SHA-256 routine for weights ids, prototype archives and cache keys."""

from __future__ import annotations

import hashlib
import os


def files_sha256(*paths: str | os.PathLike) -> str:
    """The hex SHA-256 of the given files' bytes, in order, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
