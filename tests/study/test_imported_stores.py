"""A study on existing stores (``embedding.stores``): TRIDENT feature files imported with
``alkit import-features``, then ``run_study`` on them without embedding anything.

The TRIDENT files are written with h5py in TRIDENT's layout (``features`` N x D, ``coords`` N x 2 level-0
x, y with patch_size / patch_size_level0 / magnification / overlap / level0 size attributes), holding the
real handcrafted embeddings of the shared synthetic cohort. That nothing was embedded is checked by files:
the stores folder is unchanged and no other store file exists anywhere under the test's folder.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from alkit.embeddings.foreign import import_features
from alkit.embeddings.store import EmbeddingStore
from alkit.errors import AlkitError
from alkit.prototypes.prototype_set import ClassPrototypes, PrototypeSet
from alkit.study.config import ConfigError, load_config
from alkit.study.demo import demo_config
from alkit.study.inputs import input_digests, prototypes_for
from alkit.study.run import run_study, study_digest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLIDE_MPP = 0.25  # the synthetic slides' level-0 resolution; the embedded cohort's patches are at 0.5 µm/px
PATCH, DOWN = 128, 2


def write_trident(folder: Path, store: EmbeddingStore) -> Path:
    """``folder/SLIDE.h5`` in TRIDENT's layout (rows shuffled, as a tool's order need not be alkit's)."""
    order = np.random.default_rng(len(store.coords)).permutation(len(store.coords))
    w, h = store.grid.dimensions
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{store.slide_id}.h5"
    with h5py.File(path, "w") as f:
        feats = f.create_dataset("features", data=store.features[order])
        feats.attrs["encoder"] = "handcrafted_v1"
        level0 = store.grid.cell_boxes(store.coords)[:, :2].round().astype(np.int64)
        coords = f.create_dataset("coords", data=level0[order])
        coords.attrs.update({"patch_size": PATCH, "patch_size_level0": PATCH * DOWN, "level0_magnification": 40,
                             "target_magnification": 40 // DOWN, "overlap": 0, "level0_width": w,
                             "level0_height": h})
    return path


@pytest.fixture(scope="module")
def imported(synthetic_cohort, embedded_cohort, tmp_path_factory):
    """``(root, stores, bare)``: the TRIDENT files imported against the slides as ``handcrafted`` stores
    (``stores``), and imported without slides or an encoder name (``bare``: encoder ``trident:handcrafted_v1``)."""
    root = tmp_path_factory.mktemp("imported")
    features = root / "features_handcrafted_v1"
    for s in embedded_cohort:
        write_trident(features, s.store())
    slides = Path(synthetic_cohort.root) / "slides"
    stores = root / "stores"
    assert len(import_features([features], stores, "trident", slides_dir=slides, encoder="handcrafted")) == 4
    bare = root / "bare"
    import_features([features], bare, "trident", slide_mpp=SLIDE_MPP)
    return root, stores, bare


def _study(cohort_root: Path, folder: Path, stores: Path, strategies=("random", "prototype"), slides=None,
           **embedding) -> Path:
    """The quick demo's study over the shared cohort on ``stores`` (absolute paths), small and fast."""
    config = demo_config(cohort_root, quick=True)
    base = cohort_root.parent
    for key in ("slides", "test_slides"):
        config["cohort"][key] = [str(base / p) for p in config["cohort"][key]]
    if slides is not None:
        config["cohort"]["slides"] = [str(p) for p in slides]
    config["cohort"]["ground_truth"]["synthetic"] = str(base / config["cohort"]["ground_truth"]["synthetic"])
    config["prototypes"]["db"] = str(base / config["prototypes"]["db"])
    config["embedding"] = {"stores": str(stores), **embedding}
    config["strategies"] = list(strategies)
    config["loop"] = {"cycles": 1}
    config["task"] = {"max_epochs": 2, "min_epochs": 1, "patience": 1}
    config["out"] = str(folder / "out")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"study{len(list(folder.glob('study*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_study_runs_on_imported_stores_without_embedding(synthetic_cohort, imported, tmp_path):
    root, stores, _ = imported
    config = load_config(_study(Path(synthetic_cohort.root), tmp_path, stores))
    assert {k: config.embedding[k] for k in ("encoder", "mpp", "patch", "stride")} == \
        {"encoder": "handcrafted", "mpp": 0.5, "patch": PATCH, "stride": PATCH}  # the stores' own
    before = _files(stores)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = run_study(config, tracking_uri=uri, progress=False)
    assert sorted(r["params"]["strategy"] for r in runs) == ["prototype", "random"]
    client = MlflowClient(uri)
    for r in runs:
        assert client.get_run(r["run_id"]).info.status == "FINISHED"
        assert r["params"]["encoder"] == "handcrafted" and [s for s, _ in r["history"]["iou_tumour"]] == [0]
    # nothing embedded: the stores are untouched and no store file exists beside them
    assert _files(stores) == before
    written = [p for p in tmp_path.rglob("*.h5")] + [p for p in root.rglob("*.h5") if p.parent not in
                                                     (stores, root / "bare", root / "features_handcrafted_v1")]
    assert written == []
    # the given stores are the run key's inputs
    train, test = config.stores.cohort(config.slides), config.stores.cohort(config.test_slides)
    assert {s.store_path.parent for s in [*train, *test]} == {stores}
    assert [s.slide_path for s in train] == config.slides  # the config's slides, not the paths the stores record
    (folder,) = (config.out / "prototypes").iterdir()  # embedded by the stores' encoder
    assert PrototypeSet.load(folder).encoder == "handcrafted"
    digests = input_digests(train, test, None, prototypes_for(config))
    assert {r["params"]["config_hash"] for r in runs} == {study_digest(config, digests)}


