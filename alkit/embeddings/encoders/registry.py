"""Encoders by name: ``get_encoder("resnet18@imagenet")`` builds one from a spec string.

Spec grammar: ``NAME[@WEIGHTS]``; families of architectures take ``NAME:ARG`` where ``ARG`` is handed
to the factory whole (``open_clip:ViT-B-32@laion2b_s34b_b79k``, ``open_clip:hf-hub:org/name``).
Factories register with :func:`register_encoder`; third-party packages can add theirs through the
``alkit.embeddings.encoders`` entry-point group (the entry point's name is the encoder name, its value the factory).
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from alkit.embeddings.encoders.error import EncoderError

if TYPE_CHECKING:
    import torch

    from alkit.embeddings.encoders.base import Encoder

log = logging.getLogger(__name__)

Factory = Callable[[str | None], "Encoder"]
#: modules whose import registers the built-in factories (imported on first use: they import torch)
BUILTIN_MODULES = ("handcrafted", "openclip", "plip", "resnet", "timm_family", "foundation")
ENTRY_POINT_GROUP = "alkit.encoders"

_FACTORIES: dict[str, Factory] = {}
_FAMILIES: set[str] = set()  # names whose spec is NAME:ARG
_plugins_loaded = False
_builtins_loaded = False


def register_encoder(name: str, *, family: bool = False) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(weights: str | None) -> Encoder`` under ``name``.

    With ``family=True`` the spec is ``name:ARG`` and the factory receives ``ARG`` (which may hold its
    own ``@WEIGHTS``); otherwise the spec is ``name[@WEIGHTS]`` and the factory receives ``WEIGHTS``.
    """
    if not name or any(c in name for c in "@: "):
        raise ValueError(f"encoder name {name!r} must be non-empty without '@', ':' or spaces")

    def decorator(factory: Factory) -> Factory:
        known = _FACTORIES.get(name)
        same = known is None or _identity(known) == _identity(factory)  # a re-imported module is fine
        if not same:
            raise ValueError(f"encoder name {name!r} is already registered by {known!r}")
        _FACTORIES[name] = factory
        if family:
            _FAMILIES.add(name)
        return factory

    return decorator


def _identity(factory: Factory) -> tuple[str | None, str | None]:
    return getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(f"alkit.embeddings.encoders.{module}")


def _load_plugins() -> None:
    global _plugins_loaded
    _load_builtins()
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _FACTORIES:
            continue
        try:
            _FACTORIES[ep.name] = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-in encoders
            log.warning("could not load encoder plugin %r (%s): %s", ep.name, ep.value, exc)


def available_encoders() -> list[str]:
    """Registered encoder names (families shown as ``NAME:``)."""
    _load_plugins()
    return sorted(f"{n}:" if n in _FAMILIES else n for n in _FACTORIES)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``"resnet18@/m/x.ckpt"`` -> ``("resnet18", "/m/x.ckpt")``; ``"open_clip:ViT-B-32@openai"`` ->
    ``("open_clip", "ViT-B-32@openai")``; ``"handcrafted"`` -> ``("handcrafted", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise EncoderError(f"encoder spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    cut = min((i for i in (spec.find("@"), spec.find(":")) if i >= 0), default=-1)
    if cut < 0:
        return spec, None
    name, sep, arg = spec[:cut], spec[cut], spec[cut + 1:]
    _load_plugins()
    if name in _FAMILIES and sep != ":":
        raise EncoderError(f"encoder spec {spec!r}: {name} needs an architecture, as {name}:ARCH[@WEIGHTS]")
    if name in _FACTORIES and name not in _FAMILIES and sep != "@":
        raise EncoderError(f"encoder spec {spec!r}: write {name}@WEIGHTS ('@', not ':')")
    if not arg:
        raise EncoderError(f"encoder spec {spec!r}: nothing after {sep!r}")
    return name, arg


def get_encoder(spec: str, device: str | torch.device = "cpu") -> Encoder:
    """Build the encoder a spec names, on ``device``, in eval mode.

    Hub weights that are neither cached nor downloadable fail first, in one line, before torch-heavy
    modules are imported (:func:`alkit.embeddings.encoders.hub.check_encoder_weights`).
    """
    from alkit.embeddings.encoders.hub import check_encoder_weights

    check_encoder_weights(spec)
    name, arg = parse_spec(spec)
    _load_plugins()
    factory = _FACTORIES.get(name)
    if factory is None:
        from alkit.embeddings.encoders.cards import NOT_BUILT_IN
        if name.lower() in NOT_BUILT_IN:
            raise EncoderError(f"encoder {spec!r}: {NOT_BUILT_IN[name.lower()]}")
        close = difflib.get_close_matches(name, list(_FACTORIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EncoderError(f"unknown encoder {spec!r}{hint}; available encoders: {', '.join(available_encoders())}")
    if name in _FAMILIES and arg is None:
        raise EncoderError(f"encoder spec {spec!r}: {name} needs an architecture, as {name}:ARCH[@WEIGHTS]")
    try:
        encoder = factory(arg)
    except EncoderError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, ImportError) as exc:
        raise EncoderError(f"could not build encoder {spec!r}: {exc}") from exc
    encoder.name = spec.strip()
    return encoder.to(device).eval()
