"""The patch classifier (:class:`PatchClassifierModel`): real Lightning training on the embedded synthetic cohort.

Ground truth per cell is the share of the cell covered by the slide's ASAP tumour polygons
(rasterised here with shapely); a cell is tumour at >= 0.5. Regions are 4 x 4-cell blocks.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import shapely
import torch

from alkit.al.uncertainty import uncertainty_map
from alkit.annotations.asap import read_asap_xml
from alkit.embeddings.encoders import get_encoder
from alkit.selection.regions import boxes_overlap, select_standard
from alkit.tasks.segmentation.classifier import PatchClassifierModel
from alkit.tasks.segmentation.dataset import default_augmentation
from alkit.tasks.segmentation.examples import LabeledCells
from alkit.tasks.segmentation.metrics import evaluate_slide, summarise
from alkit.tasks.segmentation.sampler import BalancedSampler
from alkit.tasks.segmentation.split import split_by_region

# leave-one-tumour-slide-out: train on one tumour slide + one tumour-free slide, test on the other two
FOLDS = [(("synth_002", "synth_000"), ("synth_003", "synth_001")),
         (("synth_003", "synth_001"), ("synth_002", "synth_000"))]


def _tumour_fraction(annotation_path, grid) -> np.ndarray:
    """Share of every grid cell inside the tumour polygons (groups other than the `_2` exclusions)."""
    anns = read_asap_xml(annotation_path)
    tumour = shapely.union_all([shapely.Polygon(a.coords) for a in anns if a.group != "_2"])
    exclusions = [shapely.Polygon(a.coords) for a in anns if a.group == "_2"]
    if exclusions:
        tumour = shapely.difference(tumour, shapely.union_all(exclusions))
    b = grid.cell_boxes()
    cells = shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3])
    return (shapely.area(shapely.intersection(cells, tumour)) / shapely.area(cells)).reshape(grid.shape)


@pytest.fixture(scope="module")
def truth(synthetic_cohort, embedded_cohort) -> dict[str, np.ndarray]:
    return {s.slide_id: _tumour_fraction(synthetic_cohort.slide(s.slide_id).annotation_path, s.grid)
            for s in embedded_cohort}


def _examples(cohort, truth, ids) -> list[LabeledCells]:
    """Every embedded cell of the slides, labeled from the truth, in regions of 4 x 4 cells."""
    out = []
    for sid in ids:
        slide = cohort.slide(sid)
        store = slide.store()
        c = store.coords
        labels = (truth[sid][c[:, 0], c[:, 1]] >= 0.5).astype(int)
        out.append(LabeledCells(sid, slide.store_path, c, labels, (c[:, 0] // 4) * 4 + c[:, 1] // 4, store=store))
    return out


def _valid(store) -> np.ndarray:
    valid = np.zeros(store.grid.shape, bool)
    valid[store.coords[:, 0], store.coords[:, 1]] = True
    return valid


@pytest.fixture(scope="module")
def fitted(embedded_cohort, truth):
    """A task trained on fold 0 (shared by the inference tests)."""
    task = PatchClassifierModel(seed=0, max_epochs=20)
    task.fit(_examples(embedded_cohort, truth, FOLDS[0][0]))
    return task


def test_truth_has_tumour_on_two_slides(truth):
    tumour_cells = {sid: int((t >= 0.5).sum()) for sid, t in truth.items()}
    assert tumour_cells["synth_000"] == tumour_cells["synth_001"] == 0
    assert tumour_cells["synth_002"] >= 3 and tumour_cells["synth_003"] >= 1


def test_learns_tumour_on_unseen_slides(embedded_cohort, truth):
    """Measured over seeds 0-9: mIoU 0.43-0.80 (0.47 at seed 0), tumour-free FPR <= 0.02; chance < 0.08."""
    results, prevalence = [], []
    for train_ids, test_ids in FOLDS:
        task = PatchClassifierModel(seed=0)
        summary = task.fit(_examples(embedded_cohort, truth, train_ids))
        assert summary["n_train"] + summary["n_val"] == sum(len(embedded_cohort.slide(s).store().coords)
                                                            for s in train_ids)
        for sid in test_ids:
            store = embedded_cohort.slide(sid).store()
            prob = task.predict_proba(store)
            assert prob.shape == store.grid.shape and prob.dtype == np.float32
            assert np.all(prob[~_valid(store)] == 0) and np.all((prob >= 0) & (prob <= 1))
            results.append(evaluate_slide(sid, prob, truth[sid], _valid(store)))
            prevalence.append((truth[sid][_valid(store)] >= 0.5).mean())
    s = summarise(results)
    chance = max(prevalence)  # a coin with the tumour prevalence scores about this IoU (less, in fact)
    assert s["n_tumour_slides"] == 2 and s["n_tumour_free_slides"] == 2
    assert s["iou_tumour"] >= 0.3 > 3 * chance
    assert min(s["iou_per_slide"].values()) >= 0.2
    assert s["fp_rate_tumour_free"] <= 0.05


def _fit_predict(task, examples, store):
    summary = task.fit(examples)
    summary.pop("seconds")
    return summary, task.predict_proba(store)


def test_deterministic_with_a_seed_and_leaves_global_rng_alone(embedded_cohort, truth):
    examples = _examples(embedded_cohort, truth, FOLDS[0][0])
    store = embedded_cohort.slide("synth_003").store()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    s1, p1 = _fit_predict(PatchClassifierModel(seed=5, max_epochs=8, min_epochs=2), examples, store)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    s2, p2 = _fit_predict(PatchClassifierModel(seed=5, max_epochs=8, min_epochs=2), examples, store)
    s3, p3 = _fit_predict(PatchClassifierModel(seed=6, max_epochs=8, min_epochs=2), examples, store)
    assert s1 == s2 and np.array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


def test_fresh_model_and_trainer_every_fit(embedded_cohort, truth):
    a = _examples(embedded_cohort, truth, FOLDS[0][0])
    b = _examples(embedded_cohort, truth, FOLDS[1][0])
    store = embedded_cohort.slide("synth_002").store()
    task = PatchClassifierModel(seed=1, max_epochs=5)
    task.fit(a)
    first_trainer, first_model = task.trainer, task.model
    _, p_after_a = _fit_predict(task, b, store)
    assert task.trainer is not first_trainer and task.model is not first_model
    assert task.trainer.current_epoch == task.summary["epochs"] <= 5
    _, p_fresh = _fit_predict(PatchClassifierModel(seed=1, max_epochs=5), b, store)
    assert np.array_equal(p_after_a, p_fresh)  # nothing of the first fit carried over


def test_split_holds_out_whole_regions():
    rng = np.random.default_rng(0)
    regions = np.repeat(np.arange(10), 12)
    labels = (rng.uniform(size=120) < 0.15).astype(int)
    labels[regions == 3] = 1
    val, kind = split_by_region(regions, labels, 0.2, seed=4)
    assert kind == "region" and val.sum() > 0
    assert len(np.unique(regions[val])) == 2  # 20 % of 10 regions
    assert not set(regions[val]) & set(regions[~val])  # no region on both sides
    assert set(labels[val]) == set(labels[~val]) == {0, 1}
    again, _ = split_by_region(regions, labels, 0.2, seed=4)
    other, _ = split_by_region(regions, labels, 0.2, seed=5)
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    # tumour in one region only: no held-out set could judge tumour, so none is made
    lone = np.zeros(120, int)
    lone[regions == 7] = 1
    assert split_by_region(regions, lone, 0.2, seed=0)[1] == "none"
    # a single region: per-class patch split (documented fallback); val_fraction 0: no split
    one = np.zeros(40, int)
    mixed = np.r_[np.zeros(30, int), np.ones(10, int)]
    val1, kind1 = split_by_region(one, mixed, 0.2, seed=0)
    assert kind1 == "patch" and val1.sum() == 8 and mixed[val1].sum() == 2
    val0, kind0 = split_by_region(regions, labels, 0.0, seed=0)
    assert kind0 == "none" and not val0.any()


def test_region_ids_are_per_slide(embedded_cohort, truth):
    """Region 0 of two slides is two regions: the split never merges them."""
    examples = _examples(embedded_cohort, truth, ["synth_000", "synth_002"])
    task = PatchClassifierModel(seed=0, max_epochs=2)
    summary = task.fit(examples)
    per_slide = sum(len(np.unique(e.region_ids)) for e in examples)
    assert summary["n_train_regions"] + summary["n_val_regions"] == per_slide


def test_balanced_sampler():
    labels = np.r_[np.zeros(95, int), np.ones(5, int)]
    sampler = BalancedSampler(labels, 101, seed=3)
    first, second = list(sampler), list(sampler)  # two epochs
    for epoch in (first, second):
        counts = np.bincount(labels[epoch], minlength=2)
        assert len(epoch) == 101 and abs(counts[0] - counts[1]) <= 1
    assert first != second
    assert list(BalancedSampler(labels, 101, seed=3)) == first  # a fresh sampler repeats
    pairs = list(BalancedSampler(labels, 10, seed=3, with_seeds=True))
    assert len(pairs) == 10 and all(isinstance(i, int) and isinstance(s, int) for i, s in pairs)


def test_training_batches_are_class_balanced(embedded_cohort, truth):
    task = PatchClassifierModel(seed=0, max_epochs=3, val_fraction=0.0, batch_size=64)
    summary = task.fit(_examples(embedded_cohort, truth, FOLDS[0][0]))
    assert summary["n_train_tumour"] < summary["n_train_normal"] / 10  # heavily imbalanced labels ...
    assert abs(summary["sampled_tumour"] - summary["sampled_normal"]) <= 3  # ... balanced batches
    assert summary["epochs"] == 3 and summary["split"] == "none" and np.isnan(summary["best_val_loss"])


def test_mc_dropout_samples_differ_and_bald_map_is_finite(fitted, embedded_cohort):
    store = embedded_cohort.slide("synth_002").store()
    valid = _valid(store)
    mc = fitted.predict_mc(store, samples=8)
    assert mc.shape == (8, *store.grid.shape) and np.all(mc[:, ~valid] == 0)
    assert np.abs(mc[0] - mc[1])[valid].max() > 1e-4  # dropout is active
    assert np.array_equal(mc, fitted.predict_mc(store, samples=8))  # seeded: repeatable
    assert np.array_equal(fitted.predict_proba(store), fitted.predict_proba(store))  # eval: deterministic
    bald_map = uncertainty_map("bald", mc, valid, mc=True)
    assert bald_map.dtype == np.float32 and np.isfinite(bald_map).all()
    assert np.all(bald_map >= 0) and np.all(bald_map[~valid] == 0) and bald_map[valid].max() > 0
    entropy_map = uncertainty_map("entropy", fitted.predict_proba(store), valid)
    assert np.all(entropy_map[~valid] == 0) and entropy_map.max() <= np.log(2) + 1e-6
    # the map goes through a selector with a labeled region excluded
    best = select_standard(entropy_map, 4, 1)[0]
    pick = select_standard(entropy_map, 4, 1, labeled=[best])
    assert pick and not boxes_overlap(pick[0], best)
    with pytest.raises(ValueError, match="bald needs"):
        uncertainty_map("bald", fitted.predict_proba(store), valid)


def test_training_is_quiet_by_default(embedded_cohort, truth, capfd):
    examples = _examples(embedded_cohort, truth, FOLDS[0][0])
    PatchClassifierModel(seed=0, max_epochs=2).fit(examples)
    out, err = capfd.readouterr()
    assert out == "" and "GPU available" not in err and "Tip" not in err and "%" not in err


def test_early_stopping_keeps_the_best_held_out_epoch(embedded_cohort, truth, tmp_path):
    """The held-out loss, as a pluggable Lightning logger records it, is watched from min_epochs on."""
    import csv

    from pytorch_lightning.loggers import CSVLogger

    task = PatchClassifierModel(seed=0, max_epochs=40, min_epochs=3, patience=2,
                                logger=CSVLogger(tmp_path, name="run"))
    summary = task.fit(_examples(embedded_cohort, truth, FOLDS[0][0]))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_loss")]
    val = {int(r["epoch"]): float(r["val_loss"]) for r in rows}
    assert sorted(val) == list(range(summary["epochs"]))  # one held-out loss per epoch
    watched = {e: v for e, v in val.items() if e >= 2}
    assert summary["split"] == "region" and summary["n_val_tumour"] > 0
    assert summary["best_epoch"] == min(watched, key=watched.get)
    assert summary["best_val_loss"] == pytest.approx(min(watched.values()), rel=1e-6)
    if summary["stopped_early"]:
        assert summary["epochs"] == summary["best_epoch"] + 1 + 2


def test_errors(embedded_cohort, truth, fitted):
    with pytest.raises(RuntimeError, match="fit"):
        PatchClassifierModel().predict_proba(embedded_cohort.slides[0].store())
    with pytest.raises(ValueError, match="mode"):
        PatchClassifierModel(mode="linear")
    with pytest.raises(ValueError, match="one device"):
        PatchClassifierModel(devices=2)
    with pytest.raises(ValueError, match="labels must be 0"):
        LabeledCells("s", "x.h5", [[0, 0]], [2], [0])
    with pytest.raises(ValueError, match="must match"):
        LabeledCells("s", "x.h5", [[0, 0]], [1, 0], [0])
    store = embedded_cohort.slide("synth_000").store()
    empty = [LabeledCells("synth_000", store.path, np.zeros((0, 2)), [], [], store=store)]
    with pytest.raises(ValueError, match="nothing to train on"):
        PatchClassifierModel().fit(empty)
    other = dataclasses.replace(store, attrs={**store.attrs, "encoder": "resnet18"})
    with pytest.raises(ValueError, match="trained on"):
        fitted.predict_proba(other)


def test_augmentation_keeps_patches_and_repeats_with_a_seed():
    aug = default_augmentation()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outs = []
    for seed in (1, 1, 2):
        aug.set_random_seed(seed)
        outs.append(aug(image=image)["image"])
    assert outs[0].dtype == np.uint8 and outs[0].shape == image.shape
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_finetune_runs_one_tiny_epoch_on_cpu(embedded_cohort, truth):
    """End-to-end fine-tuning of a (random-init, offline) ResNet-18 on 8 patches read from the slide."""
    slide = embedded_cohort.slide("synth_002")
    store = slide.store()
    labels_all = (truth["synth_002"][store.coords[:, 0], store.coords[:, 1]] >= 0.5).astype(int)
    pick = np.r_[np.flatnonzero(labels_all == 1)[:4], np.flatnonzero(labels_all == 0)[:4]]
    # four regions, each with one tumour and one normal patch
    example = LabeledCells("synth_002", slide.store_path, store.coords[pick], labels_all[pick], np.arange(8) % 4,
                           store=store)
    task = PatchClassifierModel(mode="finetune", backbone="resnet18", max_epochs=1, batch_size=4, val_fraction=0.25,
                                seed=0)
    before = get_encoder("resnet18").state_dict()  # seeded random init: the weights fine-tuning starts from
    summary = task.fit([example])
    assert summary["epochs"] == 1 and summary["mode"] == "finetune"
    assert summary["n_train"] + summary["n_val"] == 8 and summary["split"] == "region"
    assert summary["sampled_tumour"] == summary["sampled_normal"] == summary["n_train"] // 2
    trained = task.model.backbone.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before if k.endswith("weight"))  # end to end
    few = dataclasses.replace(store, coords=store.coords[:4], features=store.features[:4])  # 4 cells: CPU time
    prob = task.predict_proba(few)
    assert prob.shape == store.grid.shape and np.isfinite(prob).all()
    inside = np.zeros(store.grid.shape, bool)
    inside[few.coords[:, 0], few.coords[:, 1]] = True
    assert np.all(prob[~inside] == 0) and np.all((prob[inside] > 0) & (prob[inside] < 1))


def test_validation_slides_are_the_held_out_set(embedded_cohort, truth):
    """Examples marked held out (fully annotated validation slides) are what early stopping watches; they
    are never trained on, and the region split is not drawn."""
    train_ids, val_ids = FOLDS[0][0][:1], FOLDS[0][0][1:2]
    train = _examples(embedded_cohort, truth, train_ids)
    held = [dataclasses.replace(ex, held_out=True) for ex in _examples(embedded_cohort, truth, val_ids)]
    summary = PatchClassifierModel(seed=0, max_epochs=3, min_epochs=0, patience=2).fit(train + held)
    assert summary["split"] == "validation slides"
    assert summary["n_val"] == sum(len(ex.cells) for ex in held)
    assert summary["n_train"] == sum(len(ex.cells) for ex in train)
    with pytest.raises(ValueError, match="outside the validation slides"):
        PatchClassifierModel(seed=0, max_epochs=1).fit(held)
