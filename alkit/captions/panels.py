"""The part of a multi-panel figure caption that describes one panel.

In ARCH's books set one caption often describes several panels ("A, Lymph node with metastatic
carcinoma. B, Normal breast ...") and each image entry says which panel it is (``letter``). Keyword
search should look at the panel's own words where the caption lets us tell them apart, so that
panel B above is not found by "carcinoma". :func:`panel_text` applies these rules, in order:

1. **Leading labels.** A label opens a part of the caption when it stands at the start of the
   caption or right after ``.``, ``;``, ``:``, ``!`` or ``?``, written ``A,`` ``A.`` ``A:`` ``A)``
   ``(A)`` or as a bare capital followed by a capitalised word (``A There is ...``; accepted only when
   the caption has other leading labels too, so that the article "A" in "A Spitz nevus" is not taken
   for a label). Lists and ranges name every letter they cover: ``A and B,`` ``A, B`` ``A-C,``
   ``(d–f)``. A part runs to the next leading label. Text before the first label (a title such as
   "Tubular carcinoma.") is shared by every panel. If a label covers the panel's letter, its text is
   the shared title plus its own parts, without the sentences in them that cite only other panels
   in parentheses ("... positive for MLH1 (B) ...").
2. **Citations.** Otherwise, if the caption cites the letter in parentheses (``(A)``, ``(b, arrow)``,
   ``(a and b)``, ``(arrows, b)``), the panel's text is every sentence that cites it or cites no panel at all;
   sentences that cite only other panels are left out.
3. **Otherwise** (single images, captions that never name the letter, the PubMed set): the whole
   caption.

Letters are matched case-insensitively; only A-L count as panel letters (ARCH's books set uses A-L),
which keeps "(T)" or "(p)" from being read as panels. The rules are heuristics: the contact sheet
(:mod:`alkit.captions.review`) shows the caption and the panel's part so that a person can check them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

LETTERS = "ABCDEFGHIJKL"
_L = r"(?<![A-Za-z0-9])[A-La-l](?![A-Za-z0-9])"
_SEP = r"(?:(?:\s*,\s*|\s+)(?:and|to|&)\s+|\s*[,&/]\s*|\s*[-–—]\s*)"
_GROUP = rf"{_L}(?:{_SEP}{_L})*"
# the three ways of writing a leading label; at a boundary the one naming most letters wins
_LEADING_FORMS = (
    re.compile(rf"\(\s*(?P<g>{_GROUP})\s*\)\s*"),             # (A) ...   (a, b) ...   (d–f)...
    re.compile(rf"(?P<g>{_GROUP})\s*[,.:)](?=\s|$)\s*"),        # A, ...  A. ...  A: ...  a) ...
    re.compile(rf"(?P<g>{_GROUP})\s+(?=[A-Z“\"(])"),            # A There is ...  (bare)
)
# a citation in parentheses, the letters first or last: (A), (b, arrow), (a and b), (arrow, a)
_CITATION = re.compile(rf"\(\s*(?P<g>{_GROUP})\s*(?:[,;:][^()]*)?\)|\([^()]*[,;:]\s*(?P<t>{_GROUP})\s*\)")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"”’)]))\s+(?=[A-Z0-9(“\"])")
_BOUNDARY = re.compile(r"[.;:!?][\"”’)]?\s*")
_LETTER_RE = re.compile(_L)


def _letters(group: str) -> frozenset[str]:
    """``"A and B"`` -> {A, B}; ``"d–f"`` -> {D, E, F}; case-folded to capitals."""
    found = _LETTER_RE.findall(group)
    seps = _LETTER_RE.split(group)[1:-1]
    out: set[str] = set()
    for i, letter in enumerate(found):
        out.add(letter.upper())
        if i > 0 and re.search(r"[-–—]|\bto\b", seps[i - 1]):  # a range: fill in the letters between
            lo, hi = sorted((LETTERS.index(found[i - 1].upper()), LETTERS.index(letter.upper())))
            out.update(LETTERS[lo:hi + 1])
    return frozenset(out)


@dataclass(frozen=True)
class Part:
    """A stretch of caption text and the panel letters it belongs to (empty = shared)."""

    text: str
    letters: frozenset[str]


@dataclass(frozen=True)
class PanelParse:
    """A caption cut at its leading panel labels: ``parts[0]`` is the shared title (may be empty)."""

    caption: str
    parts: tuple[Part, ...]

    @property
    def labelled(self) -> frozenset[str]:
        """Letters that some leading label names."""
        return frozenset().union(*(p.letters for p in self.parts))


def _leading_label(caption: str, pos: int) -> tuple[int, frozenset[str], bool] | None:
    """The leading label starting at ``pos`` (end, letters, bare?) or ``None``."""
    best = None
    for form, regex in enumerate(_LEADING_FORMS):
        m = regex.match(caption, pos)
        if m is not None:
            letters = _letters(m.group("g"))
            if best is None or len(letters) > len(best[1]):
                best = (m.end(), letters, form == 2)
    if best is not None and best[2] and not caption[pos].isupper():
        return None  # a bare lower-case letter is the article "a", not a label
    return best


@lru_cache(maxsize=8192)
def split_panels(caption: str) -> PanelParse:
    """Cut ``caption`` at its leading panel labels (rule 1 of the module docstring)."""
    lead = len(caption) - len(caption.lstrip(" \t\n.;:"))
    boundaries = [lead] + [m.end() for m in _BOUNDARY.finditer(caption, lead)]
    starts = []
    for pos in boundaries:
        if pos < len(caption):
            found = _leading_label(caption, pos)
            if found is not None:
                starts.append((pos, found[1], found[2]))
    if len(frozenset().union(*(ls for _, ls, _ in starts))) < 2:
        starts = [s for s in starts if not s[2]]  # a lone bare capital is an article, not a label
    if not starts:
        return PanelParse(caption, (Part(caption, frozenset()),))
    parts = [Part(caption[:starts[0][0]], frozenset())]
    for i, (start, letters, _) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(caption)
        parts.append(Part(caption[start:end], letters))
    return PanelParse(caption, tuple(parts))


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def cited_letters(sentence: str) -> frozenset[str]:
    """Panel letters cited in parentheses in ``sentence``."""
    return frozenset().union(*(_letters(m.group("g") or m.group("t")) for m in _CITATION.finditer(sentence)))


def panel_text(caption: str, letter: str | None) -> str:
    """The part of ``caption`` that describes panel ``letter`` (see the module docstring), stripped.

    ``letter`` ``None``, ``""`` or ``"Single"`` (ARCH's value for one-panel figures), or anything that
    is not one of A-L, gives the whole caption.
    """
    if not caption or not letter or len(letter.strip()) != 1 or letter.strip().upper() not in LETTERS:
        return caption.strip()
    x = letter.strip().upper()
    parse = split_panels(caption)
    if x in parse.labelled:
        own = [parse.parts[0].text] + [p.text for p in parse.parts[1:] if x in p.letters]
        kept = []
        for chunk in own:
            sentences = _sentences(chunk)
            keep = [s for s in sentences if not (cited_letters(s) and x not in cited_letters(s))]
            kept.append(" ".join(keep) if len(keep) != len(sentences) else chunk)
        text = " ".join(k.strip() for k in kept if k.strip())
        return text or caption.strip()
    sentences = _sentences(caption)
    cites = [cited_letters(s) | _leading_of(s) for s in sentences]
    if any(x in c for c in cites):
        return " ".join(s.strip() for s, c in zip(sentences, cites) if not c or x in c)
    return caption.strip()


def _leading_of(sentence: str) -> frozenset[str]:
    """Letters of a leading label at the very start of ``sentence`` (so "B, ..." cites B)."""
    text = sentence.lstrip(" .;:")
    found = _leading_label(text, 0) if text else None
    return frozenset() if found is None or found[2] else found[1]
