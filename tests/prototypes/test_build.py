"""The one prototype-building path (alkit.prototypes.build): class queries from study configs, finding ids by
given ids, hits files, keywords and retrieval (minus exclusions), crop prototypes, and the CLI giving the same
files as the Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alkit.captions import KeywordQuery, load_arch_set, read_hits, search, write_hits
from alkit.captions.images import ImagePrep
from alkit.captions.retrieval import retrieve
from alkit.cli import main
from alkit.embeddings.encoders import get_encoder
from alkit.prototypes.build import (ClassQuery, CropSpec, FoundImages, build_prototype_set, find_class_images,
                                   study_prototypes)
from alkit.prototypes.crops import PATCH_PX, build_crop_prototypes, synthetic_mitosis_boxes
from alkit.prototypes.prototype_set import PrototypeError, PrototypeSet, build_prototypes
from alkit.synthetic import generate_cohort

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TUMOUR = {"with": [["breast"], ["tumor", "cancer", "carcinoma"]], "without": ["IHC", "immunohistochemical"]}
MITOTIC = {"with": [["mitotic", "mitoses", "mitosis"]], "without": ["IHC"]}


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """A caption database of 60 synthetic images and its truth (kind and figures per image)."""
    root = tmp_path_factory.mktemp("build")
    generate_cohort(root / "c", n_slides=0, seed=0, n_caption_images=60, progress=False)
    folder = root / "c" / "captions"
    truth = {v["uuid"]: v for v in json.loads((folder / "truth.json").read_text()).values()}
    return folder, load_arch_set(folder), truth


@pytest.fixture(scope="module")
def handcrafted():
    return get_encoder("handcrafted")


@pytest.fixture(scope="module")
def clip(tiny_clip_spec):
    return get_encoder(tiny_clip_spec)


def _kind(truth, kind):
    return sorted(i for i, v in truth.items() if v["kind"] == kind)


def test_keyword_query_from_config(captions, handcrafted):
    folder, db, truth = captions
    query = ClassQuery.from_config("tumor", TUMOUR)
    assert query.source == "keywords" and query.keywords == KeywordQuery(
        "tumor", (("breast",), ("tumor", "cancer", "carcinoma")), ("IHC", "immunohistochemical"))
    found = find_class_images(db, query, handcrafted)
    assert found.ids == search(db, query.keywords).ids and found.ids
    assert found.provenance == {"keywords": {"with": TUMOUR["with"], "without": TUMOUR["without"]}}
    assert [s.remaining for s in found.steps] == [s.remaining for s in search(db, query.keywords).steps]
    word = ClassQuery.from_config("tumor", {"with": [["carcino"]], "mode": "word"})
    with pytest.raises(Exception, match="no caption"):  # whole words only: 'carcino' is no word
        find_class_images(db, word, handcrafted)
    # excluded ids are left out and counted
    excluded = found.ids[:2]
    fewer = find_class_images(db, query, handcrafted, exclude=excluded)
    assert fewer.ids == found.ids[2:] and fewer.provenance["excluded"] == 2


def test_given_ids_and_their_recorded_query(captions, handcrafted, tmp_path):
    folder, db, truth = captions
    ids = _kind(truth, "normal")[:4]
    query = ClassQuery.from_config("normal", {"ids": ids})
    found = find_class_images(db, query, handcrafted)
    assert found.ids == ids and found.provenance == {"ids": ids} and found.steps == []
    assert find_class_images(db, query, handcrafted, exclude=ids[:1]).provenance == {"ids": ids, "excluded": 1}
    # a whole-image class given by ids records no query (its rows list the ids), like the study always did
    protos = build_prototype_set(db, [query], handcrafted, cache_dir=tmp_path)
    assert protos.classes["normal"].query == {} and [p["id"] for p in protos.classes["normal"].provenance] == ids
    same = build_prototypes(db, {"normal": ids}, handcrafted, cache_dir=tmp_path)
    np.testing.assert_array_equal(protos["normal"], same["normal"])


def test_hits_file_and_exclusion(captions, handcrafted, tmp_path):
    folder, db, truth = captions
    hits = search(db, ClassQuery.from_config("tumor", TUMOUR).keywords)
    hits_file = write_hits(tmp_path / "hits.json", hits.records())
    query = ClassQuery("tumor", hits_file=str(hits_file))
    found = find_class_images(db, query, handcrafted, exclude=hits.ids[:3] + ["not-a-hit"])
    assert found.ids == hits.ids[3:] and found.provenance == {"hits_file": str(hits_file), "excluded": 3}
    seen: list[FoundImages] = []
    with pytest.raises(PrototypeError, match=r"no ids left from .*hits.json after --exclude"):
        build_prototype_set(db, [query], handcrafted, exclude=hits.ids, on_found=seen.append, cache_dir=tmp_path)
    assert len(seen) == 1 and seen[0].ids == []  # reported before the refusal (the CLI prints it)


def test_retrieval_query(captions, clip, tmp_path):
    folder, db, truth = captions
    query = ClassQuery.from_config("tumor", {"prompt": "An H&E image of {class_name}.", "top_n": 5})
    assert query.source == "prompt" and query.top_n == 5 and query.tags == ()
    found = find_class_images(db, query, clip, exclude=_kind(truth, "ihc"))
    expected = retrieve(db, clip, "tumor", template="An H&E image of {class_name}.", top_n=5,
                        exclude_ids=_kind(truth, "ihc"))
    assert found.ids == expected.ids and found.provenance == expected.query() and len(found.ids) == 5
    assert not set(found.ids) & set(_kind(truth, "ihc"))
    assert [str(s) for s in found.steps] == ["entries: 60", "with an image or embedding: 60",
                                             "minus excluded ids: 46", "top 5: 5"]
    assert found.result.records()[0]["rank"] == 1
    contrast = ClassQuery("tumor", prompt="An H&E image of {class_name}.", contrast=("normal",))
    found = find_class_images(db, contrast, clip)
    assert found.provenance["contrast_prompts"] == ["An H&E image of normal."]
    tagged = ClassQuery.from_config("tumor", {"prompt": "{class_name}", "tags": ["BreastPath"]})
    assert tagged.tags == ("BreastPath",)
    with pytest.raises(Exception, match="tagged BreastPath"):  # ARCH images carry no tags
        find_class_images(db, tagged, clip)


def test_crop_prototypes(captions, handcrafted, tmp_path):
    folder, db, truth = captions
    crops = CropSpec.from_config({"figures": str(folder / "truth.json")})
    assert crops == CropSpec(figures=str(folder / "truth.json")) and crops.side == PATCH_PX
    query = ClassQuery.from_config("mitotic figure", MITOTIC)
    protos = build_prototype_set(db, [query], handcrafted, crops=crops, cache_dir=tmp_path)
    ids = search(db, query.keywords).ids
    boxes = synthetic_mitosis_boxes(folder / "truth.json")
    same = build_crop_prototypes(db, ids, handcrafted, name="mitotic figure", boxes=boxes, cache_dir=tmp_path,
                                 query={"keywords": {"with": MITOTIC["with"], "without": MITOTIC["without"]}})
    np.testing.assert_array_equal(protos["mitotic figure"], same["mitotic figure"])
    assert protos.classes["mitotic figure"].query == same.classes["mitotic figure"].query == {
        "crops": "64x64 resized crops around the figure", "keywords": {"with": MITOTIC["with"],
                                                                       "without": MITOTIC["without"]}}
    assert protos.preprocessing["mode"] == "resize" and protos.preprocessing["size"] == 64
    assert all(p["box"] == list(boxes[p["id"]]) for p in protos.classes["mitotic figure"].provenance)
    # given ids, centre crops of a chosen side, and a crop-box file; ids are recorded for crop sets
    mitoses = _kind(truth, "mitosis")[:3]
    ids_query = ClassQuery.from_config("mitosis", {"ids": mitoses})
    centre = build_prototype_set(db, [ids_query], handcrafted, crops=CropSpec.from_config({"side": 40}),
                                 cache_dir=tmp_path)
    assert centre.classes["mitosis"].query["ids"] == mitoses
    assert all(p["box"][2:] == [40, 40] for p in centre.classes["mitosis"].provenance)
    (tmp_path / "boxes.json").write_text(json.dumps({mitoses[0]: [1, 2, 30, 30]}))
    boxed = build_prototype_set(db, [ids_query], handcrafted, crops=CropSpec(boxes=str(tmp_path / "boxes.json")),
                                cache_dir=tmp_path)
    assert boxed.classes["mitosis"].provenance[0]["box"] == [1, 2, 30, 30]
    with pytest.raises(PrototypeError, match="one class"):
        build_prototype_set(db, [ids_query, query], handcrafted, crops=crops)
    with pytest.raises(PrototypeError, match="their own image preparation"):
        build_prototype_set(db, [ids_query], handcrafted, crops=crops, boxes={})


def test_study_prototypes_from_a_config_mapping(captions, handcrafted):
    """A study's ``prototypes`` mapping (db + classes [+ crops]) builds what the Python API builds."""
    folder, db, truth = captions
    classes = {"tumor": TUMOUR, "normal": {"ids": _kind(truth, "normal")}}
    whole = study_prototypes({"db": str(folder), "classes": classes}, handcrafted)
    same = build_prototype_set(db, [ClassQuery.from_config("tumor", TUMOUR),
                                    ClassQuery("normal", ids=tuple(_kind(truth, "normal")))], handcrafted)
    assert whole.names == ["tumor", "normal"] and whole.preprocessing == same.preprocessing
    np.testing.assert_array_equal(whole["tumor"], same["tumor"])
    crops = {"figures": str(folder / "truth.json")}
    mito = study_prototypes({"db": str(folder), "classes": {"mitosis": MITOTIC}, "crops": crops}, handcrafted,
                            crops=True)
    assert mito.preprocessing["size"] == 64 and mito.classes["mitosis"].query["crops"].startswith("64x64")
    with pytest.raises(PrototypeError, match=r"'prototypes.classes.mitosis.withou' does not go with 'with'"):
        study_prototypes({"db": str(folder), "classes": {"mitosis": {**MITOTIC, "withou": []}}}, handcrafted)


