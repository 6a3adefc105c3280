"""Shared fixtures: the real third-party files in ../shared/data (read in place, never copied), and a
tiny random-init OpenCLIP model (image and text towers) that runs offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory) -> Path:
    """Caches that default to ~/.cache/alkit (caption image embeddings) go to a temporary folder instead,
    so tests neither read a user's cache nor leave files in it."""
    folder = tmp_path_factory.mktemp("alkit_cache")
    before = os.environ.get("ALKIT_CACHE_DIR")
    os.environ["ALKIT_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("ALKIT_CACHE_DIR", None)
    else:
        os.environ["ALKIT_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (the project's ../shared/data); "
                    "CI always has it, a user's clone may not")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wsi(shared_data: Path):
    def path(name: str) -> Path:
        return shared_data / "wsi" / name
    return path


@pytest.fixture(scope="session")
def annotations(shared_data: Path):
    """``annotations("sliderunner")``: a folder of real annotation files in ../shared/data/annotations."""
    def folder(name: str) -> Path:
        return shared_data / "annotations" / name
    return folder


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """A small synthetic cohort (4 slides of 4096 px, 2 with tumour) with its caption database."""
    from alkit.synthetic import generate_cohort

    return generate_cohort(tmp_path_factory.mktemp("cohort"), n_slides=4, size=4096, seed=3,
                           n_caption_images=60, progress=False)


@pytest.fixture(scope="session")
def embedded_cohort(synthetic_cohort, tmp_path_factory):
    """The synthetic cohort embedded with the offline encoder: 128-px patches at 0.5 µm/px (16 x 16 grid)."""
    from alkit.embeddings.cohort import Cohort
    from alkit.embeddings.embed import EmbedConfig, embed_slides

    config = EmbedConfig(encoder="handcrafted", mpp=0.5, patch=128, batch_size=128, num_workers=0,
                         accelerator="cpu", devices=1)
    stores = embed_slides([s.path for s in synthetic_cohort.slides], tmp_path_factory.mktemp("stores"),
                          config, progress=False)
    return Cohort.from_stores(stores)


TINY_CLIP = "alkit-test-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """``(model, weights_path)``: a tiny OpenCLIP config registered as :data:`TINY_CLIP`, seeded random
    weights saved as a plain state dict; ``get_encoder(f"open_clip:{TINY_CLIP}@{weights_path}")`` loads it."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("open_clip")
    cfg_path = folder / f"{TINY_CLIP}.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = open_clip.create_model(TINY_CLIP).eval()
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return model, weights


@pytest.fixture(scope="session")
def tiny_clip_spec(tiny_clip) -> str:
    """The encoder spec of :func:`tiny_clip`."""
    return f"open_clip:{TINY_CLIP}@{tiny_clip[1]}"


# ------------------------------------------------------------------------------- mitosis task helpers

def mitosis_cohort(root: Path, n_slides: int, n_caption_images: int = 0):
    """Tumour-only synthetic slides of 2048 px (0.25 µm/px, seed 5) embedded at 64 px, stride 64 (the mitosis
    task's grid), with their SlideRunner oracle: ``(cohort, store paths, oracle)``."""
    from alkit.embeddings.embed import EmbedConfig, embed_slides
    from alkit.tasks.detection.oracle import MitosisOracle
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(root / "cohort", n_slides=n_slides, size=2048, seed=5, progress=False,
                             n_caption_images=n_caption_images, tumour_slide_fraction=1.0)
    config = EmbedConfig(encoder="handcrafted", mpp=0.25, patch=64, batch_size=256, num_workers=0,
                         accelerator="cpu", devices=1)
    stores = embed_slides([s.path for s in cohort.slides], root / "stores", config, progress=False)
    oracle = MitosisOracle.from_sliderunner(cohort.mitoses_db, mpp={s.slide_id: s.mpp for s in cohort.slides})
    return cohort, stores, oracle


def on_tissue_count(slide, points) -> int:
    """How many level-0 points fall in an embedded cell of ``slide`` (a CohortSlide), point by point."""
    import numpy as np

    from alkit.embeddings.store import StoreHeader

    embedded = {tuple(c) for c in StoreHeader.load(slide.store_path).coords.tolist()}
    s = slide.grid.stride0
    return sum((int(y // s), int(x // s)) in embedded for x, y in np.asarray(points).reshape(-1, 2))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): prototype
    embeddings come out the same bytes on every machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter, config) -> None:
    """The test order's seed, also under ``-q`` (which hides pytest-randomly's header): a failure that only
    shows in one order reruns in that order with ``-p randomly --randomly-seed=SEED``."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"tests ran in random order: rerun it with -p randomly --randomly-seed={seed}")
