"""The ``alkit`` command line: a thin layer over the Python API.

Each command imports what it uses inside its function, so `alkit --help` and the light commands start
without importing torch, Lightning or MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from alkit import __version__, options
from alkit.errors import AlkitError

log = logging.getLogger("alkit")


def _cmd_info(args: argparse.Namespace) -> int:
    from alkit.wsi.slide import Slide
    from alkit.wsi.tissue import detect_tissue

    for path in args.slides:
        with Slide(path, mpp=args.mpp) as slide:
            w, h = slide.dimensions
            tissue = detect_tissue(slide)
            info = slide.mpp_info
            print(f"{slide.path}")
            print(f"  vendor           {slide.vendor}")
            print(f"  size             {w} x {h} px  ({w * slide.mpp / 1000:.2f} x {h * slide.mpp / 1000:.2f} mm)")
            print(f"  mpp              {info.x:.4g} x {info.y:.4g} µm/px  (from {info.source})")
            power = slide.objective_power
            print(f"  objective        {f'{power:g}x' if power else 'unknown'}")
            print(f"  levels           {slide.level_count}")
            for i, ((lw, lh), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
                print(f"    [{i}] {lw} x {lh} px  downsample {ds:.4g}  ({ds * slide.mpp:.4g} µm/px)")
            print(f"  associated       {', '.join(slide.associated_images) or 'none'}")
            print(f"  tissue fraction  {tissue.fraction:.3f}  (Otsu threshold {tissue.threshold:.3f} on saturation)")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from alkit.synthetic import generate_cohort

    cohort = generate_cohort(args.out, n_slides=args.slides, size=args.size, seed=args.seed,
                             mpp=args.mpp, progress=not args.quiet)
    tumour = sum(1 for s in cohort.slides if s.tumour_area_px > 0)
    print(f"wrote {len(cohort.slides)} slides ({tumour} with tumour) to {args.out}/slides, "
          f"ground truth to {args.out}/annotations, captions to {args.out}/captions")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from alkit.embeddings.encoders.hub import check_encoder_weights

    check_encoder_weights(args.encoder)  # missing hub weights: one line, before any slide or torch
    from alkit.embeddings.cached import cached_stores
    from alkit.embeddings.cohort import expand_slide_paths

    paths = expand_slide_paths(args.slides)
    # a fully cached rerun is answered without importing torch or Lightning
    cached = cached_stores(paths, args.out, encoder=args.encoder, mpp=args.mpp, patch=args.patch,
                           stride=args.stride, min_tissue=args.min_tissue, slide_mpp=args.slide_mpp)
    if cached is not None:
        print(f"{len(cached)} stores in {args.out} ({len(cached)} were already there)")
        return 0
    from alkit.embeddings.embed import EmbedConfig, Embedder
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    config = EmbedConfig(encoder=args.encoder, mpp=args.mpp, patch=args.patch, stride=args.stride,
                         min_tissue=args.min_tissue, batch_size=args.batch_size, num_workers=args.workers,
                         accelerator=args.accelerator, devices=options.devices(args.devices), strategy=args.strategy,
                         num_nodes=args.num_nodes, precision=args.precision)
    embedder = Embedder(config, args.out, progress=not args.quiet)
    stores = embedder.embed(paths, slide_mpp=args.slide_mpp)
    print(f"{len(stores)} stores in {args.out} ({embedder.cache_hits} were already there)")
    return 0


# ---------------------------------------------------------------------- prototypes


def _open_db(args: argparse.Namespace):
    from alkit.captions import open_database, parse_columns

    db = open_database(args.db, columns=parse_columns(args.columns), embeddings=args.embeddings,
                       embedding_encoder=args.embeddings_encoder)
    print(db.report.summary())
    return db


def _groups(values: list[str] | None) -> list[list[str]]:
    return [[t.strip() for t in v.split(",") if t.strip()] for v in values or []]


def _cmd_prototypes_search(args: argparse.Namespace) -> int:
    from alkit.captions import KeywordQuery, read_id_list, search, write_hits

    db = _open_db(args)
    query = KeywordQuery(args.class_name, tuple(map(tuple, _groups(args.with_))),
                         tuple(t for g in _groups(args.without) for t in g), args.mode)
    exclude = read_id_list(args.exclude) if args.exclude else []
    result = search(db, query, exclude_ids=exclude, exclude_source=str(args.exclude or ""),
                    field="caption" if args.whole_caption else "text")
    for step in result.steps:
        print(f"  {step.remaining:>7}  {step.label}")
    write_hits(args.out, result.records())
    print(f"wrote {len(result)} hits of class {query.name!r} to {args.out}")
    return 0


def _cmd_prototypes_review(args: argparse.Namespace) -> int:
    from alkit.captions import read_hits
    from alkit.captions.review import contact_sheet

    hits = read_hits(args.hits)
    db = _open_db(args)
    if args.encoder:
        from alkit.captions.review import with_typicality
        from alkit.embeddings.encoders import get_encoder

        hits = with_typicality(hits, db, get_encoder(args.encoder, device=args.device), cache_dir=args.cache)
    title = args.title or f"{len(hits)} hits of {args.hits} ({db.name})"
    contact_sheet(hits, db, args.out, title=title, thumb=args.thumb, columns=args.columns_per_row)
    print(f"wrote a contact sheet of {len(hits)} hits to {args.out}")
    return 0


def _parse_class(spec: str) -> tuple[str, str | None]:
    from alkit.prototypes.prototype_set import PrototypeError

    name, sep, hits = spec.partition("=")
    if not name.strip() or (sep and not hits.strip()):
        raise PrototypeError(f"--class {spec!r}: write NAME (text-to-image retrieval) or NAME=HITS.json "
                             "(ids from `alkit prototypes search`)")
    return name.strip(), hits.strip() or None


def _cmd_prototypes_build(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from alkit.embeddings.encoders.hub import check_encoder_weights

    check_encoder_weights(args.encoder)  # missing hub weights: one line, before the database or torch
    from alkit.captions import ImagePrep, read_id_list, write_hits
    from alkit.embeddings.encoders import get_encoder
    from alkit.embeddings.store import read_attrs
    from alkit.prototypes.build import ClassQuery, FoundImages, build_prototype_set
    from alkit.prototypes.prototype_set import PrototypeError, check_encoder_match, read_boxes

    classes = [_parse_class(c) for c in args.class_]
    names = [n for n, _ in classes]
    if len(set(names)) != len(names):
        raise PrototypeError(f"--class names must be unique, got {', '.join(names)}")
    db = _open_db(args)
    encoder = get_encoder(args.encoder, device=args.device)
    if args.check_store:  # before any work: prototypes of another encoder than the slides' are useless
        attrs = read_attrs(args.check_store)
        check_encoder_match(encoder.name, encoder.dim, str(attrs.get("encoder")), int(attrs.get("dim", -1)),
                            what="the prototypes", against=f"the slide embeddings {args.check_store}")
    exclude = set(read_id_list(args.exclude)) if args.exclude else set()
    retrieval_names = [n for n, h in classes if h is None]

    def query(name: str, hits_file: str | None) -> ClassQuery:
        if hits_file is not None:
            return ClassQuery(name, hits_file=hits_file)
        contrasted = args.contrast or args.rank == "softmax"  # a softmax is over the retrieval classes' prompts
        contrast = ([n for n in retrieval_names if n != name] if contrasted else []) + list(args.contrast_with or [])
        return ClassQuery(name, prompt=args.prompt, top_n=args.top_n, tags=tuple(args.tag or ()),
                          contrast=tuple(contrast), rank=args.rank)

    def report(found: FoundImages) -> None:
        name = found.query.name
        if found.query.hits_file is not None:
            total = len(found.ids) + found.provenance["excluded"]
            print(f"{name}: {total} ids from {found.query.hits_file}"
                  + (f", {len(found.ids)} after --exclude" if exclude else ""))
            return
        print(f"{name}: prompt {found.provenance['prompt']!r}")
        for step in found.steps:
            print(f"  {step.remaining:>7}  {step.label}")
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "class"
        write_hits(Path(args.out) / f"retrieved_{slug}.json", found.result.records())

    queries = [query(name, hits_file) for name, hits_file in classes]
    protos = build_prototype_set(db, queries, encoder, prep=ImagePrep(args.prep, args.size, args.scale),
                                 boxes=read_boxes(args.boxes) if args.boxes else None, exclude=exclude,
                                 skip_missing=args.skip_missing, cache_dir=args.cache, use_cache=not args.no_cache,
                                 batch_size=args.batch_size, progress=not args.quiet, on_found=report)
    protos.save(args.out)
    ks = ", ".join(f"{n}: {c.k}" for n, c in protos.classes.items())
    print(f"wrote prototypes ({ks}; encoder {encoder.name}, {encoder.dim}-d) to {args.out}")
    return 0


def _add_db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True,
                   help="caption database: an ARCH root (books_set/, pubmed_set/), one ARCH set folder, or a "
                        "table file (.csv .tsv .jsonl .json .parquet)")
    p.add_argument("--columns", default=None,
                   help="table column mapping ROLE=COLUMN,... (roles: id caption image tags source letter "
                        "figure_id embedding), e.g. id=image_id,caption=text")
    p.add_argument("--embeddings", default=None,
                   help="precomputed image embeddings (.npy/.npz, one row per table row: OpenPath-style)")
    p.add_argument("--embeddings-encoder", default=None,
                   help="the encoder spec that made --embeddings (e.g. plip)")


def _add_prototype_commands(sub) -> None:
    protos = sub.add_parser("prototypes", help="find typical images of task classes in caption databases and "
                                               "embed them as prototypes")
    psub = protos.add_subparsers(dest="prototypes_command", required=True, metavar="STEP")

    search = psub.add_parser("search", help="keyword search of a caption database; writes the hits as JSON")
    _add_db_options(search)
    search.add_argument("--with", dest="with_", action="append", required=True, metavar="SYNONYMS",
                        help="a group of comma-separated synonyms; a caption must match one of every group "
                             "(repeat for each group)")
    search.add_argument("--without", action="append", metavar="TERMS",
                        help="comma-separated terms of which any match rejects a caption (may repeat)")
    search.add_argument("--mode", choices=("substring", "prefix", "word"), default="substring",
                        help="substring (default: 'tumor' finds 'tumors'), prefix (start of a word) or word "
                             "(whole words only); always case-insensitive")
    search.add_argument("--whole-caption", action="store_true",
                        help="search whole captions, not each panel's own part of multi-panel captions")
    search.add_argument("--exclude", default=None, help="file of ids to leave out (one per line, or a JSON list)")
    search.add_argument("--class", dest="class_name", default="query", help="class name, for messages and the hits")
    search.add_argument("--out", required=True, type=options.out_file, help="hits file (.json)")
    search.set_defaults(func=_cmd_prototypes_search)

    review = psub.add_parser("review", help="contact sheet of hits (PNG or HTML) for the manual clean-up")
    review.add_argument("hits", metavar="HITS", help="hits file from `alkit prototypes search`")
    _add_db_options(review)
    review.add_argument("--out", required=True, type=options.out_file, help="sheet.png, sheet.jpg or sheet.html")
    review.add_argument("--thumb", type=options.whole(16, 2048), default=224, help="thumbnail side in px (default 224)")
    review.add_argument("--per-row", dest="columns_per_row", type=options.whole(1, 100), default=5, help="PNG: hits per row")
    review.add_argument("--title", default="")
    review.add_argument("--encoder", default=None,
                        help="also show each hit's typicality (similarity to the other hits) under this encoder "
                             "and put the least typical hits first")
    review.add_argument("--device", default="cpu", help="torch device for --encoder (default cpu)")
    review.add_argument("--cache", default=None, help="image embedding cache folder (default ~/.cache/alkit)")
    review.set_defaults(func=_cmd_prototypes_review)

    build = psub.add_parser("build", help="embed the images of each class into a prototype set (npz + json)")
    _add_db_options(build)
    build.add_argument("--class", dest="class_", action="append", required=True, metavar="NAME[=HITS]",
                       help="a class: NAME=HITS.json takes the ids of a search; NAME alone retrieves images by "
                            "text (needs an image-text encoder); repeat per class")
    build.add_argument("--encoder", required=True, help="the encoder the slides were embedded with")
    build.add_argument("--out", required=True, type=options.out_dir, help="output folder (prototypes.npz, prototypes.json)")
    build.add_argument("--prompt", default="An H&E image of {class_name} tissue.",
                       help="retrieval prompt template (default: 'An H&E image of {class_name} tissue.')")
    build.add_argument("--top-n", type=options.whole(1, 1_000_000), default=100, help="retrieval: images kept per class (default 100)")
    build.add_argument("--tag", action="append", help="retrieval: keep images with this tag (e.g. BreastPath)")
    build.add_argument("--contrast", action="store_true",
                       help="retrieval: keep only images closer to their class's prompt than to the other "
                            "retrieval classes' prompts")
    build.add_argument("--contrast-with", action="append", metavar="NAME",
                       help="retrieval: a further class name to contrast against (may repeat)")
    build.add_argument("--rank", choices=("cosine", "softmax"), default="cosine",
                       help="retrieval: rank by cosine to the class's prompt (default), or as the paper's code by "
                            "the softmax over the retrieval classes' prompts (logits 100 x cosine; implies --contrast)")
    build.add_argument("--exclude", default=None, help="file of ids to leave out (all classes)")
    build.add_argument("--prep", choices=("crop", "resize"), default="crop",
                       help="crop (default): centre crop / pad, magnification kept; resize: shorter side to --size")
    build.add_argument("--size", type=options.whole(8, 4096), default=None, help="prepared image side (default: the encoder's input size; give the slides' "
                            "--patch size when it differs, so prototypes and patches are rescaled alike)")
    build.add_argument("--scale", type=options.number(0, 100, lo_open=True), default=1.0,
                       help="resample images by this factor first (image µm/px ÷ slide µm/px), if known")
    build.add_argument("--boxes", default=None, help="JSON {id: [x, y, w, h]} crop boxes in image pixels")
    build.add_argument("--skip-missing", action="store_true", help="leave out ids whose image is missing")
    build.add_argument("--check-store", default=None, metavar="STORE.h5",
                       help="a slide embedding store: refuse to write prototypes of a different encoder")
    build.add_argument("--cache", default=None, help="image embedding cache folder (default ~/.cache/alkit)")
    build.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    build.add_argument("--device", default="cpu", help="torch device (default cpu)")
    build.add_argument("--batch-size", type=options.whole(1, 4096), default=32)
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_cmd_prototypes_build)


def _cmd_import_features(args: argparse.Namespace) -> int:
    from alkit.embeddings.foreign import import_features

    stores = import_features(args.features, args.out, args.format, slides_dir=args.slides, slide_mpp=args.slide_mpp,
                             encoder=args.encoder, patch_px=args.patch_px, coords_dir=args.coords, snap=args.snap,
                             progress=not args.quiet)
    print(f"imported {len(stores)} {args.format} feature files as stores in {args.out}")
    return 0


def _add_session_commands(sub) -> None:
    """``alkit session init | next | ingest | train | status`` (commands in :mod:`alkit.session.cli`)."""
    from alkit.session.cli import add_session_commands

    add_session_commands(sub)


def _cmd_encoders(args: argparse.Namespace) -> int:
    from alkit.embeddings.encoders.cards import encoder_card, format_table

    if args.spec:
        card = encoder_card(args.spec)
        for key, value in vars(card).items():
            if value not in ((), None, "") or key in ("dim", "input_size"):
                print(f"{key:13} {value}")
        return 0
    print(format_table(markdown=args.markdown))
    return 0


def _cmd_select(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from alkit.embeddings.cohort import Cohort
    from alkit.selection.export import write_selection
    from alkit.selection.sizing import RegionSize, select_regions
    from alkit.selection.strategy import StrategyError, get_strategy

    cohort = Cohort.from_store_dir(args.stores, encoder=args.encoder)
    params = {}
    prototype_set = None
    if args.strategy == "prototype":
        if not args.prototypes:
            raise StrategyError("--prototypes DIR is required for the prototype strategy (alkit prototypes build)")
        params = {"prototypes": args.prototypes, "selector": args.selector}
        if args.classes:
            params["classes"] = args.classes.split(",")
    strategy = get_strategy(args.strategy, **params)
    if args.prototypes and args.strategy == "prototype":  # the set's id: its folder and archive digest
        try:
            digest = json.loads((Path(args.prototypes) / "prototypes.json").read_text())["npz"]["sha256"]
            prototype_set = f"{Path(args.prototypes).resolve().name}@{str(digest)[:16]}"
        except (OSError, ValueError, KeyError, TypeError):
            prototype_set = str(Path(args.prototypes).resolve())
    if args.size is not None and args.size_um is not None:
        raise AlkitError("give the region side as --size (level-0 px) or --size-um (µm), not both")
    size = RegionSize(um=args.size_um) if args.size_um is not None else RegionSize(px=args.size or 8192)
    selection = select_regions(strategy, cohort, args.n, size, np.random.default_rng(args.seed))
    options = ("stores", "strategy", "n", "size", "size_um", "prototypes", "selector", "classes", "encoder", "seed",
               "no_png", "out")
    command = "alkit select" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k in options if (v := getattr(args, k, None)) not in (None, False))
    provenance = {"command": command,
                  "params": {k: (str(Path(v).resolve()) if k == "prototypes" else v) for k, v in params.items()},
                  "prototype_set": prototype_set, "selector": args.selector if args.strategy == "prototype" else None,
                  "budget": size.budget_dict(args.n), "seed": args.seed}
    files = write_selection(selection, cohort, args.out, png=not args.no_png, provenance=provenance)
    short = sum(v for v in selection.shortfall.values() if v > 0)
    print(f"{len(selection.regions)} regions on {len(cohort)} slides -> {files.regions}"
          + (f" ({short} short of the budget, see the warnings)" if short else ""))
    for kind, paths in sorted(files.by_kind().items()):
        if not kind:
            continue
        if len(paths) <= 6:
            print(f"{kind + ':':8} " + "  ".join(str(p) for p in paths))
        else:
            print(f"{kind + ':':8} {len(paths)} files in {paths[0].parent}")
    if files.removed:
        print(f"removed: {len(files.removed)} stale file(s) of an earlier export in {args.out}")
    return 0


def _print_summary(summary: dict, tracking_uri: str) -> None:
    """The summary table, its files, and how to see the study in MLflow: for a tracking server the
    page to open, for a local store (SQLite file) the ``mlflow ui`` command that serves it first."""
    print(summary["markdown"].read_text())
    print(f"summary table: {summary['markdown']}  (CSV: {summary['csv']})")
    print(f"plots:         {'  '.join(str(v) for k, v in summary.items() if k not in ('markdown', 'csv'))}")
    location = getattr(summary, "mlflow", None)
    if tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI:     open {location.ui_url() if location else tracking_uri} in a browser")
    else:
        print(f"MLflow UI:     mlflow ui --backend-store-uri {tracking_uri}")
        if location is not None:
            print(f"               then open {location.ui_url()}")


def _cmd_compare(args: argparse.Namespace) -> int:
    from alkit.study.config import load_config

    if args.schema:  # the key reference generated from the config schema (README's "Study config reference")
        from alkit.al.task import available_tasks
        from alkit.study.schema import render_reference

        print(render_reference(available_tasks()), end="")
        return 0
    if args.config is None:
        raise AlkitError("compare needs a study CONFIG (see experiments/), or --schema for the key reference")
    config = load_config(args.config)  # every config error surfaces here, before any work or import of MLflow
    from alkit.study.run import run_study
    from alkit.study.summary import summarise_study
    from alkit.study.tracking import resolve_tracking_uri
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    uri = resolve_tracking_uri(args.tracking_uri)
    runs = run_study(config, tracking_uri=uri, progress=not args.quiet, shard=args.shard)
    _print_summary(summarise_study(runs, config.out), uri)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from alkit.study.demo import run_demo
    from alkit.study.tracking import resolve_tracking_uri
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    uri = resolve_tracking_uri(args.tracking_uri)
    result = run_demo(args.out, quick=args.quick, tracking_uri=uri, progress=not args.quiet)
    print(f"{len(result['runs'])} runs of {result['config']} (tumour segmentation)")
    _print_summary(result["summary"], uri)
    print(f"\n{len(result['mitosis_runs'])} runs of {result['mitosis_config']} (mitotic-figure detection)")
    _print_summary(result["mitosis_summary"], uri)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"alkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="vendor, size, levels, mpp and tissue fraction of slides")
    info.add_argument("slides", nargs="+", metavar="SLIDE")
    info.add_argument("--mpp", type=options.MPP, default=None,
                      help="microns per level-0 pixel, for slides whose files lack it")
    info.set_defaults(func=_cmd_info)

    synth = sub.add_parser("synth", help="write a synthetic cohort: slides, ground truth, captions")
    synth.add_argument("out", metavar="OUT", type=options.out_dir)
    synth.add_argument("--slides", type=options.whole(1, 1000), default=6, help="number of slides (default 6)")
    synth.add_argument("--size", type=options.whole(512, 65536), default=4096, help="slide side in level-0 px (default 4096)")
    synth.add_argument("--seed", type=options.SEED, default=0)
    synth.add_argument("--mpp", type=options.number(0.05, 10), default=0.25, help="level-0 resolution (default 0.25 µm/px)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=_cmd_synth)
    embed = sub.add_parser("embed", help="embed the tissue patches of slides into cached per-slide stores")
    embed.add_argument("slides", nargs="+", metavar="SLIDE",
                       help="slide paths, globs ('slides/*.svs') or list files (.txt, one path per line)")
    embed.add_argument("--out", required=True, type=options.out_dir, help="folder of the stores")
    embed.add_argument("--encoder", default="handcrafted",
                       help="encoder spec: handcrafted | resnet18[@imagenet|@CKPT] | open_clip:ARCH[@WEIGHTS] | "
                            "plip[@DIR] | timm:ARCH[@WEIGHTS] | uni, virchow2, h-optimus-0, ... [@WEIGHTS] "
                            "(`alkit encoders` lists them; default handcrafted: offline, no download)")
    embed.add_argument("--mpp", type=options.MPP, default=None, help="patch resolution (default: the encoder's)")
    embed.add_argument("--patch", type=options.whole(8, 65536), default=256, help="patch side in px at --mpp (default 256)")
    embed.add_argument("--stride", type=options.whole(1, 65536), default=None,
                       help="grid stride in px at --mpp (default: --patch)")
    embed.add_argument("--min-tissue", type=options.number(0, 1), default=0.5,
                       help="tissue fraction a cell needs, 0..1 (default 0.5)")
    embed.add_argument("--slide-mpp", type=options.MPP, default=None,
                       help="level-0 µm/px for slides whose files lack it (never overrides metadata)")
    embed.add_argument("--batch-size", type=options.whole(1, 65536), default=64)
    embed.add_argument("--workers", type=options.whole(0, 256), default=2, help="patch-reader processes per device (default 2)")
    embed.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto | cpu | gpu")
    embed.add_argument("--devices", default="auto", help="Lightning devices: auto | N")
    embed.add_argument("--strategy", default="auto", help="Lightning strategy: auto | ddp | ...")
    embed.add_argument("--num-nodes", type=options.whole(1, 100000), default=1)
    embed.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    embed.set_defaults(func=_cmd_embed)
    encoders = sub.add_parser("encoders", help="list the encoders by name: dimension, default mpp, text tower, gating")
    encoders.add_argument("spec", nargs="?", default=None, help="show one encoder's card (e.g. virchow2)")
    encoders.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    encoders.set_defaults(func=_cmd_encoders)
    _add_prototype_commands(sub)
    _add_session_commands(sub)
    select = sub.add_parser("select", help="choose the regions to annotate: random, diversity or prototype")
    select.add_argument("--stores", required=True, help="folder of embedding stores (alkit embed --out)")
    select.add_argument("--strategy", required=True, help="random | diversity | prototype | an installed plugin")
    select.add_argument("--n", type=options.whole(1, 10000), default=3, help="regions per slide (default 3)")
    select.add_argument("--size", type=options.whole(16, 1 << 20), default=None,
                        help="region side in level-0 px (default 8192)")
    select.add_argument("--size-um", type=options.number(1, 1e6), default=None, metavar="UM",
                        help="region side in µm instead, converted per slide with its mpp (equal physical regions "
                             "on mixed-resolution cohorts)")
    select.add_argument("--prototypes", default=None, help="prototype set folder (alkit prototypes build)")
    select.add_argument("--selector", default="standard", choices=["standard", "adaptive"])
    select.add_argument("--classes", default=None, help="comma-separated classes of the prototype set to use")
    select.add_argument("--encoder", default=None, help="use the stores of this encoder only")
    select.add_argument("--seed", type=options.SEED, default=0)
    select.add_argument("--no-png", action="store_true", help="skip the overview PNGs")
    select.add_argument("--out", required=True, type=options.out_dir, help="output folder (regions.json, qupath/, asap/, png/)")
    select.set_defaults(func=_cmd_select)
    imp = sub.add_parser("import-features", help="turn TRIDENT or CLAM feature files (.h5) into embedding stores")
    imp.add_argument("--format", required=True, choices=("trident", "clam"), help="the tool that wrote the files")
    imp.add_argument("--features", required=True, nargs="+", metavar="PATH",
                     help="feature files or folders of them (one SLIDE.h5 per slide)")
    imp.add_argument("--slides", default=None, metavar="DIR",
                     help="folder of the slides (matched by file stem): size, mpp and alkit's tissue fractions")
    imp.add_argument("--slide-mpp", type=options.MPP, default=None,
                     help="level-0 µm/px: for slides whose files lack it, or all slides without --slides")
    imp.add_argument("--encoder", default=None,
                     help="encoder name for the stores (default FORMAT:NAME from the files); give the alkit spec "
                          "of the same model to build prototypes with it")
    imp.add_argument("--patch-px", type=options.number(0, 1 << 20, lo_open=True), default=None,
                     help="patch side in level-0 px, for files that do not record it (CLAM)")
    imp.add_argument("--coords", default=None, metavar="DIR",
                     help="CLAM: its patches/ folder (SLIDE.h5 with the patch size and level)")
    imp.add_argument("--snap", action="store_true",
                     help="place patches of shifted or per-contour grids in the nearest alkit cell "
                          "(moves each by at most half a stride)")
    imp.add_argument("--out", required=True, type=options.out_dir, help="folder of the stores")
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    imp.set_defaults(func=_cmd_import_features)
    compare = sub.add_parser("compare", help="run a study config: strategies x budgets x seeds, tracked in MLflow")
    compare.add_argument("config", metavar="CONFIG", nargs="?", default=None, help="study YAML (see experiments/)")
    compare.add_argument("--schema", action="store_true",
                         help="print the reference of every study-config key (type, default, meaning) and exit")
    compare.add_argument("--tracking-uri", default=None,
                         help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    compare.add_argument("--shard", type=options.shard, default=None, metavar="K/N",
                         help="run only the K-th of N disjoint parts of the grid (1-based), e.g. one per "
                              "machine sharing a tracking server; the summary covers every finished run")
    compare.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(func=_cmd_compare)

    demo = sub.add_parser("demo", help="the offline demo: synthetic cohort, prototypes, tracked comparison")
    demo.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    demo.add_argument("--quick", action="store_true", help="a small grid for CI (about a minute)")
    demo.add_argument("--tracking-uri", default=None, help="as for compare")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        return args.func(args)
    except AlkitError as exc:
        print(f"alkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's 128 + SIGINT; atomic writes left nothing half written
        print(f"alkit: interrupted: {args.command} stopped (the files it finished are complete)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
