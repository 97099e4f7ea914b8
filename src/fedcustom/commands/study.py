"""`fedcustom study FILE.toml`: run (or finish) a grid of experiments into one results folder."""

from __future__ import annotations

import argparse


def cmd_study(args: argparse.Namespace) -> None:
    from fedcustom.runs.study import describe_plan, load_study, run_study

    study = load_study(args.file, args.set)  # every cell's config is checked before anything runs
    if args.dry_run:
        print(describe_plan(study))
        return
    run_study(study, args.output_dir)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="run a grid of experiments (experiments/*.toml); rerun to resume")
    p.add_argument("file", help="study TOML: [study], [base] (a run config) and [grid] (the axes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the study file, e.g. --set base.federation.rounds=1")
    p.add_argument("--output-dir", metavar="DIR",
                   help="folder that receives the study folder (default: base.output_dir or runs)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.set_defaults(func=cmd_study)
