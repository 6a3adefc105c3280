"""Readers and writers of annotation formats (ASAP XML, SlideRunner SQLite, NCRF JSON, QuPath GeoJSON, ...)."""

from alkit.errors import AlkitError


class AnnotationFileError(AlkitError, ValueError):
    """An annotation file that cannot be read as its format: the message names the file and the problem.

    Every reader (ASAP, SlideRunner, NCRF, QuPath) raises it; it is a ``ValueError`` as well, so code
    that catches ``ValueError`` keeps working.
    """
