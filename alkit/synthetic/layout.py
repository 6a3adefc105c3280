"""The layout of one slide or caption image: the low-resolution plan fields and the figures on it.

:func:`alkit.synthetic.plan.make_layout` fills a :class:`Layout`; :class:`alkit.synthetic.render.Renderer`
draws it and :mod:`alkit.synthetic.cohort` writes its ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from alkit.synthetic.stains import V_E, V_H

# Figure classes, as named in the SlideRunner database.
MITOSIS_CLASS = "Mitotic figure"
LOOKALIKE_CLASS = "Mitotic figure lookalike"


@dataclass
class Figure:
    """A mitotic figure or lookalike (``deleted`` ones are only in the database, never drawn)."""

    x: float
    y: float
    cls: str
    deleted: bool
    in_tumour: bool
    sprite: int


@dataclass
class Layout:
    """Plan fields (``ph x pw``, one plan pixel = ``f`` level-0 px), tumour polygons, figures and
    stain colours of one slide or caption image."""

    width: int
    height: int
    mpp: float
    f: int                                   # level-0 px per plan px
    tissue_bin: np.ndarray                   # plan, bool
    tissue: np.ndarray                       # plan, smoothed; the tissue mask is tissue > 0.5
    key: int                                 # noise key
    lymph: np.ndarray | None = None
    fold: np.ndarray | None = None
    pen: np.ndarray | None = None            # (3, ph, pw) ink optical density
    bubble_rim: np.ndarray | None = None
    bubble_in: np.ndarray | None = None
    blur: np.ndarray | None = None
    blur_sigma_px: float = 0.0
    tumour_polys: list[np.ndarray] = field(default_factory=list)   # level-0 (k, 2) x, y
    tumour_geom: object | None = None
    figures: list[Figure] = field(default_factory=list)
    v_h: np.ndarray = field(default_factory=lambda: V_H.copy())
    v_e: np.ndarray = field(default_factory=lambda: V_E.copy())
    ihc: str | None = None                   # None, "membrane" or "nuclear"
    distractors: dict[str, int] = field(default_factory=dict)
    tissue_dist: np.ndarray | None = None    # plan, distance to the tissue edge (planning only)

    @property
    def plan_shape(self) -> tuple[int, int]:
        return self.tissue.shape  # type: ignore[return-value]

    def um_to_plan(self, um: float) -> float:
        return um / (self.f * self.mpp)
