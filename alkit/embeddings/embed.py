"""Embed every tissue patch of every slide: Lightning ``Trainer.predict`` writing cached stores.

The work is a plain LightningModule plus a prediction writer, so ``strategy="ddp"``,
``devices=N`` and ``num_nodes=M`` run unchanged on a cluster: Lightning shards the patches over
ranks, each batch carries its own ``(row, col)`` keys, every rank writes the embeddings it computed
to a shard file, and rank 0 merges the shards into the slide's store (deduplicating the padding that
distributed samplers add). With several nodes the output folder must be on a shared filesystem.

Patches are read by DataLoader workers, each with its own OpenSlide handle (a ``Slide`` is opened
lazily per process, never shared across a fork), as uint8 tensors; resizing to the network's input
and normalisation run on the accelerator in :meth:`Encoder.preprocess`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, TQDMProgressBar
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from alkit.atomic import remove_stale_temps
from alkit.embeddings.encoders import Encoder, get_encoder
from alkit.errors import AlkitError
from alkit.ids import safe_name
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide, SlideError
from alkit.embeddings.store import is_cached, read_attrs, StoreError, store_path, write_store
from alkit.wsi.tissue import detect_tissue

log = logging.getLogger(__name__)

#: bytes per pixel of a patch while it is embedded: the uint8 patch, its float32 copy and the normalised input
BYTES_PER_PATCH_PIXEL = 3 * (1 + 4 + 4)
#: bytes per grid cell while a slide's grid is set up (level-0 box, tissue fraction, cell index)
BYTES_PER_CELL = 64


class EmbedError(AlkitError, ValueError):
    """Embedding options that cannot work (out of range, or needing more memory than the machine has)."""


def memory_limit() -> int:
    """Bytes an embedding run may plan to use: 80 % of the machine's physical memory (16 GiB if unknown)."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GiB"


@dataclass(frozen=True)
class EmbedConfig:
    """What to embed and how to run it. ``mpp=None`` takes the encoder's own resolution."""

    encoder: str = "handcrafted"
    mpp: float | None = None
    patch: int = 256
    stride: int | None = None  # default: = patch
    min_tissue: float = 0.5  # cells with at least this tissue fraction are embedded
    batch_size: int = 64
    num_workers: int = 2
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str | None = None  # e.g. "bf16-mixed" on GPUs

    def __post_init__(self) -> None:
        def whole(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise EmbedError(f"embedding option {name} must be a whole number >= {lo}, got {v!r}")

        whole("patch", 1)
        whole("batch_size", 1)
        whole("num_workers", 0)
        whole("num_nodes", 1)
        if self.stride is not None:
            whole("stride", 1)
        if self.mpp is not None and not (isinstance(self.mpp, (int, float)) and not isinstance(self.mpp, bool)
                                         and math.isfinite(self.mpp) and self.mpp > 0):
            raise EmbedError(f"embedding option mpp must be a positive number of µm/px, got {self.mpp!r}")
        if not (isinstance(self.min_tissue, (int, float)) and 0 <= self.min_tissue <= 1):
            raise EmbedError(f"embedding option min_tissue must be a fraction in [0, 1], got {self.min_tissue!r}")

    def patch_memory(self) -> int:
        """Bytes the patches in flight need: a batch being embedded plus the batches DataLoader workers
        prefetch (two each)."""
        batches = 1 + 2 * self.num_workers
        return batches * self.batch_size * self.patch * self.patch * BYTES_PER_PATCH_PIXEL

    def check_memory(self, limit: int | None = None) -> None:
        """:class:`EmbedError` when :meth:`patch_memory` exceeds ``limit`` (default :func:`memory_limit`)."""
        limit = memory_limit() if limit is None else limit
        need = self.patch_memory()
        if need > limit:
            raise EmbedError(f"--patch {self.patch} with --batch-size {self.batch_size} and --workers "
                             f"{self.num_workers} needs about {_gib(need)} for patches in flight, more than the "
                             f"{_gib(limit)} this machine allows; use a smaller patch or batch size")


class PatchDataset(Dataset):
    """The patches of one slide at given level-0 boxes, read as uint8 ``(patch, patch, 3)`` tensors."""

    def __init__(self, slide_path: Path, slide_mpp: float | None, boxes: np.ndarray, cells: np.ndarray,
                 mpp: float, patch: int):
        self.slide_path, self.slide_mpp = Path(slide_path), slide_mpp
        self.boxes, self.cells = np.asarray(boxes, np.float64), np.asarray(cells, np.int64)
        self.mpp, self.patch = mpp, patch
        self._slide: Slide | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.cells)

    def _handle(self) -> Slide:
        if self._slide is None or self._pid != os.getpid():  # one handle per worker process
            self._slide, self._pid = Slide(self.slide_path, fallback_mpp=self.slide_mpp), os.getpid()
        return self._slide

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_slide": None, "_pid": None}

    def __getitem__(self, i: int) -> dict:
        image = self._handle().read(tuple(self.boxes[i]), mpp=self.mpp, size=(self.patch, self.patch))
        return {"image": torch.from_numpy(image), "row": int(self.cells[i, 0]), "col": int(self.cells[i, 1])}


