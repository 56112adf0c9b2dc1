"""``vision-pipe runs | compare | report``: finished runs side by side, and a run's report page."""

from __future__ import annotations

import argparse
import json
from typing import Any

from vision_pipe.cli._common import add_common, add_trust, manager


def register(sub: Any) -> None:
    p = sub.add_parser(
        "runs",
        help="list the runs under a folder: task, status, duration, config differences, metrics",
        description="List the run folders under DIR (recursively), sorted by start time: start, task, status, "
        "duration, the best monitored validation metric, the main test metrics and the config values that "
        "differ among them.",
    )
    p.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="folder to search (default: runs)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON (every config difference)")
    p.set_defaults(handler=_runs)

    p = sub.add_parser(
        "compare",
        help="compare runs: config differences, metrics and overlaid training curves",
        description="Print the config values that differ among the runs and their metrics; write one PNG "
        "with their training curves overlaid (train/val loss, the main validation metric).",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (runs/<name>/<timestamp>)")
    p.add_argument("--out", default="compare.png", help="the PNG to write (default: compare.png)")
    p.set_defaults(handler=_compare)

    p = sub.add_parser(
        "report",
        help="write a run's report.html again (from its folder and best checkpoint)",
        description="Write RUN/report.html: config, data summary, curves, per-class metrics, test pictures and "
        "a grid of the best and worst test predictions of its best checkpoint (read as weights only).",
    )
    p.add_argument("run", metavar="RUN", help="run folder (runs/<name>/<timestamp>)")
    p.add_argument("--no-predictions", action="store_true", help="leave out the prediction grid (no model run)")
    add_common(p, overrides=False)
    add_trust(p)
    p.set_defaults(handler=_report)


def _runs(args: argparse.Namespace) -> int:
    from vision_pipe.run_table import find_runs, format_runs

    runs = find_runs(args.dir)
    print(json.dumps([r.to_dict() for r in runs], indent=2) if args.json else format_runs(runs))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from vision_pipe.run_table import format_differences, format_runs, plot_comparison, summarize_runs

    runs = summarize_runs(args.runs)
    print("config differences")
    print(format_differences(runs))
    print("\nruns")
    print(format_runs(runs))
    print(f"\ncurves: {plot_comparison(runs, args.out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from vision_pipe.report import rebuild_report

    path = rebuild_report(
        args.run, trust=args.trust_checkpoint, manager=manager(args), predictions=not args.no_predictions
    )
    print(f"report: {path}")
    return 0