def _refused(path: Path, *says: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and all(s in message for s in says), message
    return message


def test_stores_that_do_not_fit_the_study_are_refused_in_one_line(synthetic_cohort, imported, tmp_path):
    cohort_root = Path(synthetic_cohort.root)
    _, stores, bare = imported
    partial = tmp_path / "partial"  # one training slide's store missing
    partial.mkdir()
    config = load_config(_study(cohort_root, tmp_path, stores))
    missing = config.slides[0]
    for p in stores.iterdir():
        if not p.name.startswith(f"{missing.stem}__"):
            (partial / p.name).symlink_to(p)
    _refused(_study(cohort_root, tmp_path, partial), "key 'embedding.stores'", str(partial),
             f"no store for slide {missing.stem!r}")
    _refused(_study(cohort_root, tmp_path, tmp_path / "absent"), "no such folder of embedding stores")
    (tmp_path / "empty").mkdir()
    _refused(_study(cohort_root, tmp_path, tmp_path / "empty"), "no embedding stores")
    # a store is of its slide's pixels: another slide under the same name is refused
    impostor = tmp_path / "impostor" / config.slides[0].name
    impostor.parent.mkdir()
    impostor.symlink_to(config.slides[1])
    _refused(_study(cohort_root, tmp_path, stores, slides=[impostor, *config.slides[1:]]), str(impostor),
             "made for other pixels")
    # what the config gives must match the stores
    _refused(_study(cohort_root, tmp_path, stores, patch=256), f"no store of slide {missing.stem!r} has",
             "patch 256")
    _refused(_study(cohort_root, tmp_path, stores, encoder="resnet18"), "encoder 'resnet18'")
    _refused(_study(cohort_root, tmp_path, stores, out=str(tmp_path / "emb")),
             "key 'embedding.out' is not used with 'embedding.stores'")
    # a folder of two encoders' stores: ambiguous until the encoder is named
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in [*stores.iterdir(), *bare.iterdir()]:
        (mixed / p.name).symlink_to(p)
    _refused(_study(cohort_root, tmp_path, mixed), "2 stores of slide", "set embedding.encoder")
    chosen = load_config(_study(cohort_root, tmp_path, mixed, encoder="trident:handcrafted_v1"))
    assert {p.parent for p in chosen.stores.paths.values()} == {mixed}
    assert all(p.resolve().parent == bare for p in chosen.stores.paths.values())
    # a raw TRIDENT file is no store
    raw = tmp_path / "raw_trident"
    raw.mkdir()
    (raw / "x.h5").symlink_to(next((imported[0] / "features_handcrafted_v1").iterdir()))
    _refused(_study(cohort_root, tmp_path, raw), "not an alkit embedding store")


def test_prototypes_need_an_encoder_alkit_can_build(synthetic_cohort, imported, tmp_path, monkeypatch):
    """Stores imported without --encoder name the tool's encoder: a study on them runs, but cannot
    embed caption images with it, and says so in one line before any run; an encoder whose weights
    are not here (UNI, offline, empty hub cache) is refused when the config is read."""
    root, _, bare = imported
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uni = tmp_path / "uni"
    import_features([root / "features_handcrafted_v1"], uni, "trident", slide_mpp=SLIDE_MPP, encoder="uni")
    message = _refused(_study(Path(synthetic_cohort.root), tmp_path, uni), "key 'embedding.stores'", str(uni),
                       "encoder 'uni'", "cannot be built here (offline)", "MahmoodLab/UNI")
    assert "--encoder" in message
    assert load_config(_study(Path(synthetic_cohort.root), tmp_path, uni, strategies=["random"])).stores
    # a built prototype set of another encoder does not fit the stores either
    other = PrototypeSet("resnet18", 4, "imagenet", {"tumor": ClassPrototypes("tumor", np.eye(4, dtype=np.float32),
                                                                              [{"id": str(i)} for i in range(4)])})
    other.save(tmp_path / "resnet_set")
    path = _study(Path(synthetic_cohort.root), tmp_path, imported[1])
    study = yaml.safe_load(path.read_text())
    study["prototypes"] = {"path": str(tmp_path / "resnet_set")}
    path.write_text(yaml.safe_dump(study))
    on_stores = load_config(path)
    with pytest.raises(AlkitError, match=rf"made with encoder 'resnet18' \(4-d\), but the stores in .* hold "
                                         rf"{on_stores.stores.attrs['dim']}-d features of encoder 'handcrafted'"):
        prototypes_for(on_stores)
    config = load_config(_study(Path(synthetic_cohort.root), tmp_path, bare))
    assert config.embedding["encoder"] == "trident:handcrafted_v1"
    with pytest.raises(AlkitError) as err:
        prototypes_for(config)
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert "'trident:handcrafted_v1'" in message and "cannot be built here (offline)" in message
    assert str(bare) in message and "--encoder" in message
    assert not (config.out / "prototypes").exists()
