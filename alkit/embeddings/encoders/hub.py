"""Where an encoder's weights come from: a local path or the Hugging Face hub cache (torch-free, fast).

Every hub-backed encoder resolves its files here before anything heavy is imported, so a machine
without network and without the files fails in one line within a second, naming the repository, the
cache folder it looked in and how to provide the weights. The cache folder is read at call time:
``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``. With ``HF_HUB_OFFLINE=1``
only the cache is consulted; otherwise missing files are downloaded once (gated repositories need
``hf auth login`` and the licence accepted on the model's page).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from alkit.embeddings.encoders.error import EncoderError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HubFiles:
    """Resolved weight files: ``paths`` (one per requested file), the repository and snapshot revision."""

    repo: str
    paths: tuple[Path, ...]
    revision: str | None

    @property
    def folder(self) -> Path:
        """The snapshot folder holding the files (the first file's parent)."""
        return self.paths[0].parent

    @property
    def weights_id(self) -> str:
        return f"hf:{self.repo}" + (f"@{self.revision[:12]}" if self.revision else "")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder the current environment points at."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def how_to_provide(repo: str, gated: bool | None, local: str) -> str:
    """How a user gets the weights: hub access (log in, accept the licence) or a local path."""
    url = f"https://huggingface.co/{repo}"
    if gated:
        online = f"log in (hf auth login) and accept the licence at {url}, then run once online"
    elif gated is None:
        online = f"run once online to download {url} (if it is gated: hf auth login and accept its licence first)"
    else:
        online = f"run once online to download {url}"
    return f"{online}; or pass local weights as {local}"


def resolve_hub_files(repo: str, files: tuple[str, ...], *, spec_name: str, gated: bool | None = None,
                      local_hint: str | None = None) -> HubFiles:
    """Local paths of ``files`` of hub repository ``repo`` (each entry may list alternatives as ``a|b``,
    taken in order): from the cache, else downloaded unless offline; else one-line :class:`EncoderError`."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    local_hint = local_hint or f"{spec_name}@/path/to/weights.safetensors"
    found: list[Path | None] = []
    for entry in files:
        hit = None
        for name in entry.split("|"):
            path = try_to_load_from_cache(repo, name, cache_dir=str(cache))
            if isinstance(path, str) and Path(path).is_file():
                hit = Path(path)
                break
        found.append(hit)
    missing = [entry for entry, hit in zip(files, found) if hit is None]
    if missing and not hub_offline():
        found = [hit or _download(repo, entry, cache, spec_name, gated, local_hint) for entry, hit in zip(files, found)]
        missing = []
    if missing:
        looked = ", ".join(m.replace("|", " or ") for m in missing)
        raise EncoderError(f"encoder {spec_name!r}: {looked} of {repo} not found in the Hugging Face cache {cache} "
                           f"and HF_HUB_OFFLINE=1 forbids downloading; {how_to_provide(repo, gated, local_hint)} "
                           "(HF_HUB_CACHE / HF_HOME choose the cache folder)")
    paths = tuple(p for p in found if p is not None)
    return HubFiles(repo, paths, _snapshot_revision(paths[0]))


def _download(repo: str, entry: str, cache: Path, spec_name: str, gated: bool | None, local_hint: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    names = entry.split("|")
    for name in names:
        try:
            return Path(hf_hub_download(repo, name, cache_dir=str(cache), etag_timeout=5))
        except EntryNotFoundError:
            continue
        except (GatedRepoError, RepositoryNotFoundError) as exc:
            raise EncoderError(f"encoder {spec_name!r}: no access to {repo} ({type(exc).__name__}); "
                               f"{how_to_provide(repo, True, local_hint)}") from None
        except Exception as exc:  # connection errors, proxies, disk full ...
            raise EncoderError(f"encoder {spec_name!r}: could not download {name} of {repo} into {cache} "
                               f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
                               f"{how_to_provide(repo, gated, local_hint)}") from None
    raise EncoderError(f"encoder {spec_name!r}: {repo} has none of {', '.join(names)}; "
                       f"pass local weights as {local_hint}")


def _snapshot_revision(path: Path) -> str | None:
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and i + 1 < len(parts) - 1:
            return parts[i + 1]
    return None


def local_weights(spec_name: str, weights: str, *, folder: bool = False) -> Path:
    """A user-given weights path (a file, or with ``folder=True`` a model folder) that must exist."""
    path = Path(weights).expanduser()
    if folder and path.is_file():
        path = path.parent
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        what = "model folder" if folder else "weights file"
        raise EncoderError(f"encoder '{spec_name}@{weights}': no such {what} {path}")
    return path


def check_encoder_weights(spec: str) -> None:
    """Fail fast, torch-free, when the weights a spec needs are neither local nor in the hub cache.

    Run by the CLI before any slide is opened or torch is imported; specs it cannot judge without the
    model's code (timm pretrained tags, plug-ins, local OpenCLIP checkpoints) pass and are checked when built.
    """
    from alkit.embeddings.encoders.cards import NOT_BUILT_IN, encoder_card, split_spec

    name, family_arg, weights = split_spec(spec)
    if family_arg is not None:
        if family_arg.startswith("hf-hub:") and name in ("timm", "open_clip"):
            files = (("config.json", "model.safetensors|pytorch_model.bin") if name == "timm" else
                     ("open_clip_config.json", "open_clip_model.safetensors|open_clip_pytorch_model.bin"))
            local = ("timm:ARCH@/path/to/weights.safetensors" if name == "timm"
                     else "open_clip:local-dir:/path/to/model_folder")
            resolve_hub_files(family_arg[len("hf-hub:"):], files, spec_name=spec.strip(), local_hint=local)
        return
    if name.lower() in NOT_BUILT_IN:
        raise EncoderError(f"encoder {spec.strip()!r}: {NOT_BUILT_IN[name.lower()]}")
    try:
        card = encoder_card(spec)
    except EncoderError:
        return  # maybe a plug-in: the registry reports unknown names
    if card.family == "builtin" or card.hub_repo is None:
        return
    if card.family == "conch":
        import importlib.util
        if importlib.util.find_spec("conch") is None:
            raise EncoderError(f"encoder {spec.strip()!r} needs the CONCH package: "
                               "pip install git+https://github.com/Mahmoodlab/CONCH.git")
    if weights:
        if card.name != "plip":
            local_weights(card.name, weights, folder=card.family in ("transformers", "open_clip"))
        return
    files = card.weight_files or ("config.json", "model.safetensors|pytorch_model.bin")
    resolve_hub_files(card.hub_repo, files, spec_name=card.name, gated=card.gated, local_hint=local_hint(card))


def local_hint(card) -> str:
    """``NAME@/path/...`` as the card's family takes local weights (a file, or a model folder)."""
    if card.family in ("transformers", "open_clip"):
        return f"{card.name}@/path/to/model_folder"
    return f"{card.name}@/path/to/{'pytorch_model.bin' if card.family == 'conch' else 'weights.safetensors'}"


def resolve_weights(card, weights: str | None) -> tuple[Path, str]:
    """``(path, weights_id)`` of a short name's weights: the local file / folder ``weights`` names (id: the
    first 16 hex digits of the sha256 of its weight files), else the card's files in the hub cache (a folder
    for transformers and OpenCLIP models, the weights file otherwise; id ``hf:REPO@REVISION``)."""
    from alkit.digests import files_sha256

    folder = card.family in ("transformers", "open_clip")
    if weights:
        path = local_weights(card.name, weights, folder=folder)
        files = sorted(list(path.glob("*.safetensors")) or list(path.glob("*.bin"))) if folder else [path]
        files = [f for f in files if not f.name.startswith(".")]
        return path, files_sha256(*files)[:16] if files else f"dir:{path.resolve()}"
    files = resolve_hub_files(card.hub_repo, card.weight_files, spec_name=card.name, gated=card.gated,
                              local_hint=local_hint(card))
    return (files.folder if folder else files.paths[-1]), files.weights_id


def weights_identity(spec: str) -> str | None:
    """The ``weights_id`` ``get_encoder(spec)`` reports for a hub-backed short name (``uni``,
    ``virchow2@/w.safetensors`` …), torch-free and without building the model; ``None`` for other specs.
    Raises :class:`EncoderError` when the weights are not there (as building would)."""
    from alkit.embeddings.encoders.cards import encoder_card, split_spec

    name, family_arg, weights = split_spec(spec)
    if family_arg is not None:
        return None
    try:
        card = encoder_card(spec)
    except EncoderError:
        return None
    if card.family not in ("timm", "transformers", "open_clip", "conch") or not card.hub_repo or card.name == "plip":
        return None
    return resolve_weights(card, weights)[1]
