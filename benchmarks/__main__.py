"""Command line of the harness. `_point` is internal: one measurement in a fresh process."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from benchmarks.common import GPU_PARTS, RESULTS, Options

# `all`: the CPU suite
BENCHMARKS = ("overhead", "throughput", "eval-batch", "precision", "limit", "scale", "peer")
OTHERS = ("memory", "flower-rounds")  # run by name only


def load(name: str):  # noqa: ANN201 - a benchmark module
    import importlib

    return importlib.import_module(f"benchmarks.{name.replace('-', '_')}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_point"]:
        kind, spec = argv[1], json.loads(argv[2])
        print(json.dumps(load(kind).point(spec)))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("which", choices=[*BENCHMARKS, *OTHERS, "gpu", "all"])
    parser.add_argument("--quick", action="store_true", help="small sizes, a harness check (minutes for all)")
    parser.add_argument("--model", default="minilm", help="packaged model name or local model directory "
                                                          "(flower-rounds: also `tiny`, the tests' model)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="fedcustom config override applied to every run (e.g. data.dataset=PATH)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for NAME.json results")
    parser.add_argument("--repeats", type=int, default=0, help="repeats per measurement (0: default)")
    parser.add_argument("--clients", default="10,100,1000", help="client counts of the scale benchmark")
    parser.add_argument("--workers", default="1",
                        help="scale: worker process counts to compare (e.g. 1,2), at every client count")
    parser.add_argument("--dry-run", action="store_true",
                        help="gpu: the same code on the CPU with a tiny model (checks the script)")
    parser.add_argument("--budget", type=float, default=450.0, help="gpu: seconds for all its parts")
    parser.add_argument("--parts", default=",".join(GPU_PARTS), help="gpu: comma-separated parts to run")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    if unknown := [p for p in parts if p not in GPU_PARTS]:
        parser.error(f"--parts {args.parts!r}: unknown {', '.join(unknown)}; "
                     f"expected some of {','.join(GPU_PARTS)}")
    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        parser.error(f"--clients {args.clients!r}: expected comma-separated integers, e.g. 10,100,1000")
    try:
        workers = tuple(int(w) for w in args.workers.split(","))
        if min(workers) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--workers {args.workers!r}: expected comma-separated integers >= 1, e.g. 1,2")
    opts = Options(args.quick, args.model, args.set, args.out, args.repeats, clients, workers,
                   command=shlex.join(["python", "-m", "benchmarks", *argv]), dry_run=args.dry_run,
                   budget=args.budget, parts=parts)
    from fedcustom.core.errors import UserError

    start = time.perf_counter()
    try:
        for name in BENCHMARKS if args.which == "all" else (args.which,):
            load(name).run(opts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
