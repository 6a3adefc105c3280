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
from alkit.prototypes.cli import add_prototype_commands
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
    add_prototype_commands(sub)
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
