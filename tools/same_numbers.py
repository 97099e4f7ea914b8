"""Check that a code change moves no number: run a fixed set of small configs on two source
trees and compare every round record (timings and memory left out) and every final state bit
for bit.

    python tools/same_numbers.py run  SRC_DIR OUT_DIR     # run every case with fedcustom from SRC_DIR
    python tools/same_numbers.py diff OLD_OUT NEW_OUT     # compare two such folders; exit 1 on a change

Each case is `fedcustom run` (the command line, the one interface both trees share) in a
subprocess with PYTHONPATH=SRC_DIR, so the old tree can be a `git worktree` of an older commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

DEMO = "src/fedcustom/configs/demo.toml"
SMALL = ["data.max_train_examples=64", "data.max_test_examples=32", "model.max_length=32",
         "partition.num_clients=2", "federation.rounds=2", "train.batch_size=8",
         "modes=['federated','centralized']", "threads=1"]
LM = ["model.name=smollm2", "model.max_length=40", "data.max_train_examples=24",
      "data.max_test_examples=12", "partition.num_clients=2", "federation.rounds=2",
      "modes=['federated']", "threads=1"]

# name -> (config file or None, --set overrides)
CASES: dict[str, tuple[str | None, list[str]]] = {
    "demo-2-rounds": (DEMO, ["federation.rounds=2", "threads=2"]),
    "prefix": (None, SMALL + ["method.name=prefix"]),
    "lora": (None, SMALL + ["method.name=lora"]),
    "prompt": (None, SMALL + ["method.name=prompt"]),
    "full": (None, SMALL + ["method.name=full"]),
    "distill": (None, SMALL + ["method.name=distill", "method.public_size=32", "strategy.name=consensus",
                               "method.clients=['model=minilm layers=3 method=lora','model=bow dim=16']"]),
    "prefix-fedprox": (None, SMALL + ["strategy.name=fedprox", "strategy.mu=0.1"]),
    "prefix-fedadam": (None, SMALL + ["strategy.name=fedadam"]),
    "prefix-median-attack": (None, SMALL + ["partition.num_clients=4", "strategy.name=median",
                                            "attack.kind=scale", "attack.fraction=0.25"]),
    "prefix-faults": (None, SMALL + ["partition.num_clients=4", "faults.dropout=0.3",
                                     "faults.stragglers=0.2", "faults.noisy_clients=0.5"]),
    "prefix-dp": (None, SMALL + ["strategy.name=dp_fedavg"]),
    "prefix-bf16": (None, SMALL + ["train.precision=bf16"]),
    "prefix-flower": (None, SMALL + ["engine=flower", "modes=['federated']"]),
    "prompt-search": (None, LM + ["method.name=prompt-search", "method.score_examples=8",
                                  "strategy.name=score-search", "strategy.candidates=4"]),
    "bbpt": (None, LM + ["method.name=bbpt", "method.score_examples=8", "method.popsize=4",
                         "method.generations=1"]),
    "generation-prefix": (None, LM + ["data.dataset=bbc-headlines", "method.name=prefix",
                                      "method.num_virtual_tokens=4", "model.max_length=96",
                                      "generation.eval_examples=2", "generation.show_examples=1",
                                      "generation.max_new_tokens=4"]),
}
VOLATILE = ("seconds", "peak_rss_mb")  # record keys that measure time or memory, not numbers


def run(src: Path, out: Path, only: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    for name, (config, sets) in CASES.items():
        if only and name not in only:
            continue
        if (out / name / "summary.txt").is_file():
            continue  # done in an earlier call
        config = config or str(Path(__file__).parent / "empty.toml")
        args = [sys.executable, "-c", "import sys; from fedcustom.cli import main; sys.exit(main())", "run",
                str(src.parent / config) if not Path(config).is_absolute() else config,
                "--set", f"output_dir={out.resolve()}", "--set", f"name={name}"]
        for s in sets:
            args += ["--set", s]
        print(f"== {name}", flush=True)
        with open(out / f"{name}.log", "w") as log:
            failed = subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        if failed:
            print(f"   FAILED (exit {failed}): see {out / name}.log", flush=True)
            continue
        (run_dir,) = [p for p in out.glob(f"{name}-*") if p.is_dir()]
        run_dir.rename(out / name)


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not any(w in k for w in VOLATILE)} for r in records]


def diff(old: Path, new: Path) -> int:
    changed = 0
    for case in sorted(p.name for p in old.iterdir() if p.is_dir()):
        for mode_dir in sorted(p for p in (old / case).iterdir() if p.is_dir()):
            other = new / case / mode_dir.name
            a = comparable([json.loads(x) for x in (mode_dir / "rounds.jsonl").read_text().splitlines()])
            b = comparable([json.loads(x) for x in (other / "rounds.jsonl").read_text().splitlines()])
            sa, sb = load_file(mode_dir / "state.safetensors"), load_file(other / "state.safetensors")
            same_state = sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) for k in sa)
            same = a == b and same_state
            changed += not same
            print(f"{case}/{mode_dir.name}: {len(a)} records, {len(sa)} state tensors: "
                  f"{'identical' if same else 'DIFFERENT'}"
                  + ("" if a == b else " (records)") + ("" if same_state else " (state)"))
    print("no number changed" if not changed else f"{changed} run(s) changed")
    return 1 if changed else 0


if __name__ == "__main__":
    verb, first, second, *rest = sys.argv[1:]
    if verb == "run":
        run(Path(first), Path(second), rest)
    else:
        sys.exit(diff(Path(first), Path(second)))
