"""The one box type: a level-0 pixel box ``(x, y, w, h)``, half-open, x = column.

Strategies produce integer boxes; reads and oracles accept fractional ones (a cell of a 0.499 µm/px
slide is not a whole number of pixels), so the type is float and ints are welcome.
"""

from __future__ import annotations

Box = tuple[float, float, float, float]
