"""The study-config schema: every key at every depth checked before any work, one-line errors naming the
file, the dotted key and the reason (with the closest valid key for a typo), nothing written by a bad
``alkit compare``, and a key reference generated from the same schema (README.md, ``compare --schema``)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml

from alkit.al.task import available_tasks
from alkit.cli import main
from alkit.study.config import ConfigError, load_config
from alkit.study.schema import StudySchema, keys_of, render_reference
from alkit.tasks.detection.detector import MitosisDetectorModel
from alkit.tasks.detection.task import DetectionTask
from alkit.tasks.segmentation.classifier import PatchClassifierModel
from alkit.tasks.segmentation.task import RESERVED, SegmentationTask
from alkit.tasks.settings import model_parameters

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def study(tmp_path) -> dict:
    """A valid study over stand-in inputs (validation only checks that they exist): its folder and config."""
    inputs = tmp_path / "inputs"
    (inputs / "slides").mkdir(parents=True)
    for name in ("a", "b", "t"):
        (inputs / "slides" / f"{name}.tif").write_bytes(b"")
    (inputs / "cohort").mkdir()
    (inputs / "captions").mkdir()
    return {
        "study": "schema-test",
        "cohort": {"slides": ["slides/a.tif", "slides/b.tif"], "test_slides": "slides/t.tif",
                   "ground_truth": {"synthetic": "cohort"}},
        "embedding": {"encoder": "handcrafted", "mpp": 0.5, "patch": 128, "workers": 0, "accelerator": "cpu",
                      "out": "embeddings"},
        "prototypes": {"db": "captions", "classes": {"tumor": {"with": [["tumor"]], "without": ["IHC"]}},
                       "prep": {"mode": "crop", "size": 64}},
        "strategies": ["random", "prototype"],
        "selector": "standard",
        "budgets": {"n": [1, 2], "l": 512},
        "seeds": [0, 1],
        "loop": {"cycles": 2, "acquisition": {"measure": "entropy"}},
        "task": {"max_epochs": 3, "lr": 1.0e-3},
        "out": "results",
    }


def _write(folder: Path, config: dict, **changes) -> Path:
    """``config`` with dotted-key ``changes`` (None removes a key) written as ``folder/inputs/study.yaml``."""
    config = json.loads(json.dumps(config))
    for key, value in changes.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = folder / "inputs" / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message


def test_a_valid_config_loads_with_its_values(study, tmp_path):
    config = load_config(_write(tmp_path, study))
    assert config.n == [1, 2] and config.l == [512] and config.seeds == [0, 1] and config.cycles == 2
    assert [p.name for p in config.slides] == ["a.tif", "b.tif"] and [p.name for p in config.test_slides] == ["t.tif"]
    assert config.out == tmp_path / "inputs" / "results" and config.task_params == {"max_epochs": 3, "lr": 1.0e-3}
    assert config.acquisition == {"measure": "entropy"} and config.raw == yaml.safe_load(_write(tmp_path, study).read_text())


@pytest.mark.parametrize("changes, expected", [
    ({"embedding.ptach": 128}, "unknown key(s) ['embedding.ptach']: did you mean 'patch'?"),
    ({"loop.cycels": 5}, "unknown key(s) ['loop.cycels']: did you mean 'cycles'?"),
    ({"embedding": {"colour": "red"}}, "unknown key(s) ['embedding.colour']: key 'embedding' knows accelerator, "),
    ({"colour": "red"}, "unknown key(s) ['colour']: the study config knows budgets, cohort, embedding"),
    ({"prototypes.classes": {"tumor": {"with": [["tumor"]], "withuot": ["IHC"]}}},
     "unknown key(s) ['prototypes.classes.tumor.withuot']: did you mean 'without'?"),
    ({"prototypes.prep": {"sise": 64}}, "unknown key(s) ['prototypes.prep.sise']: did you mean 'size'?"),
    ({"loop.acquisition": {"measure": "entropy", "mc_sample": 3}},
     "unknown key(s) ['loop.acquisition.mc_sample']: did you mean 'mc_samples'?"),
    ({"cohort.ground_truth": {"synthetc": "cohort"}},
     "unknown key(s) ['cohort.ground_truth.synthetc']: did you mean 'synthetic'?"),
    ({"task.max_epoch": 3}, "key 'task' has unknown parameter(s) ['max_epoch'] for task 'segmentation': did you "
                            "mean 'max_epochs'?"),
    # each task validates its own keys: a detector parameter is no segmentation parameter, and back
    ({"task.box_um": 12.5}, "key 'task' has unknown parameter(s) ['box_um'] for task 'segmentation'"),
    ({"task": {"kind": "detection", "tumour_threshold": 0.5}},
     "key 'task' has unknown parameter(s) ['tumour_threshold'] for task 'detection'"),
    ({"task.kind": "segmentaion"}, "key 'task.kind' must be one of ['segmentation', 'detection'], got "
                                   "'segmentaion'; did you mean 'segmentation'?"),
    ({"strategy_params": {"prototype": {"clases": ["tumor"]}}},
     "key 'strategy_params.prototype.clases': the prototype strategy has no such parameter (it has classes); "
     "did you mean 'classes'?"),
    ({"strategy_params": {"random": {"min_tisue": 0.2}}},
     "key 'strategy_params.random.min_tisue': the random strategy has no such parameter"),
    ({"selector": "adaptive", "selector_options": {"rul": "area"}},
     "key 'selector_options': the adaptive selector has no option 'rul'"),
])
def test_unknown_keys_are_refused_with_the_closest_valid_name(study, tmp_path, changes, expected):
    assert expected in _error(_write(tmp_path, study, **changes))


@pytest.mark.parametrize("changes, expected", [
    ({"task.max_epochs": "lots"}, "key 'task.max_epochs' must be an integer, got 'lots'"),
    ({"embedding.patch": -128}, "key 'embedding.patch' must be > 0, got -128"),
    ({"embedding.min_tissue": 2.0}, "key 'embedding.min_tissue' must be <= 1, got 2.0"),
    ({"embedding.workers": True}, "key 'embedding.workers' must be an integer, got True"),
    ({"embedding.devices": [0]}, "key 'embedding.devices' must be an integer or text, got [0]"),
    ({"task.lr": "1e-4"}, "key 'task.lr' must be a number, got '1e-4' (YAML reads it as text"),
    ({"task.dropout": 1.0}, "key 'task.dropout' must be < 1, got 1.0"),
    ({"loop.acquisition.measure": "vibes"}, "key 'loop.acquisition.measure' must be one of 'entropy', 'margin', "
                                            "'least_confidence' or 'bald', got 'vibes'"),
    ({"loop.cycles": 0}, "key 'loop.cycles' must be >= 1, got 0"),
    ({"cohort.slides": 3}, "key 'cohort.slides' must be a list, got 3"),
    ({"cohort.slides": []}, "key 'cohort.slides' must be at least 1 item(s) long, got []"),
    ({"cohort.slide_mpp": 0}, "key 'cohort.slide_mpp' must be > 0, got 0"),
    ({"seeds": [0, -1]}, "key 'seeds' must hold >= 0 integers, got [0, -1]"),
    ({"budgets.l": [512, "big"]}, "key 'budgets.l' must be a non-empty list of integers"),
    ({"prototypes.classes": {"tumor": {"prompt": "tumour", "top_n": 0}}},
     "key 'prototypes.classes.tumor.top_n' must be >= 1, got 0"),
    ({"prototypes.classes": {"tumor": {"with": "tumor"}}}, "key 'prototypes.classes.tumor.with' must be a list"),
    ({"prototypes.prep.mode": "stretch"}, "key 'prototypes.prep.mode' must be one of 'crop' or 'resize'"),
    ({"embedding": "handcrafted"}, "key 'embedding' must be a mapping, got 'handcrafted'"),
    ({"embedding.encoder": None}, "missing key 'embedding.encoder'"),
    ({"task": {"kind": "detection", "trainable_layers": 6}}, "key 'task.trainable_layers' must be <= 5, got 6"),
    ({"cohort.ground_truth": {"sliderunner": "x.sqlite"}}, "key 'cohort.ground_truth' holds mitosis points "
                                                           "('sliderunner'), for task.kind 'detection'"),
    ({"strategy_params": {"uncertainty": {"measure": "bald"}}},
     "key 'strategy_params.uncertainty.measure': the study sets it (key 'loop.acquisition.measure')"),
    ({"prototypes.db": "no-such-captions"}, "key 'prototypes.db': no caption database"),
    ({"cohort.test_slides": ["slides/none.tif"]}, "key 'cohort.test_slides'"),
])
def test_bad_values_name_the_key_path_and_the_reason(study, tmp_path, changes, expected):
    assert expected in _error(_write(tmp_path, study, **changes))


def test_unreadable_files_are_one_line_errors(study, tmp_path):
    path = _write(tmp_path, study)
    path.write_bytes(path.read_bytes().replace(b"schema-test", b"sch\xe9ma"))  # Latin-1, not UTF-8
    assert "not UTF-8 text (byte 0xe9 on line 1)" in _error(path)
    path.write_text("study: a\nloop: {cycles: 2}\nloop: {cycles: 3}\n", encoding="utf-8")
    assert "key 'loop' is given twice" in _error(path)  # PyYAML alone would keep the last silently
    path.write_text("study: [a\n", encoding="utf-8")
    assert "unreadable YAML" in _error(path)
    path.write_text("- a\n- b\n", encoding="utf-8")
    assert "a study config is a mapping of keys, got list" in _error(path)


@pytest.mark.parametrize("changes", [{"embedding.ptach": 128}, {"loop.acquisition.measure": "vibes"},
                                     {"task.max_epochs": "lots"}, None])
def test_a_bad_compare_exits_2_with_one_line_and_writes_nothing(study, tmp_path, monkeypatch, capsys, changes):
    path = _write(tmp_path, study, **(changes or {}))
    if changes is None:
        path.write_bytes(b"study: \xff\xfe\n")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["compare", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"alkit: error: {path}: "), err
    assert list(work.iterdir()) == []  # no mlflow.db, no mlruns
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no out, no embeddings


def test_compare_schema_prints_the_generated_reference(capsys, study, tmp_path):
    assert main(["compare", "--schema"]) == 0
    text = capsys.readouterr().out
    assert text == render_reference(available_tasks())
    for key in ("`embedding.patch`", "`loop.acquisition.measure`", "`task.max_epochs`", "`task.box_um`",
                "`cohort.ground_truth.sliderunner`", "`prototypes.classes.<name>.with`"):
        assert key in text
    assert main(["compare"]) == 2  # neither a config nor --schema


def test_readme_holds_the_generated_reference():
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines(keepends=True)
    start = readme.index("### Study config reference\n")
    end = next(i for i in range(start + 1, len(readme)) if readme[i].startswith(("## ", "### ")))
    section = "".join(readme[start:end]).rstrip("\n") + "\n"
    assert section == render_reference(["segmentation", "detection"]), "README.md's 'Study config reference' " \
        "differs from the schema: paste the output of `alkit compare --schema` there"


@pytest.mark.parametrize("task_cls, model, reserved", [(SegmentationTask, PatchClassifierModel, RESERVED),
                                                        (DetectionTask, MitosisDetectorModel, {"kind"})])
def test_task_schemas_match_their_models(task_cls, model, reserved):
    """A task's parameter schema lists exactly its model's parameters, with the model's defaults."""
    schema = task_cls.params_schema
    assert set(keys_of(schema)) == (model_parameters(model) | reserved) - {"kind"}
    signature = inspect.signature(model).parameters
    for name, field in schema.model_fields.items():
        if name in signature:
            assert field.default == signature[name].default, name


def test_every_shipped_config_passes_the_schema():
    """Every key of the shipped study configs is a schema key (their data is not on this machine)."""
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        StudySchema.model_validate(raw)
        kind = raw.get("task", {}).get("kind", "segmentation")
        cls = {"segmentation": SegmentationTask, "detection": DetectionTask}[kind]
        cls.params_schema.model_validate({k: v for k, v in raw.get("task", {}).items() if k != "kind"})
        cls.ground_truth_schema.model_validate(raw["cohort"]["ground_truth"])
