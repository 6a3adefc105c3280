"""Derive the handcrafted encoder's fixed standardisation constants from real H&E patches.

Patches: every 256-px cell of OpenSlide's CMU-1-Small-Region (0.499 µm/px, skin, with glass around
it) plus 256-px crops of the real tiles in ../shared/data/tiles (level-0 tiles halved to about
0.5 µm/px), i.e. tissue, glass and artefacts (pen, folds) in roughly the proportions a tissue-masked
slide grid sees. Prints FEATURE_MEAN / FEATURE_STD for ``alkit/encoders/handcrafted.py``.

    HF_HUB_OFFLINE=1 .venv/bin/python experiments/calibrate_handcrafted.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alkit.embeddings.encoders.handcrafted import handcrafted_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PATCH = 256
# tiles captured at level 0 of 40x scans are halved to reach about 0.5 µm/px
HALVE = {"high-nuclei-score-level0.png", "medium-nuclei-score-level0.png", "low-nuclei-score-level0.png",
         "tissue-level0-7352-11762-7864-12274.png", "tiatoolbox_target_image.png",
         "torchstain_source.png", "torchstain_target.png"}


def grid_crops(image: np.ndarray, stride: int = PATCH // 2) -> list[np.ndarray]:
    h, w = image.shape[:2]
    ys = range(0, max(1, h - PATCH + 1), stride)
    xs = range(0, max(1, w - PATCH + 1), stride)
    return [image[y:y + PATCH, x:x + PATCH] for y in ys for x in xs
            if image[y:y + PATCH, x:x + PATCH].shape[:2] == (PATCH, PATCH)]


def patches() -> np.ndarray:
    out: list[np.ndarray] = []
    import openslide
    with openslide.OpenSlide(str(DATA / "wsi" / "CMU-1-Small-Region.svs")) as slide:
        w, h = slide.dimensions
        image = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    out += grid_crops(image, stride=PATCH)
    for path in sorted((DATA / "tiles").glob("*/*.png")):
        tile = Image.open(path).convert("RGB")
        if path.name in HALVE:
            tile = tile.resize((tile.width // 2, tile.height // 2), Image.LANCZOS)
        out += grid_crops(np.asarray(tile))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    images = torch.from_numpy(patches())
    with torch.no_grad():  # all patches are 256 px already: the encoder's preprocessing is just /255
        raw = torch.cat([handcrafted_features(b.permute(0, 3, 1, 2).float() / 255) for b in images.split(64)])
    raw = raw.double()
    mean, std = raw.mean(dim=0), raw.std(dim=0)
    # a floor keeps near-constant features (e.g. very large nuclei) from exploding on rare patches
    spread = (raw - mean).abs().quantile(0.99, dim=0)
    std = torch.maximum(std, torch.maximum(0.1 * spread, torch.full_like(std, 1e-3)))
    print(f"# {len(raw)} patches")
    for name, values in (("FEATURE_MEAN", mean), ("FEATURE_STD", std)):
        body = ", ".join(f"{v:.4g}" for v in values.tolist())
        print(f"{name}: tuple[float, ...] = ({body})")


if __name__ == "__main__":
    main()
