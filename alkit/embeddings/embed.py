"""Embed every tissue patch of every slide: Lightning ``Trainer.predict`` writing cached stores.

The work is a plain LightningModule plus a prediction writer, so ``strategy="ddp"``,
``devices=N`` and ``num_nodes=M`` run unchanged on a cluster. Ranks are slide-parallel: slide ``i``
of the run's list is embedded whole by rank ``i % world_size`` (finished slides are skipped first),
so ranks never wait for each other per slide and nothing is merged; one barrier ends the run. With
several nodes the output folder must be on a shared filesystem.

Memory is bounded by the batch: a slide's tissue cells are known before its first patch is read,
so its store is created at its final size and filled batch by batch on disk
(:class:`alkit.embeddings.writer.IncrementalStore`), then renamed into place. Patches are read by
blocks of neighbouring cells (:mod:`alkit.embeddings.blocks`) in DataLoader workers, each with its
own OpenSlide handle, as uint8 tensors (pinned when CUDA is there); resizing to the network's input
and normalisation run on the accelerator in :meth:`Encoder.preprocess`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
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
from alkit.embeddings.blocks import CohortPatches, SlideJob, rank_jobs
from alkit.embeddings.cached import first_on_node
from alkit.embeddings.encoders import Encoder, get_encoder
from alkit.embeddings.writer import IncrementalStore
from alkit.errors import AlkitError
from alkit.ids import safe_name
from alkit.wsi.grid import PatchGrid
from alkit.wsi.slide import Slide, SlideError
from alkit.embeddings.store import is_cached, read_attrs, StoreError, store_path

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
        # an empty batch (a slide without tissue cells, so that its empty store is written) gives (0, dim)
        return {"features": self.encoder(batch["image"]).float()}


class CohortData(pl.LightningDataModule):
    """The patches of this rank's slides (:func:`rank_jobs`), built once Lightning knows the rank."""

    def __init__(self, jobs: Sequence[SlideJob], batch_size: int, num_workers: int,
                 make_dataset: Callable[[list[SlideJob], int], CohortPatches] = CohortPatches):
        super().__init__()
        self.jobs, self.batch_size, self.num_workers = list(jobs), batch_size, num_workers
        self.make_dataset = make_dataset
        self.mine: list[SlideJob] = []

    def predict_dataloader(self) -> DataLoader:
        self.mine = rank_jobs(self.jobs, self.trainer.global_rank, self.trainer.world_size)
        log.info("rank %d of %d: %d slide(s) to embed", self.trainer.global_rank, self.trainer.world_size,
                 len(self.mine))
        dataset = self.make_dataset(self.mine, self.batch_size)
        workers = self.num_workers  # batches are made by the dataset, block by block: batch_size=None here
        return DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False, prefetch_factor=2 if workers else None)


