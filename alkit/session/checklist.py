"""A cycle's checklist for the annotators: every region with its slide, box and status, in Markdown and CSV.

``checklist.md`` says what to do (open the QuPath / ASAP file, draw inside each Region rectangle, mark a
region skipped, save as ``<slide>.geojson`` / ``<slide>.xml``) and lists the regions; ``checklist.csv`` is
the same table for a spreadsheet. ``next`` writes both with every region ``open``; ``ingest`` rewrites
them with ``done`` / ``skipped``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from alkit.atomic import atomic_write_text

COLUMNS = ("id", "slide", "x", "y", "w", "h", "status")

INSTRUCTIONS = """\
For each slide: open the slide in QuPath, import `qupath/<slide>.geojson` (File > Import objects), or open
`asap/<slide>.xml` in ASAP. Each cyan `Region` rectangle (locked) is a region to annotate:

- draw the tumour inside it as annotations of the class `Tumor` (areas outside tumour need nothing;
  mitotic figures: points of the class `Mitotic figure`);
- a region you cannot annotate: set its class to `Region: skipped` (ASAP: move it to the group
  `Region skipped`);
- never draw outside the Region rectangles (ingest refuses such drawings); moving a rectangle changes
  nothing (the exported box is used).

Save all objects per slide as `<slide>.geojson` (QuPath: File > Export objects as GeoJSON) or
`<slide>.xml` (ASAP) into one folder, then run `alkit session ingest SESSION FOLDER`.
"""


def checklist_rows(regions: Sequence[Mapping], status: Mapping[str, str]) -> list[dict]:
    rows = []
    for r in regions:
        x, y, w, h = r["box"]
        rows.append({"id": r["id"], "slide": r["slide"], "x": x, "y": y, "w": w, "h": h,
                     "status": status.get(r["id"], "open")})
    return rows


def write_checklist(folder: str | Path, cycle: int, regions: Sequence[Mapping],
                    status: Mapping[str, str]) -> list[Path]:
    """``checklist.md`` and ``checklist.csv`` of ``regions`` in ``folder`` (atomically); returns both paths."""
    folder = Path(folder)
    rows = checklist_rows(regions, status)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("open", "done", "skipped")}
    lines = [f"# Cycle {cycle}: {len(rows)} region(s) to annotate", "",
             f"{counts['done']} done, {counts['skipped']} skipped, {counts['open']} open.", "", INSTRUCTIONS,
             "| region | slide | box (x, y, w, h; level-0 px) | status |", "|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['slide']} | {r['x']}, {r['y']}, {r['w']}, {r['h']} | {r['status']} |" for r in rows]
    md = atomic_write_text(folder / "checklist.md", "\n".join(lines) + "\n")
    return [md, atomic_write_text(folder / "checklist.csv", buf.getvalue())]
