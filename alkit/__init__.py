"""alkit: choose the regions of whole slide images a pathologist should annotate."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