class StoreWriter(BasePredictionWriter):
    """Writes each batch of embeddings into its slide's store as it arrives; a store is renamed into
    place the moment its last row is written. One barrier at the end of the run, none per slide."""

    def __init__(self, progress: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.progress = progress
        self._open: dict[int, IncrementalStore] = {}
        self._done: set[int] = set()
        self._bar: tqdm | None = None
        self.written: list[Path] = []

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._open, self._done, self.written = {}, set(), []
        total = len(getattr(trainer.datamodule, "mine", []) or [])
        self._bar = tqdm(total=total, desc=f"slides (rank {trainer.global_rank})", unit="slide",
                         disable=not (self.progress and trainer.is_global_zero), position=1, leave=False)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        pos = int(batch["slide"])
        store = self._open.get(pos)
        if store is None:
            if pos in self._done:
                raise RuntimeError(f"rows of slide {pos} arrived after its store was written")
            plan = batch["plan"]
            assert plan is not None, "a worker's first batch of a slide carries its plan"
            features = prediction["features"]
            store = self._open[pos] = IncrementalStore(plan["out"], plan["coords"], plan["attrs"],
                                                       int(features.shape[1]), plan["tissue"])
        store.write(batch["index"].cpu().numpy(), prediction["features"].cpu().numpy())
        if store.complete:
            self.written.append(store.commit())
            log.info("%s: %d cells embedded (rank %d)", store.path, store.n, trainer.global_rank)
            del self._open[pos]
            self._done.add(pos)
            if self._bar is not None:
                self._bar.update(1)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._open:
            stores = self._abort()
            raise RuntimeError(f"stores never completed: {stores}")
        trainer.strategy.barrier("alkit-embed-done")  # every rank's stores are in place after this

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._abort()

    def _abort(self) -> list[str]:
        names = [str(s.path) for s in self._open.values()]
        for store in self._open.values():
            store.abort()
        self._open = {}
        return names


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
        self.writer = StoreWriter(progress)
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
                enable_progress_bar=self.progress, inference_mode=True, use_distributed_sampler=False,
                callbacks=[self.writer, *([TQDMProgressBar()] if self.progress else [])])
        return self._trainer

    def attrs_for(self, slide: Slide, grid: PatchGrid) -> dict:
        """Store attributes: everything that determines the embeddings, plus provenance
        (:func:`alkit.embeddings.cached.embedding_attrs`, which the torch-free cache precheck uses too)."""
        from alkit.embeddings.cached import embedding_attrs

        e = self.encoder
        return embedding_attrs(e.name, e.weights_id, e.dim, self.mpp, self.config.patch, self.stride,
                               self.config.min_tissue, slide, grid)

    def embed_slide(self, path: str | os.PathLike, slide_mpp: float | None = None) -> Path:
        """Embed one slide's tissue cells (or find them cached); returns the store path."""
        return self.embed([path], slide_mpp=slide_mpp)[0]

    def job(self, index: int, path: str | os.PathLike,
            slide_mpp: float | None = None) -> tuple[Path, SlideJob | None]:
        """Slide ``index`` of a run: its store path, and the work to make it (None when complete)."""
        with Slide(path, fallback_mpp=slide_mpp) as slide:
            grid = PatchGrid.for_slide(slide, self.mpp, self.config.patch, self.stride)
            attrs = self.attrs_for(slide, grid)
            out = store_path(self.out_dir, slide.name, self.encoder.name, self.mpp, self.config.patch, self.stride)
        if is_cached(out, attrs):
            log.info("%s: cached in %s", path, out)
            return out, None
        if out.exists():
            try:
                read_attrs(out)
            except StoreError as exc:
                log.warning("%s: recomputing the store (%s)", path, exc)
        return out, SlideJob(index, Path(path), slide_mpp, out, attrs)

    def predict(self, jobs: Sequence[SlideJob],
                make_dataset: Callable[[list[SlideJob], int], CohortPatches] = CohortPatches) -> None:
        """Embed ``jobs`` with one ``Trainer.predict``: each rank takes its share (:func:`rank_jobs`)."""
        data = CohortData(jobs, self.config.batch_size, self.config.num_workers, make_dataset)
        try:
            with warnings.catch_warnings():  # batches come from an iterable dataset: no sampler indices, by design
                warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
                self.trainer.predict(EmbeddingModule(self.encoder), datamodule=data, return_predictions=False)
        except Exception as exc:  # a worker's read error arrives wrapped: surface the SlideError naming the slide
            cause = exc
            while cause.__cause__ is not None and not isinstance(cause, SlideError):
                cause = cause.__cause__
            if isinstance(cause, SlideError):
                raise cause from None
            raise
        self.forward_passes += 1

    def embed(self, paths: Sequence[str | os.PathLike], slide_mpp: float | None = None) -> list[Path]:
        """Embed a cohort; finished slides are skipped, so an interrupted run resumes.

        ``slide_mpp`` is the level-0 resolution of slides whose files lack one; it never overrides metadata.
        Every rank sees the same list (the same command line), so slide ``i`` belongs to rank
        ``i % world_size`` however far an earlier run got.
        """
        self.preflight(paths, slide_mpp)
        if first_on_node():  # what an interrupted run left: temporary store files of this node's dead processes
            remove_stale_temps(self.out_dir, ".h5")
        stores, jobs = [], []
        for i, p in enumerate(paths):
            out, job = self.job(i, p, slide_mpp)
            stores.append(out)
            if job is None:
                self.cache_hits += 1
            else:
                jobs.append(job)
        if jobs:
            self.predict(jobs)
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
