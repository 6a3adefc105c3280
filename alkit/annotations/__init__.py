"""Readers and writers of annotation formats (ASAP XML, SlideRunner SQLite, NCRF JSON, QuPath GeoJSON,
COCO JSON, mask images), and the geometry rules that turn annotated polygons into areas
(:mod:`alkit.annotations.geometry`)."""

from alkit.errors import AlkitError


class AnnotationFileError(AlkitError, ValueError):
    """An annotation file that cannot be read as its format: the message names the file and the problem.

    Every reader (ASAP, SlideRunner, NCRF, QuPath, COCO, mask images) raises it; it is a ``ValueError``
    as well, so code that catches ``ValueError`` keeps working.
    """
