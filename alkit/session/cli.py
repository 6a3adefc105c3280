"""``alkit session init | next | ingest | train | status``: the command line of a human-in-the-loop session.

:func:`add_session_commands` registers the subcommands on ``alkit``'s parser; the command functions
print, the library (:mod:`alkit.session.session`) logs. Imports are local to each command so
``alkit --help`` stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alkit import options


def _cmd_init(args: argparse.Namespace) -> int:
    from alkit.session.setup import check_config, config_from_options, config_from_study, parse_json_option
    from alkit.session.state import SessionError, SessionState

    truth = {"synthetic": args.truth_synthetic} if args.truth_synthetic else (
        {"folder": args.truth_folder, "pattern": args.truth_pattern} if args.truth_folder else None)
    if args.study:
        given = [o for o, v in (("--stores", args.stores), ("--task", args.task), ("--truth-*", truth),
                                ("--task-params", args.task_params)) if v]
        if given:
            raise SessionError(f"--study takes the cohort, task and ground truth from the YAML; drop {given[0]}")
        config = config_from_study(args.study, strategy=args.strategy, n=args.n, size=args.size, size_um=args.size_um,
                                   seed=args.seed, cycles=args.cycles, oracle=args.oracle, progress=not args.quiet)
    else:
        if not args.stores:
            raise SessionError("init needs the cohort: --stores DIR (alkit embed --out) or --study YAML")
        size = args.size if args.size is not None or args.size_um is not None else 8192
        config = config_from_options(
            stores=args.stores, test_stores=args.test_stores, validation_stores=args.validation_stores,
            encoder=args.encoder, task=args.task or "segmentation",
            task_params=parse_json_option("--task-params", args.task_params), strategy=args.strategy or "random",
            strategy_params=parse_json_option("--strategy-params", args.strategy_params), prototypes=args.prototypes,
            measure=args.measure, selector=args.selector, n=args.n if args.n is not None else 3, size=size,
            size_um=args.size_um, cycles=args.cycles if args.cycles is not None else 3,
            seed=args.seed if args.seed is not None else 0, oracle=args.oracle, ground_truth=truth, name=args.name)
    if args.name:
        config["name"] = args.name
    config = check_config(config)  # everything it names is built once: errors before anything is written
    state = SessionState.create(args.dir, config, force=args.force)
    b = config["budget"]
    side = f"{b['size_px']} px" if b["size_px"] is not None else f"{b['size_um']:g} µm"
    print(f"session {state.folder}: {config['task']['kind']} on {len(config['stores'])} slide(s), "
          f"{config['initial']} then uncertainty ({config['acquisition'].get('measure', 'entropy')}), "
          f"{b['n']} region(s) of {side} per slide and cycle, {config['cycles']} cycle(s), seed {config['seed']}, "
          f"{config['oracle']} oracle")
    print(f"wrote {state.path}")
    print(f"next: alkit session next {state.folder}")
    return 0


def _cmd_next(args: argparse.Namespace) -> int:
    from alkit.session.session import next_regions
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    result = next_regions(args.dir, png=not args.no_png, progress=not args.quiet)
    head = (f"cycle {result.cycle} is already out ({result.regions} region(s)); ingest it before the next one"
            if result.repeated else f"cycle {result.cycle}: {result.regions} region(s) to annotate")
    print(head)
    for f in result.files:
        print(f"  {f}")
    print(f"then: alkit session ingest {args.dir} ANNOTATIONS_DIR")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from alkit.session.session import ingest
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    result = ingest(args.dir, args.annotations, oracle=args.oracle, progress=not args.quiet)
    if result.already:
        print(f"cycle {result.cycle} is already ingested; nothing changed")
        return 0
    for note in result.notes:
        print(f"note: {note}")
    print(f"cycle {result.cycle}: recorded {result.done} region(s), {result.skipped} skipped")
    for f in result.files:
        print(f"  {f}")
    print(f"then: alkit session train {args.dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from alkit.session.session import train
    from alkit.tasks.training import follow_root_log_level  # imports Lightning

    follow_root_log_level()
    result = train(args.dir, tracking_uri=args.tracking_uri, progress=not args.quiet)
    print(f"cycle {result.cycle}: trained; " + _metrics_line(result.metrics))
    print(f"MLflow run {result.run_id} in {result.tracking_uri}")
    if not result.tracking_uri.startswith(("http://", "https://")):
        print(f"MLflow UI: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from alkit.session.session import status

    s = status(args.dir)
    print(f"session {s['folder']}: cycle {s['cycle']} of {s['cycles']} ({s['state'].replace('_', ' ')})")
    print(f"regions: {s['done']} done, {s['open']} open, {s['skipped']} skipped")
    print(f"annotated: {s['tissue_mm2']:.4f} mm² of tissue in {s['region_mm2']:.4f} mm² of regions")
    for c in s["per_cycle"]:
        print(f"  cycle {c['cycle']}: {c['regions']} region(s): {c['done']} done, {c['open']} open, "
              f"{c['skipped']} skipped; {c['tissue_mm2']:.4f} mm² tissue")
    for cycle, metrics in s["metrics"].items():
        print(f"  metrics of cycle {cycle}: {_metrics_line(metrics)}")
    if not s["metrics"]:
        print("  no model trained yet")
    return 0


def _metrics_line(metrics: dict) -> str:
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and not k.startswith("train_")]
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown) or "no metrics"


def _session_dir(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty")
    if Path(value).exists() and not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is not a folder")
    return value


def add_session_commands(sub) -> None:
    """Register ``alkit session ...`` on ``sub`` (the parser's subparsers)."""
    session = sub.add_parser("session", help="a resumable annotation session with people in the loop: init, next, "
                                             "ingest, train, status")
    ssub = session.add_subparsers(dest="session_command", required=True, metavar="STEP")

    init = ssub.add_parser("init", help="start a session in DIR (session.json) from a study YAML or options")
    init.add_argument("dir", metavar="DIR", type=options.out_dir, help="the session folder")
    init.add_argument("--study", default=None, metavar="YAML",
                      help="a study config: its cohort (embedded, cached), task, ground truth and loop settings; of "
                           "its grid the first strategy, n, l and seed unless given")
    init.add_argument("--stores", default=None, help="folder of the cohort's embedding stores (alkit embed --out)")
    init.add_argument("--test-stores", default=None, help="stores of the test slides (evaluation; needs ground truth)")
    init.add_argument("--validation-stores", default=None,
                      help="stores of fully annotated validation slides (early stopping; needs ground truth)")
    init.add_argument("--encoder", default=None, help="use the stores of this encoder only")
    init.add_argument("--task", default=None, help="segmentation (default) | detection | a registered task")
    init.add_argument("--task-params", default=None, metavar="JSON",
                      help='the task model\'s parameters as a JSON object, e.g. \'{"max_epochs": 20}\'')
    init.add_argument("--strategy", default=None, help="initial strategy at cycle 0 (default random)")
    init.add_argument("--strategy-params", default=None, metavar="JSON", help="its parameters as a JSON object")
    init.add_argument("--prototypes", default=None, help="prototype set folder (the prototype strategy)")
    init.add_argument("--selector", default="standard", choices=["standard", "adaptive"])
    init.add_argument("--measure", default="entropy", choices=["entropy", "margin", "least_confidence", "bald"],
                      help="uncertainty of the acquisition after cycle 0 (default entropy)")
    init.add_argument("--n", type=options.whole(1, 10000), default=None, help="regions per slide and cycle (default 3)")
    size = init.add_mutually_exclusive_group()
    size.add_argument("--size", type=options.whole(16, 1 << 20), default=None, help="region side in level-0 px (default 8192)")
    size.add_argument("--size-um", type=options.number(0, 1e6, lo_open=True), default=None, help="region side in µm")
    init.add_argument("--cycles", type=options.whole(1, 1000), default=None, help="cycles (default 3)")
    init.add_argument("--seed", type=options.SEED, default=None, help="seed of every choice (default 0)")
    init.add_argument("--oracle", choices=["human", "simulated"], default="human",
                      help="who answers ingest: annotators' files (default) or the ground truth")
    init.add_argument("--truth-synthetic", default=None, metavar="DIR", help="ground truth: a synthetic cohort")
    init.add_argument("--truth-folder", default=None, metavar="DIR", help="ground truth: a folder of annotation files")
    init.add_argument("--truth-pattern", default="{slide}.xml", help="file name in --truth-folder (default {slide}.xml)")
    init.add_argument("--name", default=None, help="MLflow experiment (default: the study, or session-<DIR name>)")
    init.add_argument("--force", action="store_true", help="start again over an existing session (set aside)")
    init.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    init.set_defaults(func=_cmd_init)

    nxt = ssub.add_parser("next", help="write the next cycle's regions (QuPath, ASAP, checklist); again: the same")
    nxt.add_argument("dir", metavar="DIR", type=_session_dir)
    nxt.add_argument("--no-png", action="store_true", help="skip the overview PNGs")
    nxt.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    nxt.set_defaults(func=_cmd_next)

    ingest = ssub.add_parser("ingest", help="record what annotators drew in the open cycle's regions")
    ingest.add_argument("dir", metavar="DIR", type=_session_dir)
    ingest.add_argument("annotations", metavar="ANNOTATIONS_DIR", nargs="?", default=None,
                        help="folder of <slide>.geojson (QuPath export) or <slide>.xml (ASAP) files")
    ingest.add_argument("--oracle", choices=["human", "simulated"], default=None,
                        help="simulated: the session's ground truth answers instead of files")
    ingest.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    ingest.set_defaults(func=_cmd_ingest)

    train = ssub.add_parser("train", help="fit the task on the pool, evaluate, log to MLflow")
    train.add_argument("dir", metavar="DIR", type=_session_dir)
    train.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (default: sqlite:///DIR/mlflow.db)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    st = ssub.add_parser("status", help="cycle, regions done / open / skipped, area annotated, metrics")
    st.add_argument("dir", metavar="DIR", type=_session_dir)
    st.set_defaults(func=_cmd_status)
