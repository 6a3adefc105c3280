"""Contact sheets of search hits, for the manual clean-up step.

The paper's authors went through their keyword hits by hand (46 -> 21 breast images, 41 -> 19
mitosis images). :func:`contact_sheet` shows every hit's image with its number, id, panel letter,
source, image size and caption (for a multi-panel figure: the panel's own part first, then the whole
caption), so a reviewer can list the ids to leave out in a text file, one per line, and pass it to
``alkit prototypes search --exclude`` or ``build --exclude``. Hits may carry a ``score`` (retrieval)
and a ``typicality`` (:func:`with_typicality`: similarity to the other hits' mean embedding), shown
on the sheet; sorted by typicality, the hits least like the rest come first.

``.png`` / ``.jpg`` gives one image. ``.html`` gives a self-contained page (thumbnails embedded, no
external resources, no network) with the matched keywords highlighted and an "exclude" tick box per
hit that collects the ticked ids into a box to copy, or a file to download.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from alkit.atomic import atomic_path, atomic_write_text
from alkit.captions.database import CaptionDB, CaptionDBError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
HTML_SUFFIXES = (".html", ".htm")
BACKGROUND = (236, 236, 236)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has one bitmap size only
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last ends with … if cut)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
        if len(lines) == max_lines:
            break
    if line and len(lines) < max_lines:
        lines.append(line)
    shown = " ".join(lines)
    if len(shown) < len(" ".join(text.split())) and lines:
        last = lines[-1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " …"
    return lines


class _Entry:
    """What the sheet shows of one hit."""

    def __init__(self, number: int, hit: Mapping, db: CaptionDB, thumb: int) -> None:
        self.number = number
        self.id = str(hit["id"])
        self.matched = [str(t) for t in hit.get("matched", [])]
        self.score = hit.get("score")
        self.typicality = hit.get("typicality")
        self.thumb: np.ndarray | None = None
        self.size: tuple[int, int] | None = None
        self.note = ""
        try:
            row = db.entry(self.id)
        except CaptionDBError:
            row = {"caption": str(hit.get("caption", "")), "text": str(hit.get("text", hit.get("caption", ""))),
                   "letter": str(hit.get("letter", "")), "source": str(hit.get("source", ""))}
            self.note = "not in this database"
        self.caption, self.text = row["caption"].strip(), row["text"].strip()
        self.letter, self.source = row["letter"], row["source"]
        if not self.note:
            try:
                image = db.read_image(self.id)
                self.size = (image.shape[1], image.shape[0])
                im = Image.fromarray(image)
                im.thumbnail((thumb, thumb), Image.BOX)
                self.thumb = np.asarray(im)
            except CaptionDBError as exc:
                self.note = "image missing" if "no image" in str(exc) else "image unreadable"

    @property
    def panel(self) -> str:
        return f"panel {self.letter}" if self.letter and self.letter not in ("Single", "") else "single"

    @property
    def own_part(self) -> str | None:
        return self.text if self.text and self.text != self.caption else None


def _entries(hits: Sequence[Mapping], db: CaptionDB, thumb: int) -> list[_Entry]:
    if not hits:
        raise CaptionDBError("no hits to review")
    entries = [_Entry(n, h, db, thumb) for n, h in enumerate(hits, start=1)]
    problems = [e for e in entries if e.note]
    if problems:
        log.warning("%d of %d hits have no image to show (e.g. %s: %s)", len(problems), len(entries),
                    problems[0].id, problems[0].note)
    return entries


def contact_sheet(hits: Sequence[Mapping], db: CaptionDB, out: str | os.PathLike, *, title: str = "",
                  thumb: int = 224, columns: int = 5) -> Path:
    """Write a contact sheet of ``hits`` (dicts with at least ``id``) to ``out`` (.png/.jpg or .html)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in IMAGE_SUFFIXES + HTML_SUFFIXES:
        raise CaptionDBError(f"{out}: a contact sheet is .png, .jpg or .html")
    thumb, columns = max(64, int(thumb)), max(1, int(columns))
    entries = _entries(hits, db, thumb)
    title = title or f"{len(entries)} hits from {db.name}"
    if suffix in HTML_SUFFIXES:
        return atomic_write_text(out, _html(entries, title))
    sheet = _png(entries, title, thumb, columns)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG" if suffix == ".png" else "JPEG", **({"quality": 90} if suffix != ".png" else {}))
    log.info("wrote a contact sheet of %d hits to %s", len(entries), out)
    return out


# ---------------------------------------------------------------------- PNG


