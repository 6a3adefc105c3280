"""Reading the JSON files users hand in, with errors that name the file and what is wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike, error: type[Exception], what: str, *,
              missing: type[Exception] | None = None, missing_message: str | None = None) -> Any:
    """The parsed content of ``path``.

    A missing file raises ``missing`` (default ``error``) with ``missing_message`` (default
    "no such {what}"); an unreadable or malformed file raises ``error`` saying "not valid JSON".
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise (missing or error)(missing_message or f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
