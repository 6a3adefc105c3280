"""Ids read from files (slide ids in stores, pools, annotation files) and the file names made from them.

Files move between labs, so an id inside one is untrusted input. :func:`check_id` refuses ids that are
paths or could act as one (``../x``, ``/tmp/x``, NUL and control characters, very long ids, Unicode
look-alikes of ``/``, ``\\`` and ``.``); :func:`safe_name` turns an accepted id into a file-name
component (ASCII letters, digits, ``.``, ``_``, ``-``; never hidden, never ``.`` / ``..``), and
:func:`id_path` is the one way alkit builds a per-id path: ``folder / (safe_name(id) + suffix)``,
checked to stay inside ``folder``.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from alkit.errors import AlkitError

#: longest id accepted (characters); file names are limited to 255 bytes on common filesystems
MAX_ID_LENGTH = 200
#: longest file-name component :func:`safe_name` returns (room left for suffixes)
MAX_NAME_LENGTH = 120

# characters that look like a path separator or a dot but are not the ASCII ones (NFKC maps some of
# these to ASCII; the others are caught by this list)
_LOOKALIKES = frozenset(
    "\u2215\u2044\u29f8\u29f9\u2216\uff0f\uff3c\ufe68\u2571\u2572\u27cb\u27cd\u1735\u3033\u2cc6\u2f03"  # slashes
    "\u2024\u2025\u2026\ufe52\uff0e\u3002\uff61\u0701\u0702\ua60e\u2e33\u2e34\u00b7\u2027\u22c5\u0589"  # dots
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DRIVE = re.compile(r"^[A-Za-z]:")


class IdError(AlkitError, ValueError):
    """An id that is not a plain id (a path, a control character, too long...); names where it came from."""


def check_id(value: object, *, what: str = "slide id", source: str | os.PathLike | None = None,
             error: type[Exception] = IdError) -> str:
    """``value`` if it is a plain id, else ``error`` naming ``source``, the id and what is wrong.

    Refused: non-strings, empty ids, ids longer than :data:`MAX_ID_LENGTH`, control / format
    characters (NUL, bidi overrides, zero-width), ``/`` and ``\\``, drive prefixes (``C:``), the ids
    ``.`` and ``..``, and Unicode look-alikes of ``/``, ``\\`` and ``.``.
    """
    where = f"{source}: " if source is not None else ""
    if not isinstance(value, str):
        raise error(f"{where}{what} must be a string, got {type(value).__name__} {value!r:.80}")
    shown = repr(value[:80]) + ("..." if len(value) > 80 else "")

    def refuse(reason: str) -> None:
        raise error(f"{where}{what} {shown} is not an id: {reason}")

    if not value.strip():
        refuse("it is empty")
    if len(value) > MAX_ID_LENGTH:
        refuse(f"{len(value)} characters, more than {MAX_ID_LENGTH}")
    bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if bad is not None:
        refuse(f"it holds the control character U+{ord(bad):04X}")
    folded = unicodedata.normalize("NFKC", value)
    if "/" in folded or "\\" in folded or os.sep in value or (os.altsep and os.altsep in value):
        refuse("it holds a path separator (ids name slides, they are not paths)")
    if _DRIVE.match(folded):
        refuse("it starts with a drive letter")
    if folded.strip() in (".", "..") or value.strip() in (".", ".."):
        refuse("it is a directory name")
    odd = next((c for c in value if c in _LOOKALIKES), None)
    if odd is not None:
        refuse(f"it holds U+{ord(odd):04X} ({unicodedata.name(odd, '?')}), a look-alike of a path character")
    return value


def safe_name(value: object, *, what: str = "slide id", source: str | os.PathLike | None = None,
              error: type[Exception] = IdError) -> str:
    """The file-name component of an id (checked with :func:`check_id` first).

    Runs of characters other than ASCII letters, digits, ``.``, ``_`` and ``-`` become ``-``
    (``"slide A"`` -> ``"slide-A"``); leading dots become ``_`` (no hidden files); an id with nothing
    left, or longer than :data:`MAX_NAME_LENGTH`, gets a short digest of the whole id instead.
    Different ids can share a name (``"a b"``, ``"a-b"``): writers of several files into one folder
    check for such clashes.
    """
    value = check_id(value, what=what, source=source, error=error)
    name = _UNSAFE.sub("-", value).strip("-")
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:10]
    if not name.strip("._-"):
        return f"id-{digest}"
    if len(name) > MAX_NAME_LENGTH:
        return f"{name[:MAX_NAME_LENGTH - 11]}-{digest}"
    return name


def id_path(folder: str | os.PathLike, value: object, suffix: str = "", *, what: str = "slide id",
            source: str | os.PathLike | None = None, error: type[Exception] = IdError) -> Path:
    """``folder / (safe_name(value) + suffix)``, and a check that it lies directly inside ``folder``."""
    folder = Path(folder)
    path = folder / f"{safe_name(value, what=what, source=source, error=error)}{suffix}"
    if path.parent != folder or Path(os.path.abspath(path)).parent != Path(os.path.abspath(folder)):
        raise error(f"{source or folder}: {what} {value!r} would leave the folder {folder}")  # unreachable
    return path