@pytest.mark.parametrize("mapping, match", [
    ({}, r"'prototypes.classes.c' needs exactly one of"),
    ({"ids": ["a"], "with": [["x"]]}, r"needs exactly one of"),
    ({"with": [["x"]], "top_n": 3}, r"'prototypes.classes.c.top_n' does not go with 'with'"),
    ({"with": ["breast"]}, r"'prototypes.classes.c.with' must be a list of synonym lists"),
    ({"with": [["x"]], "without": "IHC"}, r"'prototypes.classes.c.without' must be a list"),
    ({"with": [["x"]], "mode": "regex"}, r"'prototypes.classes.c.mode' must be one of"),
    ({"prompt": "{class_name}", "top_n": 0}, r"'prototypes.classes.c.top_n' must be a positive integer"),
    ({"prompt": "{class_name}", "tags": "BreastPath"}, r"'prototypes.classes.c.tags' must be a list"),
    ({"prompt": 3}, r"'prototypes.classes.c.prompt' must be a prompt template"),
    ({"ids": []}, r"'prototypes.classes.c.ids' must be a non-empty list"),
    ("tumor", r"'prototypes.classes.c' must be a mapping"),
])
def test_class_query_config_errors_name_the_key(mapping, match):
    with pytest.raises(PrototypeError, match=match):
        ClassQuery.from_config("c", mapping)


