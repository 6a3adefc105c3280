"""Readers and writers of annotation formats (ASAP XML, SlideRunner SQLite, NCRF JSON, QuPath GeoJSON, ...)."""

from alkit.errors import AlkitError


class AnnotationFileError(AlkitError, ValueError):
    """An annotation file that cannot be read as its format: the message names the file and the problem.

    A ``ValueError`` as well, so callers of the older readers (which raise ``ValueError``) catch it too.
    """