class EmbeddingModule(pl.LightningModule):
    """Wraps an encoder for ``Trainer.predict``: uint8 patches in, float32 embeddings out."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder.eval()

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return {"features": self.encoder(batch["image"]).float(), "row": batch["row"], "col": batch["col"]}


class StoreWriter(BasePredictionWriter):
    """Collects each rank's embeddings into a shard; rank 0 merges the shards into the store."""

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        # (store path, attrs, tissue fractions) of the slide being embedded
        self.target: tuple[Path, dict, np.ndarray | None] | None = None
        self._parts: list[tuple[np.ndarray, np.ndarray]] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._parts = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        keys = torch.stack([prediction["row"], prediction["col"]], dim=1).cpu().numpy()
        self._parts.append((keys, prediction["features"].cpu().numpy()))

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.target is not None, "StoreWriter.target must be set before predict"
        path, attrs, tissue = self.target
        shard_dir = _shard_dir(path)
        shard_dir.mkdir(parents=True, exist_ok=True)
        dim = attrs["dim"]
        keys = np.concatenate([k for k, _ in self._parts]) if self._parts else np.zeros((0, 2), np.int64)
        feats = np.concatenate([f for _, f in self._parts]) if self._parts else np.zeros((0, dim), np.float32)
        np.savez(shard_dir / f"rank{trainer.global_rank:05d}.npz", keys=keys, features=feats)
        self._parts = []
        trainer.strategy.barrier("alkit-shards-written")
        if trainer.is_global_zero:
            _merge_shards(path, attrs, tissue, trainer.world_size)
        trainer.strategy.barrier("alkit-store-written")


def _shard_dir(path: Path) -> Path:
    return path.parent / f".{path.name}.shards"


