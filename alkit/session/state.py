"""The state of a session on disk: ``DIR/session.json``, rewritten atomically at every step.

``session.json`` holds the format and version, the session's configuration (cohort, task, strategies,
budget, cycles, seed, oracle; fixed at ``init``), when it was created, the current ``cycle`` and its
``state``:

- ``new``: nothing chosen yet (``next`` chooses cycle 0);
- ``regions_out``: the regions of ``cycle`` are with the annotators (``next`` prints them again,
  ``ingest`` records them);
- ``ingested``: the labels of ``cycle`` are in the pool (``train`` fits on them; ``next`` acquires
  cycle + 1);
- ``trained``: the model of ``cycle`` was fitted and evaluated (its metrics are in the pool).

Beside it: ``pool.json`` (:class:`alkit.al.pool.LabeledPool`), ``cycles/<k>/`` (what annotators get),
``labels/cycle-<k>.json`` (what they drew, per region). The pool is the record of what was labeled; the
state only says which step comes next, so a crash between the two is repaired from the pool.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alkit.atomic import atomic_write_text
from alkit.errors import AlkitError
from alkit.jsonfile import read_json

FORMAT = "alkit-session"
FORMAT_VERSION = 1
STATES = ("new", "regions_out", "ingested", "trained")
SESSION_FILE = "session.json"


class SessionError(AlkitError, ValueError):
    """A session folder, file or step that cannot be used as asked (names the folder and the reason)."""


@dataclass
class SessionState:
    """One session: its folder, fixed configuration and where it stands."""

    folder: Path
    config: dict
    created: str = ""
    cycle: int = 0
    state: str = "new"
    #: per cycle (as text): the regions handed out, ``[{id, slide, box, strategy, cls, score}]``
    regions: dict[str, list[dict]] = field(default_factory=dict)
    #: per cycle (as text): the files ``next`` wrote, relative to the folder
    files: dict[str, list[str]] = field(default_factory=dict)
    #: per cycle (as text): ids of the regions annotators marked skipped
    skipped: dict[str, list[str]] = field(default_factory=dict)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.folder / SESSION_FILE

    @property
    def pool_path(self) -> Path:
        return self.folder / "pool.json"

    def cycle_dir(self, cycle: int) -> Path:
        return self.folder / "cycles" / str(int(cycle))

    def labels_path(self, cycle: int) -> Path:
        return self.folder / "labels" / f"cycle-{int(cycle)}.json"

    # -- persistence ----------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike, config: dict, *, force: bool = False) -> SessionState:
        """A new session in ``folder`` (written); an existing one is refused unless ``force``."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise SessionError(f"{folder}: is a file, not a session folder")
        if (folder / SESSION_FILE).exists() and not force:
            raise SessionError(f"{folder}: already holds a session ({SESSION_FILE}); pass --force to start it "
                               "again (its pool and cycles are set aside)")
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        if (folder / SESSION_FILE).exists():
            set_aside(folder)
        state = cls(folder, config, created)
        state.save()
        return state

    @classmethod
    def load(cls, folder: str | os.PathLike) -> SessionState:
        folder = Path(folder)
        path = folder / SESSION_FILE
        if not path.is_file():
            raise SessionError(f"{folder}: no session here (no {SESSION_FILE}); start one with alkit session init")
        doc = read_json(path, SessionError, "session file")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SessionError(f"{path}: not an alkit session file")
        if doc.get("version") != FORMAT_VERSION:
            raise SessionError(f"{path}: session format version {doc.get('version')!r}; this alkit reads "
                               f"version {FORMAT_VERSION}")
        try:
            state = cls(folder, dict(doc["config"]), str(doc.get("created", "")), int(doc["cycle"]),
                        str(doc["state"]), dict(doc.get("regions", {})), dict(doc.get("files", {})),
                        dict(doc.get("skipped", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionError(f"{path}: malformed session file ({type(exc).__name__}: {exc})") from None
        if state.state not in STATES:
            raise SessionError(f"{path}: unknown state {state.state!r} (one of {', '.join(STATES)})")
        return state

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "created": self.created, "config": self.config,
                "cycle": self.cycle, "state": self.state, "regions": self.regions, "files": self.files,
                "skipped": self.skipped}

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.to_dict(), indent=1) + "\n")

    # -- queries --------------------------------------------------------------------------------
    def open_regions(self, cycle: int | None = None) -> list[dict]:
        """The regions handed out in ``cycle`` (default the current one)."""
        return list(self.regions.get(str(self.cycle if cycle is None else cycle), []))

    def skipped_boxes(self) -> dict[str, list[tuple[int, int, int, int]]]:
        """Slide id -> boxes of every region an annotator skipped (never offered again)."""
        out: dict[str, list] = {}
        for cycle, ids in self.skipped.items():
            for r in self.regions.get(cycle, []):
                if r["id"] in ids:
                    out.setdefault(r["slide"], []).append(tuple(r["box"]))
        return out


def set_aside(folder: Path) -> Path:
    """Move a session's files (session.json, pool, cycles, labels) into ``folder/replaced-<UTC time>/``."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    aside = folder / f"replaced-{stamp}"
    aside.mkdir()
    for name in ("pool.json", "cycles", "labels", SESSION_FILE):  # session.json last: a crash leaves it in place
        if (folder / name).exists():
            os.replace(folder / name, aside / name)
    return aside
