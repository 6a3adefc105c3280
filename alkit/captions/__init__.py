"""Histopathology image-caption databases (ARCH, OpenPath, own tables) and how typical images of a
class are found in them: keyword search (:mod:`~alkit.captions.search`), text-to-image retrieval
(:mod:`~alkit.captions.retrieval`), and contact sheets for the manual clean-up (:mod:`~alkit.captions.review`).

The found images become prototypes through :func:`alkit.prototypes.build.build_prototype_set`. Torch is imported
only when images are embedded (``ImagePrep`` / ``ImageEmbedder`` load lazily), so keyword search
stays quick to start.
"""

from alkit.captions.database import (CaptionDB, CaptionDBError, LoadReport, load_arch, load_arch_set,
                                     load_openpath, load_table, open_database, parse_columns)
from alkit.captions.panels import panel_text, split_panels
from alkit.captions.search import (KeywordQuery, NoHitsError, SearchResult, Step, read_hits, read_id_list, search,
                                   write_hits)

_LAZY = {"ImageEmbedder": "alkit.captions.images", "ImagePrep": "alkit.captions.images"}

__all__ = ["CaptionDB", "CaptionDBError", "ImageEmbedder", "ImagePrep", "KeywordQuery", "LoadReport", "NoHitsError",
           "SearchResult", "Step", "load_arch", "load_arch_set", "load_openpath", "load_table", "open_database",
           "panel_text", "parse_columns", "read_hits", "read_id_list", "search", "split_panels", "write_hits"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