def _merge_shards(path: Path, attrs: dict, tissue: np.ndarray | None, world_size: int) -> None:
    shard_dir = _shard_dir(path)
    # exactly this run's ranks: an interrupted run with more processes may have left other shards behind
    shards = [shard_dir / f"rank{r:05d}.npz" for r in range(world_size)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise RuntimeError(f"{path}: shard(s) {missing} of {world_size} ranks missing in {shard_dir}")
    keys, feats = [], []
    for shard in shards:
        with np.load(shard) as data:
            keys.append(data["keys"])
            feats.append(data["features"])
    keys_all, feats_all = np.concatenate(keys), np.concatenate(feats)
    # row-major order and no duplicates (distributed samplers pad with repeated samples)
    _, first = np.unique(keys_all[:, 0] * (1 << 32) + keys_all[:, 1], return_index=True)
    write_store(path, keys_all[first], feats_all[first], attrs, tissue)
    shutil.rmtree(shard_dir, ignore_errors=True)


def _is_global_zero() -> bool:
    """Rank 0 before and after Lightning launches its processes (env set by the launcher)."""
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


class Embedder:
    """Embeds slides with one encoder and one Trainer; a second run over the same slides is a cache hit."""

    def __init__(self, config: EmbedConfig, out_dir: str | os.PathLike, progress: bool = True):
        config.check_memory()
        self.config = config
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise EmbedError(f"{self.out_dir}: exists and is not a folder (the stores go into a folder)")
        self.progress = progress
        self.encoder = get_encoder(config.encoder)
        self.mpp = float(config.mpp or self.encoder.mpp)
        self.stride = int(config.stride or config.patch)
        self.writer = StoreWriter()
        self._trainer: pl.Trainer | None = None
        self.forward_passes = 0  # predict calls made (0 on a full cache hit)
        self.cache_hits = 0  # slides whose store was already complete

    @property
    def trainer(self) -> pl.Trainer:
        if self._trainer is None:  # built on first use: a full cache hit starts no processes
            c = self.config
            self._trainer = pl.Trainer(
                accelerator=c.accelerator, devices=c.devices, strategy=c.strategy, num_nodes=c.num_nodes,
                precision=c.precision, logger=False, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=self.progress, inference_mode=True,
                callbacks=[self.writer, *([TQDMProgressBar()] if self.progress else [])])
        return self._trainer

    def attrs_for(self, slide: Slide, grid: PatchGrid) -> dict:
        """Store attributes: everything that determines the embeddings, plus provenance."""
        return {
            "encoder": self.encoder.name, "weights_id": self.encoder.weights_id, "dim": self.encoder.dim,
            "mpp": self.mpp, "patch": self.config.patch, "stride": self.stride,
            "min_tissue": self.config.min_tissue, "slide": slide.name, "slide_path": str(slide.path),
            "slide_content_id": slide.content_id,
            "slide_dimensions": list(slide.dimensions), "slide_mpp": slide.mpp, "grid_shape": list(grid.shape),
        }

    def embed_slide(self, path: str | os.PathLike, slide_mpp: float | None = None) -> Path:
        """Embed one slide's tissue cells (or find them cached); returns the store path."""
        with Slide(path, fallback_mpp=slide_mpp) as slide:
            grid = PatchGrid.for_slide(slide, self.mpp, self.config.patch, self.stride)
            attrs = self.attrs_for(slide, grid)
            out = store_path(self.out_dir, slide.name, self.encoder.name, self.mpp, self.config.patch, self.stride)
            if is_cached(out, attrs):
                log.info("%s: cached in %s", path, out)
                self.cache_hits += 1
                if _is_global_zero() and _shard_dir(out).exists():  # killed after the store, before the clean-up
                    shutil.rmtree(_shard_dir(out), ignore_errors=True)
                return out
            if out.exists():
                try:
                    read_attrs(out)
                except StoreError as exc:
                    log.warning("%s: recomputing the store (%s)", path, exc)
            grid = grid.with_tissue(detect_tissue(slide))
        cells = grid.tissue_cells(self.config.min_tissue)
        if len(cells) == 0:
            log.warning("%s: no cell reaches %.0f%% tissue; writing an empty store", path,
                        100 * self.config.min_tissue)
            if _is_global_zero():
                write_store(out, cells, np.zeros((0, self.encoder.dim), np.float32), attrs, grid.tissue_fraction)
            return out
        self.predict_cells(path, slide_mpp, grid, cells, out, attrs)
        return out

    def predict_cells(self, path: str | os.PathLike, slide_mpp: float | None, grid: PatchGrid,
                      cells: np.ndarray, out: Path, attrs: dict) -> None:
        """Embed the given ``(row, col)`` cells of a slide with ``Trainer.predict`` and write the store ``out``."""
        dataset = PatchDataset(Path(path), slide_mpp, grid.cell_boxes(cells), cells, self.mpp, self.config.patch)
        loader = DataLoader(dataset, batch_size=self.config.batch_size, num_workers=self.config.num_workers,
                            pin_memory=torch.cuda.is_available(), persistent_workers=False, shuffle=False)
        self.writer.target = (out, attrs, grid.tissue_fraction)
        try:
            self.trainer.predict(EmbeddingModule(self.encoder), dataloaders=loader, return_predictions=False)
        except Exception as exc:  # a worker's read error arrives wrapped: surface the SlideError naming the slide
            cause = exc
            while cause.__cause__ is not None and not isinstance(cause, SlideError):
                cause = cause.__cause__
            if isinstance(cause, SlideError):
                raise cause from None
            raise
        self.forward_passes += 1

    def embed(self, paths: Sequence[str | os.PathLike], slide_mpp: float | None = None) -> list[Path]:
        """Embed a cohort slide by slide; finished slides are skipped, so an interrupted run resumes.

        ``slide_mpp`` is the level-0 resolution of slides whose files lack one; it never overrides metadata.
        """
        self.preflight(paths, slide_mpp)
        if _is_global_zero():  # what an interrupted run left: temporary store files of dead processes
            remove_stale_temps(self.out_dir, ".h5")
        bar = tqdm(paths, desc="slides", unit="slide", disable=not (self.progress and _is_global_zero()))
        stores = []
        for p in bar:
            bar.set_postfix_str(Path(p).name)
            stores.append(self.embed_slide(p, slide_mpp))
        return stores


    def preflight(self, paths: Sequence[str | os.PathLike], slide_mpp: float | None = None) -> None:
        """:func:`preflight`, plus each slide's grid checked against the memory it would take."""
        limit = memory_limit()

        def check(slide: Slide) -> None:
            grid = PatchGrid.for_slide(slide, self.mpp, self.config.patch, self.stride)
            cells = grid.shape[0] * grid.shape[1]
            if cells * BYTES_PER_CELL > limit:
                raise EmbedError(f"{slide.path}: a grid of {grid.shape[0]} x {grid.shape[1]} cells (--patch "
                                 f"{self.config.patch}, --stride {self.stride} at {self.mpp:g} µm/px) needs about "
                                 f"{_gib(cells * BYTES_PER_CELL)}, more than the {_gib(limit)} this machine "
                                 "allows; use a larger stride or patch")

        preflight(paths, slide_mpp, check=check)


def preflight(paths: Sequence[str | os.PathLike], slide_mpp: float | None = None,
              check: Callable[[Slide], None] | None = None) -> None:
    """Open every slide before any work: a bad file or a clash of slide ids (or of the file names made from
    them) fails the run up front; ``check`` is called with each open slide."""
    names: dict[str, Path] = {}
    files: dict[str, Path] = {}
    for p in map(Path, paths):
        if p.stem in names:
            raise SlideError(p, f"slide id '{p.stem}' also belongs to {names[p.stem]}; ids must be unique")
        names[p.stem] = p
        name = safe_name(p.stem, source=p, error=EmbedError)
        if name in files:
            raise SlideError(p, f"slide id '{p.stem}' and that of {files[name]} make the same file name "
                                f"'{name}'; rename one")
        files[name] = p
        with Slide(p, fallback_mpp=slide_mpp) as slide:
            if check is not None:
                check(slide)


def embed_slides(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 config: EmbedConfig | None = None, slide_mpp: float | None = None,
                 progress: bool = True) -> list[Path]:
    """Embed the tissue patches of ``paths`` into stores under ``out_dir``; returns the store paths."""
    config = config or EmbedConfig()
    log.info("embedding %d slides with %s", len(paths), asdict(config))
    return Embedder(config, out_dir, progress=progress).embed(paths, slide_mpp=slide_mpp)
