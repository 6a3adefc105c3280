"""Stain colours: optical density (log10) per unit concentration of each stain, for Beer-Lambert mixing.

:class:`~alkit.synthetic.layout.Layout` starts from :data:`V_H` / :data:`V_E` (each slide varies them a
little, :mod:`alkit.synthetic.plan`), pen strokes use :data:`INKS` (:mod:`alkit.synthetic.distractors`)
and :mod:`alkit.synthetic.render` turns the summed densities into RGB.
"""

import numpy as np

# Optical density (log10) per unit stain concentration, tuned by eye for H&E-like colour.
V_H = np.array([0.58, 0.68, 0.26], np.float32)   # hematoxylin: blue-purple
V_E = np.array([0.09, 0.72, 0.31], np.float32)   # eosin: pink
V_DAB = np.array([0.27, 0.57, 0.78], np.float32)  # DAB: brown (IHC)
V_BG = np.array([0.030, 0.032, 0.026], np.float32)
INKS = {  # pen ink OD per unit concentration
    "green": np.array([0.70, 0.26, 0.52], np.float32),
    "blue": np.array([0.72, 0.50, 0.16], np.float32),
    "black": np.array([0.85, 0.85, 0.78], np.float32),
}
