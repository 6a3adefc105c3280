"""The error of the encoder registry, in a module without heavy imports (the card table raises it torch-free)."""

from __future__ import annotations

from alkit.errors import AlkitError


class EncoderError(AlkitError, ValueError):
    """A bad encoder spec, a missing file or an incompatible checkpoint; the message says which and why."""
