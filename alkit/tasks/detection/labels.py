"""What annotation class names mean for mitosis detection: a mitotic figure, a hard negative, or neither.

Datasets name their classes freely ("Mitotic figure", "mitotic figure lookalike", "not mitotic
figure", "Granulocyte", ...); :func:`mitosis_label` maps a name to :data:`MITOSIS`,
:data:`HARD_NEGATIVE` or ``None`` by the words it contains, and an explicit ``classes`` table
overrides the rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from alkit.al.oracle import OracleError

__all__ = ["MITOSIS", "HARD_NEGATIVE", "MitosisLabel", "mitosis_label", "check_classes"]

MITOSIS: Literal["mitosis"] = "mitosis"
HARD_NEGATIVE: Literal["hard_negative"] = "hard_negative"
MitosisLabel = Literal["mitosis", "hard_negative"]

#: Words (after case folding, ``_`` / ``-`` as spaces) that make a class name a hard negative; checked first.
HARD_NEGATIVE_WORDS: tuple[str, ...] = (
    "lookalike", "look alike", "hard negative", "impostor", "imposter", "mimic",
    "non mitotic", "nonmitotic", "not mitotic", "non mitosis", "not mitosis", "no mitosis")
#: Words that make a class name a mitosis (when no hard-negative word matched).
MITOSIS_WORDS: tuple[str, ...] = ("mitotic figure", "mitosis", "mitoses", "mitotic")


def _norm(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name.casefold()).split())


def mitosis_label(name: str | None, classes: Mapping[str, str | None] | None = None) -> MitosisLabel | None:
    """What a class name means for mitosis detection: ``"mitosis"``, ``"hard_negative"`` or ``None``.

    ``classes`` maps exact names (case-insensitive) to a label or ``None`` (ignore) and wins;
    other names follow the rules: hard negative if the name says lookalike / hard negative /
    impostor / mimic / non- or not mitotic ("Mitotic figure lookalike", "not mitotic figure"),
    else mitosis if it says mitotic figure / mitosis / mitotic ("Mitotic figure", "Mitosis"),
    else ``None``.
    """
    if name is None:
        return None
    if classes:
        table = {k.casefold(): v for k, v in classes.items()}
        if name.casefold() in table:
            return table[name.casefold()]  # type: ignore[return-value]
    n = _norm(name)
    if any(w in n for w in HARD_NEGATIVE_WORDS):
        return HARD_NEGATIVE
    if any(w in n for w in MITOSIS_WORDS):
        return MITOSIS
    return None


def check_classes(classes: Mapping[str, str | None] | None) -> None:
    """Raise :class:`~alkit.al.oracle.OracleError` unless every class maps to "mitosis", "hard_negative" or None."""
    for k, v in (classes or {}).items():
        if v not in (MITOSIS, HARD_NEGATIVE, None):
            raise OracleError(f"class {k!r} maps to {v!r}; use 'mitosis', 'hard_negative' or None")