def _png(entries: list[_Entry], title: str, thumb: int, columns: int) -> Image.Image:
    small, body, head = _font(11), _font(12), _font(16)
    pad, line = 8, 15
    text_lines = 11
    cell_w, cell_h = thumb + 2 * pad, thumb + 2 * pad + text_lines * line
    rows = -(-len(entries) // columns)
    header = 3 * line + 2 * pad
    sheet = Image.new("RGB", (columns * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill="black", font=head)
    draw.text((pad, pad + 2 * line), "List the ids to leave out in a text file, one per line, and pass it as "
              "--exclude FILE.", fill=(60, 60, 60), font=body)
    for k, e in enumerate(entries):
        x0, y0 = (k % columns) * cell_w + pad, header + (k // columns) * cell_h + pad
        draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], fill=BACKGROUND)
        if e.thumb is not None:
            h, w = e.thumb.shape[:2]
            sheet.paste(Image.fromarray(e.thumb), (x0 + (thumb - w) // 2, y0 + (thumb - h) // 2))
        else:
            draw.text((x0 + 8, y0 + thumb // 2 - 6), e.note, fill=(150, 0, 0), font=body)
        ty = y0 + thumb + 4
        size = f"  {e.size[0]}x{e.size[1]} px" if e.size else ""
        score = f"  s={e.score:.3f}" if isinstance(e.score, (int, float)) else ""
        score += f"  typ={e.typicality:.2f}" if isinstance(e.typicality, (int, float)) else ""
        draw.text((x0, ty), f"#{e.number}  {e.panel}  {e.source}{size}{score}", fill="black", font=body)
        draw.text((x0, ty + line), e.id, fill=(0, 0, 120), font=small)
        text = (f"[{e.letter}] {e.own_part}  ||  {e.caption}" if e.own_part else e.caption)
        for i, ln in enumerate(_wrap(text, small, thumb, text_lines - 2)):
            draw.text((x0, ty + (i + 2) * line - 2), ln, fill=(40, 40, 40), font=small)
    return sheet


# ---------------------------------------------------------------------- HTML


def _highlight(text: str, terms: Sequence[str]) -> str:
    """HTML-escaped ``text`` with case-insensitive occurrences of ``terms`` in ``<mark>``."""
    escaped = html.escape(text)
    terms = sorted({html.escape(t) for t in terms if t.strip()}, key=len, reverse=True)
    if not terms:
        return escaped
    pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
    return pattern.sub(lambda m: f"<mark>{m.group(0)}</mark>", escaped)


def _data_uri(thumb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(thumb).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{width:260px;border:1px solid #ccc;border-radius:6px;padding:8px;margin:0}
.card.excluded{opacity:.45;border-color:#b00}
.thumb{width:244px;height:244px;background:#ececec;display:flex;align-items:center;justify-content:center}
.thumb img{max-width:244px;max-height:244px}
code{font-size:11px;word-break:break-all;color:#004}
.own{margin:.3em 0;font-size:13px}.caption{margin:.3em 0;font-size:12px;color:#555}
.note{color:#b00}mark{background:#ffe066}textarea{width:100%;height:6em;font-family:monospace}
"""

_SCRIPT = """
function collect(){const ids=[...document.querySelectorAll('input.ex:checked')].map(c=>c.value);
document.getElementById('ids').value=ids.join('\\n')+(ids.length?'\\n':'');
document.querySelectorAll('.card').forEach(c=>c.classList.toggle('excluded',c.querySelector('input.ex').checked));}
function save(){const b=new Blob([document.getElementById('ids').value],{type:'text/plain'});
const a=document.createElement('a');a.href=URL.createObjectURL(b);a.download='exclude.txt';a.click();}
"""


def _html(entries: list[_Entry], title: str) -> str:
    cards = []
    for e in entries:
        img = (f'<img src="{_data_uri(e.thumb)}" alt="{html.escape(e.id)}">' if e.thumb is not None
               else f'<span class="note">{html.escape(e.note)}</span>')
        size = f" · {e.size[0]}×{e.size[1]} px" if e.size else ""
        score = f" · score {e.score:.3f}" if isinstance(e.score, (int, float)) else ""
        score += f" · typicality {e.typicality:.2f}" if isinstance(e.typicality, (int, float)) else ""
        own = (f'<p class="own"><b>Panel {html.escape(e.letter)}:</b> {_highlight(e.own_part, e.matched)}</p>'
               if e.own_part else "")
        cards.append(
            f'<figure class="card" id="hit-{e.number}"><div class="thumb">{img}</div><figcaption>'
            f'<label><input type="checkbox" class="ex" value="{html.escape(e.id)}" onchange="collect()">'
            ' exclude</label>'
            f' <b>#{e.number}</b> · {html.escape(e.panel)} · {html.escape(e.source)}{size}{score}<br>'
            f'<code>{html.escape(e.id)}</code>{own}'
            f'<p class="caption">{_highlight(e.caption, e.matched)}</p></figcaption></figure>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>'
            f'<h1>{html.escape(title)}</h1>'
            '<p>Tick the hits that are not typical images of the class. The ticked ids collect below: save them '
            'as a text file (one id per line) and pass it as <code>--exclude FILE</code>.</p>'
            '<textarea id="ids" readonly></textarea><p><button onclick="save()">download exclude.txt</button></p>'
            f'<div class="grid">{"".join(cards)}</div></body></html>\n')


def with_typicality(hits: Sequence[Mapping], db: CaptionDB, encoder, *, sort: bool = True,
                    cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> list[dict]:
    """``hits`` with a ``typicality`` each (hits without an image get none), least typical first if ``sort``."""
    # imported here: alkit.prototypes builds on alkit.captions, so a top-level import would be circular
    from alkit.captions.images import ImageEmbedder, ImagePrep
    from alkit.prototypes.prototype_set import typicality

    hits = [dict(h) for h in hits]
    known = set(db.ids)
    usable = [i for i, h in enumerate(hits) if str(h["id"]) in known and db.has_image[db.positions([h["id"]])[0]]]
    if len(usable) >= 2:
        embedder = ImageEmbedder(encoder, ImagePrep(), cache_dir=cache_dir, use_cache=use_cache)
        scores = typicality(embedder.embed(db, [str(hits[i]["id"]) for i in usable]))
        for i, t in zip(usable, scores):
            hits[i]["typicality"] = round(float(t), 4)
    if sort:
        hits.sort(key=lambda h: h.get("typicality", float("inf")))
    return hits
