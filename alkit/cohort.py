"""Cohorts as users name them: slide paths, glob patterns and slide-list files."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from alkit.slide import SlideError

LIST_SUFFIXES = (".txt", ".lst", ".list")


def expand_slide_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths, globs (``slides/*.svs``, ``**`` allowed) and list files (one path per line, ``#`` comments,
    relative paths taken from the list's folder) → slide paths in the given order, without repeats.

    A glob that matches nothing or a missing list file raises :class:`SlideError` naming it.
    """
    out: list[Path] = []
    for item in map(str, items):
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise SlideError(item, "no slide matches this pattern")
            out.extend(Path(m) for m in matches)
        elif item.endswith(LIST_SUFFIXES):
            listing = Path(item)
            if not listing.is_file():
                raise SlideError(listing, "no such slide-list file")
            for line in listing.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    p = Path(line)
                    out.append(p if p.is_absolute() else listing.parent / p)
        else:
            out.append(Path(item))
    seen: set[Path] = set()
    return [p for p in out if not (p in seen or seen.add(p))]
