"""A seeded synthetic cohort: H&E-like pyramidal TIFF slides with ground truth and a caption database.

:func:`generate_cohort` writes, under ``out``::

    slides/synth_000.tif ...        tiled pyramidal TIFFs (JPEG tiles, mpp in the resolution tags;
                                    OpenSlide opens them as ``generic-tiff``)
    annotations/synth_000.xml ...   tumour polygons as CAMELYON16-style ASAP XML (group ``_0``)
    annotations/mitoses.sqlite      mitotic figures and lookalikes, one SlideRunner database
    masks/synth_000_tissue.png ...  the generator's tissue mask at the planning resolution
    captions/captions.json          an ARCH-like caption database (books-set layout) ...
    captions/images/<uuid>.png      ... with its images
    captions/truth.json             the true kind of every caption image (not part of ARCH); for
                                    mitosis close-ups also ``figures``: [x, y] image px of each figure
    cohort.json                     the manifest (:class:`SyntheticCohort`)

How a slide is made. A low-resolution *plan* (one plan pixel is ``f`` level-0 pixels, about
1 µm, at most ~1024 plan pixels across) decides where things are: irregular tissue pieces
(thresholded smooth noise), lymphoid patches, tumour regions (polygons grown from a few foci inside
the tissue until they cover the drawn fraction of it), distractors kept off the tumour (pen strokes,
folds, air bubbles, out-of-focus patches) and mitotic figures / lookalikes (points, kept away from
the distractors). Pixels are then rendered window by window, each window a pure function of its
level-0 coordinates: plan fields are upsampled bilinearly, the tumour polygons are rasterised, stroma
texture is value noise hashed from global lattice coordinates, and nuclei sit on jittered global
lattices whose points are accepted, typed and given a pre-rendered sprite by hashes of their lattice
indices. So tiles are independent, seamless and deterministic, and the slide streams to disk tile
by tile (reduced levels go through a disk-backed buffer): memory does not grow with the slide.
Colour is Beer-Lambert mixing of hematoxylin, eosin (and, for IHC caption images, DAB) densities.

Everything random descends from ``seed`` (numpy ``Generator`` streams keyed by slide, plus a counter
hash for pixels). The same arguments give the same ground truth and, on the same machine and
library versions, byte-identical files.

Where the parts live:

- :mod:`alkit.synthetic.cohort`: :func:`generate_cohort`, the manifest (:class:`SyntheticCohort`,
  :class:`SyntheticSlide`) and :class:`SyntheticError`
- :mod:`alkit.synthetic.plan`: the low-resolution plan of a slide (tissue, lymphoid patches, tumour),
  with :mod:`alkit.synthetic.distractors` and :mod:`alkit.synthetic.figures` (mitotic figures and
  lookalikes); the result is a :class:`~alkit.synthetic.layout.Layout`
- :mod:`alkit.synthetic.render`: tile rendering, from :mod:`alkit.synthetic.noise` (hashing, value noise,
  plan-field resampling), :mod:`alkit.synthetic.sprites` (nucleus sprites) and
  :mod:`alkit.synthetic.stains` (stain colours)
- :mod:`alkit.synthetic.tiff`: the streaming pyramidal TIFF writer
- :mod:`alkit.synthetic.captions`: the ARCH-style caption database
"""

from alkit.synthetic.captions import CAPTION_KINDS
from alkit.synthetic.cohort import SyntheticCohort, SyntheticError, SyntheticSlide, generate_cohort
from alkit.synthetic.layout import LOOKALIKE_CLASS, MITOSIS_CLASS

__all__ = ["generate_cohort", "SyntheticCohort", "SyntheticError", "SyntheticSlide", "MITOSIS_CLASS",
           "LOOKALIKE_CLASS", "CAPTION_KINDS"]
