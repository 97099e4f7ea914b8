"""`fedcustom` command line: run, demo, report, datasets, methods."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from fedcustom import __version__
from fedcustom.core import extras, log
from fedcustom.core.errors import UserError
from fedcustom.core.io import FULL

if TYPE_CHECKING:
    from fedcustom.core.config import ExperimentConfig

DEMO_CONFIG = "demo.toml"


def cmd_run(args: argparse.Namespace) -> None:
    from fedcustom.core.config import load_config

    if args.resume is not None:
        if args.config is not None or args.set:
            raise UserError("--resume takes no config file or --set: a run goes on with its saved config")
        from fedcustom.core.registry import ENGINES
        from fedcustom.runs.experiment import resume_experiment

        saved = Path(args.resume) / "config.toml"
        cfg = load_config(saved) if saved.is_file() else None
        if cfg is None or ENGINES.get(cfg.engine).launch(cfg, Path(args.resume)) is None:
            resume_experiment(args.resume)  # which says so if it is no run folder
        return
    if args.config is None:
        raise UserError("run needs a config file (fedcustom run CONFIG.toml) or --resume RUN_DIR")
    cfg = load_config(args.config, args.set)  # every config error surfaces before heavy work
    run_and_summarize(cfg)


def cmd_demo(args: argparse.Namespace) -> None:
    from fedcustom.core.config import load_config

    with resources.as_file(resources.files("fedcustom") / "configs" / DEMO_CONFIG) as path:
        cfg = load_config(Path(path), args.set)
    run_and_summarize(cfg)


def run_and_summarize(cfg: ExperimentConfig) -> None:
    from fedcustom.core.registry import ENGINES
    from fedcustom.runs.experiment import run_experiment

    if ENGINES.get(cfg.engine).launch(cfg) is None:  # an engine with its own server runs it there
        run_experiment(cfg)


def cmd_report(args: argparse.Namespace) -> None:
    from fedcustom.reporting.report import write_report

    if len(args.run_dirs) == 1 and (Path(args.run_dirs[0]) / "study.json").is_file():
        from fedcustom.reporting.study_report import write_study_report

        out = Path(args.out) if args.out else None
        print(f"report: {write_study_report(Path(args.run_dirs[0]), out)}")
        return
    print(f"report: {write_report(args.run_dirs, args.out)}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from fedcustom.data import list_datasets

    for name, description in list_datasets():
        print(f"{name:18s} {description}")
    print("or a path: a .csv / .jsonl file or a saved HF dataset directory "
          "(set data.text_column and data.label_column; generation data: prompt and response "
          "columns, see data.prompt_column / data.response_column)")


def cmd_methods(args: argparse.Namespace) -> None:
    from fedcustom.core.config import describe
    from fedcustom.core.registry import METHODS, STRATEGIES

    for title, registry in (("methods", METHODS), ("strategies", STRATEGIES)):
        print(f"{title}:")
        for name, cls in registry.items():
            print(f"  {name:10s} {cls.summary}")
            for key, default, help_text in describe(cls.Options):
                print(f"      {key} = {default!r}  # {help_text}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedcustom", description="Federated customization of large models.")
    p.add_argument("--version", action="version", version=f"fedcustom {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages (debug)")
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="warnings and errors only, no progress bars")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment from a TOML config")
    run.add_argument("config", nargs="?", help="experiment TOML file")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="finish an interrupted run in its folder, from its last completed round")
    demo = sub.add_parser("demo", help="federated vs centralized prefix-tuning on rotten-tomatoes")
    for cmd in (run, demo):
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set federation.rounds=3")
    run.set_defaults(func=cmd_run)
    demo.set_defaults(func=cmd_demo)
    report = sub.add_parser("report", help="report.md and figures from run folders or a study folder")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folder(s) written by `run`, or one study folder written by `study`")
    report.add_argument("--out", metavar="DIR",
                        help="folder for report.md and the PNGs (default: the run folder, or ./report "
                             "for several)")
    report.set_defaults(func=cmd_report)
    sub.add_parser("datasets", help="list built-in datasets").set_defaults(func=cmd_datasets)
    sub.add_parser("methods", help="list methods, strategies and their options").set_defaults(
        func=cmd_methods)
    add_extension_commands(sub)
    return p


def add_extension_commands(sub: argparse._SubParsersAction) -> None:
    from fedcustom import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"{commands.__name__}.{info.name}").add_commands(sub)


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a run like Ctrl-C: after its last checkpoint


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.configure_cli(args.verbose - args.quiet)
    main_thread = threading.current_thread() is threading.main_thread()  # signals go to the main thread
    previous = signal.signal(signal.SIGTERM, stop) if main_thread else None
    try:
        extras.check(getattr(args, "needs", ()), f"fedcustom {args.command}")  # a command's packages
        args.func(args)
    except UserError as e:
        print(f"fedcustom: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package, imported where a command uses it
        message = extras.missing_extra(e, f"fedcustom {args.command}")
        if message is None:
            raise
        print(f"fedcustom: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in FULL:
            raise
        print(f"fedcustom: error: cannot write {e.filename or 'a file'}: {e.strerror} (the disk or a "
              "file-size limit is full)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = ("the same `fedcustom study` command" if args.command == "study"
                 else "`fedcustom run --resume RUN_DIR`")
        print(f"fedcustom: stopped; every completed round is checkpointed: {again} goes on from the last one",
              file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
