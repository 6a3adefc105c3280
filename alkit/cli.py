"""The ``alkit`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from alkit import __version__
from alkit.errors import AlkitError

log = logging.getLogger("alkit")


def _cmd_info(args: argparse.Namespace) -> int:
    from alkit.slide import Slide
    from alkit.tissue import detect_tissue

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
    from alkit.cohort import expand_slide_paths
    from alkit.embed import EmbedConfig, Embedder

    paths = expand_slide_paths(args.slides)
    config = EmbedConfig(encoder=args.encoder, mpp=args.mpp, patch=args.patch, stride=args.stride,
                         min_tissue=args.min_tissue, batch_size=args.batch_size, num_workers=args.workers,
                         accelerator=args.accelerator, devices=_devices(args.devices), strategy=args.strategy,
                         num_nodes=args.num_nodes, precision=args.precision)
    embedder = Embedder(config, args.out, progress=not args.quiet)
    stores = embedder.embed(paths, slide_mpp=args.slide_mpp)
    print(f"{len(stores)} stores in {args.out} ({embedder.cache_hits} were already there)")
    return 0


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"alkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="vendor, size, levels, mpp and tissue fraction of slides")
    info.add_argument("slides", nargs="+", metavar="SLIDE")
    info.add_argument("--mpp", type=float, default=None,
                      help="microns per level-0 pixel, for slides whose files lack it")
    info.set_defaults(func=_cmd_info)

    synth = sub.add_parser("synth", help="write a synthetic cohort: slides, ground truth, captions")
    synth.add_argument("out", metavar="OUT")
    synth.add_argument("--slides", type=int, default=6, help="number of slides (default 6)")
    synth.add_argument("--size", type=int, default=4096, help="slide side in level-0 px (default 4096)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--mpp", type=float, default=0.25, help="level-0 resolution (default 0.25 µm/px)")
    synth.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    synth.set_defaults(func=_cmd_synth)
    embed = sub.add_parser("embed", help="embed the tissue patches of slides into cached per-slide stores")
    embed.add_argument("slides", nargs="+", metavar="SLIDE",
                       help="slide paths, globs ('slides/*.svs') or list files (.txt, one path per line)")
    embed.add_argument("--out", required=True, help="folder of the stores")
    embed.add_argument("--encoder", default="handcrafted",
                       help="encoder spec: handcrafted | resnet18[@imagenet|@CKPT] | open_clip:ARCH[@WEIGHTS] | "
                            "plip[@DIR] (default handcrafted: offline, no download)")
    embed.add_argument("--mpp", type=float, default=None, help="patch resolution (default: the encoder's)")
    embed.add_argument("--patch", type=int, default=256, help="patch side in px at --mpp (default 256)")
    embed.add_argument("--stride", type=int, default=None, help="grid stride in px at --mpp (default: --patch)")
    embed.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction a cell needs (default 0.5)")
    embed.add_argument("--slide-mpp", type=float, default=None, help="level-0 µm/px for slides lacking it")
    embed.add_argument("--batch-size", type=int, default=64)
    embed.add_argument("--workers", type=int, default=2, help="patch-reader processes per device (default 2)")
    embed.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto | cpu | gpu")
    embed.add_argument("--devices", default="auto", help="Lightning devices: auto | N")
    embed.add_argument("--strategy", default="auto", help="Lightning strategy: auto | ddp | ...")
    embed.add_argument("--num-nodes", type=int, default=1)
    embed.add_argument("--precision", default=None, help="Lightning precision, e.g. bf16-mixed")
    embed.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    embed.set_defaults(func=_cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(chatty).setLevel(level)  # Lightning logs tips and device summaries at INFO
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    try:
        return args.func(args)
    except AlkitError as exc:
        print(f"alkit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
