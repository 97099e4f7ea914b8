"""Federated runs against centralized references from other folders, paired by seed: the tables
in docs/results/*/README.md where a study's report cannot pair the modes itself (the reference
was run in another study, or under another method entry at its own validated rate).

    python tools/pair.py --federated 'docs/results/A/runs/fed__*' --reference 'docs/results/B/runs/cen__*'

Per seed: the federated test accuracy at its final evaluated round and at its best validation
round (selected like the reference: reporting/convergence.py), the reference, the final gap in
points and both shares of the reference; then the mean (min..max) and, for the gap, the standard
error over seeds.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import tomllib
from pathlib import Path

from fedcustom.core.text import table
from fedcustom.reporting.convergence import reference
from fedcustom.reporting.runs import Record, load_run, summarize


def by_seed(pattern: str, mode: str) -> dict[int, list[Record]]:
    out = {}
    for path in sorted(glob.glob(pattern)):
        run = load_run(path)
        if mode in run.modes:
            seed = tomllib.loads((Path(path) / "config.toml").read_text())["seed"]
            if seed in out:
                raise SystemExit(f"two {mode} runs for seed {seed} match {pattern}")
            out[seed] = run.modes[mode]
    return out


def mean_range(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.fmean(values))} ({fmt.format(min(values))}..{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--federated", required=True, help="glob of federated run folders")
    parser.add_argument("--reference", required=True, help="glob of centralized run folders")
    args = parser.parse_args()
    fed, cen = by_seed(args.federated, "federated"), by_seed(args.reference, "centralized")
    seeds = sorted(fed.keys() & cen.keys())
    if not seeds:
        raise SystemExit("no seed has both a federated and a centralized run")
    rows: list[list[str]] = []
    cols: dict[str, list[float]] = {k: [] for k in ("final", "selected", "reference", "gap", "gap_sel")}
    for seed in seeds:
        final = summarize(fed[seed])
        selected, ref = reference(fed[seed]), reference(cen[seed])
        assert selected is not None and ref is not None
        values = {"final": 100 * final.final, "selected": 100 * selected.accuracy,
                  "reference": 100 * ref.accuracy, "gap": 100 * (final.final - ref.accuracy),
                  "gap_sel": 100 * (selected.accuracy - ref.accuracy)}
        for k, v in values.items():
            cols[k].append(v)
        rows.append([str(seed), f"{values['final']:.1f}% (round {final.final_round})",
                     f"{values['selected']:.1f}% (round {selected.round})",
                     f"{values['reference']:.1f}% (epoch {ref.round})",
                     *(f"{values[k]:+.1f}" for k in ("gap", "gap_sel")),
                     *(f"{100 * values[k] / values['reference']:.1f}%" for k in ("final", "selected"))])

    def stderr(values: list[float]) -> str:
        return f", s.e. {statistics.stdev(values) / len(values) ** 0.5:.1f}" if len(values) > 1 else ""

    rows.append([f"mean of {len(seeds)}", *(mean_range(cols[k]) for k in ("final", "selected", "reference")),
                 *(mean_range(cols[k], "{:+.1f}") + stderr(cols[k]) for k in ("gap", "gap_sel")),
                 *(f"{100 * statistics.fmean(cols[k]) / statistics.fmean(cols['reference']):.1f}%"
                   for k in ("final", "selected"))])
    print(table(["seed", "federated, final", "federated, selected on validation", "reference",
                 "gap, final (points)", "gap, selected", "final / reference", "selected / reference"],
                rows, markdown=True))


if __name__ == "__main__":
    main()
