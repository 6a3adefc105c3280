"""A stored embedding is the encoder's output for the patch at its grid cell, read directly from the slide.

``alkit embed``'s path (``Embedder``: tissue cells, a ``DataLoader`` over ``PatchDataset``, Lightning's
``Trainer.predict`` and the store writer) is compared, cell by cell, with the plain one: the cell's
level-0 box worked out here from the grid's definition (``col · stride0, row · stride0, size0, size0``),
read with ``Slide.read`` at the store's mpp, and put through the encoder's own ``preprocess`` and
``encode_images``. Grids overlap (stride < patch) and the slide's mpp is not the target's, so a cell
offset, a swapped row / column, a stride taken for the patch size or a store row written for the wrong
cell all change some stored vector.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alkit.embeddings.embed import EmbedConfig, Embedder
from alkit.embeddings.store import EmbeddingStore
from alkit.wsi.slide import Slide

SLIDE = "CMU-1-Small-Region.svs"  # 2220 x 2967 px at 0.499 µm/px


def _direct(encoder, slide: Slide, box, mpp: float, patch: int) -> np.ndarray:
    image = slide.read(box, mpp=mpp)
    assert image.shape == (patch, patch, 3) and image.dtype == np.uint8
    with torch.no_grad():
        return encoder.encode_images(encoder.preprocess(torch.from_numpy(image[None]))).float().numpy()[0]


@pytest.mark.parametrize("spec, mpp, patch, stride, n_check", [
    ("handcrafted", 1.0, 128, 96, 12),
    ("resnet18", 4.0, 64, 48, 4),  # random-init (seeded) ResNet-18: a real network, a coarse grid to stay fast
])
def test_stored_features_equal_a_direct_forward_of_the_patch_at_their_cell(wsi, tmp_path, one_torch_thread,
                                                                           spec, mpp, patch, stride, n_check):
    config = EmbedConfig(encoder=spec, mpp=mpp, patch=patch, stride=stride, min_tissue=0.2, batch_size=16,
                         num_workers=0, accelerator="cpu", devices=1)
    embedder = Embedder(config, tmp_path / "stores", progress=False)
    store = EmbeddingStore.load(embedder.embed_slide(wsi(SLIDE)))
    grid = store.grid
    assert store.attrs["encoder"] == embedder.encoder.name and (grid.patch, grid.stride) == (patch, stride)
    assert len(store.coords) >= 2 * n_check and len(np.unique(store.coords, axis=0)) == len(store.coords)
    with Slide(wsi(SLIDE)) as slide:
        scale = mpp / slide.mpp  # level-0 px per target px
        assert abs(scale - round(scale)) > 1e-3  # fractional level-0 boxes: the resampling path is exercised
        rng = np.random.default_rng(0)
        rows = sorted({0, len(store.coords) - 1, *rng.choice(len(store.coords), n_check - 2, replace=False)})
        encoder = embedder.encoder.eval()
        boxes = grid.cell_boxes(store.coords[rows])
        for i, box in zip(rows, boxes):
            r, c = (int(v) for v in store.coords[i])
            mine = (c * stride * scale, r * stride * scale, patch * scale, patch * scale)
            np.testing.assert_allclose(box, mine, rtol=0, atol=1e-6)
            expected = _direct(encoder, slide, mine, mpp, patch)
            np.testing.assert_allclose(store.features[i], expected, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{spec}: store row {i}, cell ({r}, {c})")
        # the check separates cells: neighbours on the overlapping grid embed differently
        a, b = (_direct(encoder, slide, grid.cell_boxes(store.coords[[j]])[0], mpp, patch) for j in rows[:2])
        assert not np.allclose(a, b, rtol=1e-4, atol=1e-5)