def test_crop_spec_and_query_errors():
    for mapping, match in [({"size": 64}, "knows 'figures'"), ({"figures": "a", "boxes": "b"}, "not both"),
                           ({"side": 0}, r"'prototypes.crops.side' must be a positive"),
                           ({"boxes": 3}, r"'prototypes.crops.boxes' must be a file path")]:
        with pytest.raises(PrototypeError, match=match):
            CropSpec.from_config(mapping)
    with pytest.raises(PrototypeError, match="exactly one of"):
        ClassQuery("c", ids=("a",), prompt="{class_name}")
    with pytest.raises(PrototypeError, match="exactly one of"):
        ClassQuery("c")
    with pytest.raises(PrototypeError, match="unique"):
        build_prototype_set(None, [ClassQuery("c", ids=("a",)), ClassQuery("c", ids=("b",))], None)


def test_cli_and_api_write_the_same_prototypes(captions, tiny_clip_spec, clip, tmp_path, capsys):
    """``alkit prototypes build`` is a thin caller of build_prototype_set: same npz, same json (but the time)."""
    folder, db, truth = captions
    hits = search(db, ClassQuery.from_config("tumor", TUMOUR).keywords)
    hits_file = write_hits(tmp_path / "hits.json", hits.records())
    exclude = [hits.ids[0], _kind(truth, "ihc")[0]]
    (tmp_path / "exclude.txt").write_text("".join(f"{i}\n" for i in exclude))
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    assert main(["prototypes", "build", "--db", str(folder), "--encoder", tiny_clip_spec, "--class",
                 f"tumor={hits_file}", "--class", "normal", "--contrast-with", "fat", "--top-n", "4",
                 "--exclude", str(tmp_path / "exclude.txt"), "--prep", "resize", "--size", "96",
                 "--cache", str(tmp_path / "cache"), "--out", str(cli_out), "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == f"tumor: {len(hits)} ids from {hits_file}, {len(hits) - 1} after --exclude"
    assert printed[2] == "normal: prompt 'An H&E image of normal tissue.'"
    queries = [ClassQuery("tumor", hits_file=str(hits_file)),
               ClassQuery("normal", prompt="An H&E image of {class_name} tissue.", top_n=4, contrast=("fat",))]
    api = build_prototype_set(db, queries, clip, prep=ImagePrep("resize", 96), exclude=exclude,
                              cache_dir=tmp_path / "cache")
    api.save(api_out)
    assert (cli_out / "prototypes.npz").read_bytes() == (api_out / "prototypes.npz").read_bytes()
    docs = [json.loads((d / "prototypes.json").read_text()) for d in (cli_out, api_out)]
    for doc in docs:
        doc.pop("created")
    assert docs[0] == docs[1]
    assert docs[0]["classes"][0]["query"] == {"hits_file": str(hits_file), "excluded": 1}
    retrieved = [h["id"] for h in read_hits(cli_out / "retrieved_normal.json")]
    assert retrieved == [p["id"] for p in PrototypeSet.load(cli_out).classes["normal"].provenance]
