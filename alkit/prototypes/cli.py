"""``alkit prototypes search | review | build``: the command line of prototype building, registered on
``alkit``'s parser by :func:`add_prototype_commands`. Each command imports what it uses inside its function,
so ``alkit --help`` stays light."""

from __future__ import annotations

import argparse

from alkit import options


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


def add_prototype_commands(sub) -> None:
    """Register ``alkit prototypes search | review | build`` on ``sub`` (the parser's subparsers)."""
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
