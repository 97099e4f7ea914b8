"""Copy a study's records into a results folder that is committed (docs/results/NAME), leaving out
what is large or machine-bound (checkpoints, states, adapters, snapshots, tracking stores), then
write its report there.

    python tools/publish.py runs/stage2/convergence docs/results/convergence [--keep-study-json]

Several study folders of one study (the same grid run in stages, e.g. with `--set study.seeds=[1,2]`)
publish into one results folder: runs are added beside those already there, timings.json is
merged, and with --keep-study-json the results folder's study.json (the full grid) is kept. Only
finished runs are copied: a run without its final state (or a local run without records) is
still going and is left out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

RUN_FILES = ("config.toml", "partition.txt", "summary.txt", "labels.json", "machine.json")
# adapter/prompt.json: a prompt method's final prompt (template and label words), a few hundred bytes;
# best/round.json: the round federation.save_best exported, and its metrics
MODE_FILES = ("rounds.jsonl", "rounds.csv", "clients.json", "prompt.json", "adapter/prompt.json",
              "best/round.json")
MODES = ("federated", "centralized", "local")


def finished(run: Path) -> bool:
    modes = [run / m for m in MODES if (run / m).is_dir()]
    return bool(modes) and all(
        (m / "state.safetensors").is_file() or (m.name == "local" and (m / "rounds.jsonl").is_file())
        for m in modes)


def publish(study: Path, dest: Path, keep_study_json: bool) -> list[str]:
    copied = []
    (dest / "runs").mkdir(parents=True, exist_ok=True)
    for run in sorted((study / "runs").iterdir()):
        if not run.is_dir() or not finished(run):
            continue
        target = dest / "runs" / run.name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
        for mode in MODES:
            for name in MODE_FILES:
                if (run / mode / name).is_file():
                    (target / mode / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(run / mode / name, target / mode / name)
        copied.append(run.name)
    timings = json.loads((dest / "timings.json").read_text()) if (dest / "timings.json").is_file() else {}
    if (study / "timings.json").is_file():
        timings.update({k: v for k, v in json.loads((study / "timings.json").read_text()).items()
                        if k in copied})
    (dest / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    if not (keep_study_json and (dest / "study.json").is_file()):
        shutil.copy2(study / "study.json", dest / "study.json")
    return copied


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="a study folder written by `fedcustom study`")
    parser.add_argument("dest", type=Path, help="the results folder (e.g. docs/results/NAME)")
    parser.add_argument("--keep-study-json", action="store_true",
                        help="keep the results folder's study.json (a stage adds runs to a bigger grid)")
    args = parser.parse_args()
    copied = publish(args.study, args.dest, args.keep_study_json)
    print(f"{len(copied)} finished run(s) -> {args.dest / 'runs'}")
    fedcustom = Path(sys.executable).with_name("fedcustom")
    return subprocess.call([str(fedcustom), "report", str(args.dest)])


if __name__ == "__main__":
    raise SystemExit(main())
