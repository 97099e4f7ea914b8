"""Studies: grid expansion, shared centralized baselines, resume after an interruption, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w
from helpers import record, write_run_folder

from fedcustom.cli import main
from fedcustom.core.config import ConfigError
from fedcustom.reporting.study_report import write_study_report
from fedcustom.runs.study import load_study, run_study

METRICS = ("round", "test_accuracy", "test_loss", "train_loss", "bytes_up", "bytes_down", "accepted")


@pytest.fixture
def study_file(tmp_path: Path, tiny_config) -> Path:
    """A 2 x 2 grid over the tiny model: two prefix lengths x two Dirichlet alphas."""
    from fedcustom.core.config import to_dict

    base = to_dict(tiny_config(partition={"scheme": "dirichlet", "num_clients": 2, "alpha": 1.0}))
    base.pop("name")
    raw = {
        "study": {"name": "tiny-study", "seeds": [0]},
        "base": base,
        "grid": {
            "prefix": {"short": {"method.num_virtual_tokens": 2},
                       "long": {"method.num_virtual_tokens": 4, "train.lr": 0.02}},
            "partition.alpha": [100.0, 0.5],
        },
    }
    path = tmp_path / "tiny-study.toml"
    path.write_text(tomli_w.dumps(raw))
    return path


def metrics(run_dir: Path, mode: str) -> list[dict]:
    lines = (run_dir / mode / "rounds.jsonl").read_text().splitlines()
    return [{k: r.get(k) for k in METRICS} for r in map(json.loads, lines)]


def test_grid_shares_centralized_baselines_across_partitions(study_file: Path) -> None:
    study = load_study(study_file)
    assert len(study.cells) == 4
    fed = [r for r in study.runs.values() if r.mode == "federated"]
    cen = [r for r in study.runs.values() if r.mode == "centralized"]
    assert len(fed) == 4 and len(cen) == 2  # the partition does not change a centralized run
    assert {tuple(r.labels) for r in cen} == {("prefix",)}
    long = next(r for r in fed if r.labels == {"prefix": "long", "partition.alpha": "0.5"})
    assert long.config.method.options.num_virtual_tokens == 4
    assert long.config.train.lr == 0.02 and long.config.partition.alpha == 0.5
    assert long.config.modes == ("federated",)


def test_centralized_lr_reaches_the_centralized_runs_alone(study_file: Path) -> None:
    """The centralized mode's own rate is left out of the other modes' configs, so adding it to a
    study keeps its finished federated runs valid."""
    before = load_study(study_file)
    study = load_study(study_file, ['grid.prefix.long."train.centralized_lr"=0.005'])
    for run_id, run in study.runs.items():
        expected = 0.005 if run.mode == "centralized" and run.labels["prefix"] == "long" else 0.0
        assert run.config.train.centralized_lr == expected
        if run.mode == "federated":
            assert run.config == before.runs[run_id].config


def test_bad_cells_fail_before_anything_runs(study_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="partition.alpha = -1.0"):
        load_study(study_file, ['grid."partition.alpha"=[1.0, -1.0]'])
    with pytest.raises(ConfigError, match="unknown table 'grids'"):
        load_study(study_file, ["grids.x=[1]"])
    with pytest.raises(ConfigError, match="study.seeds"):
        load_study(study_file, ["study.seeds=[]"])
    out = tmp_path / "out"
    assert main(["study", str(study_file), "--output-dir", str(out), "--set", "base.train.lr=0"]) == 2
    assert not out.exists()


def test_interrupted_study_resumes_without_redoing_finished_runs(study_file: Path, tmp_path: Path) -> None:
    study = load_study(study_file)
    uninterrupted = run_study(study, tmp_path / "a", log=lambda *_: None)

    def interrupt_at_third_run(message: str) -> None:
        if message.startswith("[3/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, tmp_path / "b", log=interrupt_at_third_run)
    out = tmp_path / "b" / "tiny-study"
    finished = [r for r in study.runs.values() if r.done(out)]
    assert len(finished) == 2
    stamps = {r.id: (out / "runs" / r.id / r.mode / "rounds.jsonl").stat().st_mtime_ns for r in finished}
    lines: list[str] = []
    run_study(study, tmp_path / "b", log=lines.append)
    assert lines[0].endswith("2 already done -> " + str(out))
    assert all((out / "runs" / i / r.mode / "rounds.jsonl").stat().st_mtime_ns == t
               for i, t in stamps.items() for r in [study.runs[i]])
    for run in study.runs.values():  # same numbers as the study that was never interrupted
        assert metrics(out / "runs" / run.id, run.mode) == metrics(uninterrupted / "runs" / run.id, run.mode)


def test_changed_study_is_refused(study_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_study(load_study(study_file, ["study.seeds=[0]", 'grid."partition.alpha"=[1.0]',
                                      "grid.prefix={short={'method.num_virtual_tokens'=2}}"]),
              out, log=lambda *_: None)
    args = ["study", str(study_file), "--output-dir", str(out), "--set", 'grid."partition.alpha"=[1.0]',
            "--set", "grid.prefix={short={'method.num_virtual_tokens'=2}}", "--set", "base.train.lr=0.5"]
    assert main(args) == 2


def test_report_of_a_study(study_file: Path, tmp_path: Path) -> None:
    out = run_study(load_study(study_file, ["study.seeds=[0, 1]"]), tmp_path, log=lambda *_: None)
    report = write_study_report(out)
    text = report.read_text()
    for name in ("accuracy.png", "accuracy_vs_bytes.png", "gap.png", "accuracy_vs_alpha.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in text
    table = text.split("## Results per cell")[1].split("##")[0]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines()
            if "short" in line or "long" in line]
    assert len(rows) == 4 and all(".." in row[2] for row in rows)  # two seeds: mean (min..max)
    assert {tuple(row[:2]) for row in rows} == {(a, p) for a in ("100.0", "0.5") for p in ("short", "long")}
    assert all(int(row[5].replace(",", "")) > 0 for row in rows)  # trainable parameters
    header = [c.strip() for c in next(x for x in table.splitlines() if x.startswith("|")).split("|")[1:-1]]
    forward, backward = header.index("forward / client / round"), header.index("backward / client / round")
    assert all(row[forward].split()[0] == row[backward].split()[0] != "n/a" for row in rows)
    assert main(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()


def local_records(finals: tuple[float, float, float]) -> list[dict]:
    """Local training evaluated every round (federated every other one), ending at `finals`:
    the mean over clients, the worst and the best client."""
    mean, low, high = finals
    return [record(n, a, 0, 0, test_accuracy_weighted=a, test_accuracy_min=a - (mean - low),
                   test_accuracy_max=a + (high - mean))
            for n, a in enumerate([0.5, 0.5, 0.5, 0.5, mean])]


def test_report_of_a_study_with_local_training_and_convergence(tmp_path: Path) -> None:
    """A 2-cell x 2-seed study written by hand as `fedcustom study` leaves it: federated runs
    evaluated every other round (eval_every = 2), 100 bytes a round; a centralized baseline per
    seed with validation accuracy; a local run per cell and seed."""
    cen = {  # the reference: test accuracy at the best validation round
        0: [record(0, 0.5, val_accuracy=0.5), record(1), record(2, 0.80, val_accuracy=0.90), record(3),
            record(4, 0.84, val_accuracy=0.88)],  # 0.80 (round 2)
        1: [record(0, 0.5, val_accuracy=0.5), record(1), record(2, 0.82, val_accuracy=0.85), record(3),
            record(4, 0.78, val_accuracy=0.86)],  # 0.78 (round 4)
    }
    fed = {("1.0", 0): (0.78, 0.795), ("1.0", 1): (0.70, 0.775),  # accuracy at rounds 2 and 4
           ("0.1", 0): (0.60, 0.77), ("0.1", 1): (0.70, 0.705)}
    local = {("1.0", 0): (0.70, 0.60, 0.80), ("1.0", 1): (0.72, 0.65, 0.78),
             ("0.1", 0): (0.50, 0.30, 0.70), ("0.1", 1): (0.54, 0.20, 0.90)}
    study = tmp_path / "hand-study"
    cells, runs = [], {}
    for (alpha, seed), (at2, at4) in fed.items():
        ids = {"federated": f"fed__{alpha}__seed{seed}", "centralized": f"cen__seed{seed}",
               "local": f"loc__{alpha}__seed{seed}"}
        records = {"federated": [record(0, 0.5), record(1), record(2, at2), record(3), record(4, at4)],
                   "centralized": cen[seed], "local": local_records(local[alpha, seed])}
        for mode, run_id in ids.items():
            runs[run_id] = {"mode": mode, "seed": seed, "labels": {}, "path": f"runs/{run_id}"}
            if not (study / "runs" / run_id).exists():
                write_run_folder(study / "runs" / run_id, {"name": run_id, "seed": seed,
                                                            "method": {"name": "prefix"}},
                                 {mode: records[mode]})
        cells.append({"labels": {"partition.alpha": alpha}, "seed": seed, "runs": ids})
    (study / "study.json").write_text(json.dumps({
        "name": "hand-study", "description": "", "seeds": [0, 1], "cells": cells, "runs": runs,
        "axes": [{"name": "partition.alpha", "labels": ["1.0", "0.1"], "overrides": []}]}))

    text = write_study_report(study).read_text()
    assert "10 runs, 10 with records" in text and "loc: local" in text

    def table(title: str) -> dict[str, list[str]]:
        lines = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()
        cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if ln.startswith("|")]
        return {row[0]: dict(zip(cells[0], row, strict=True)) for row in cells[2:]}

    results = table("Results per cell")
    assert results["1.0"]["local final"] == "71.00% (60.00%..80.00%)"  # means .70, .72
    assert results["0.1"]["local final"] == "52.00% (20.00%..90.00%)"
    assert results["1.0"]["federated final"] == "78.50% (77.50%..79.50%)"
    converged = table("Convergence")
    # seed 0 against 0.80 (targets 0.76, 0.792), seed 1 against 0.78 (0.741, 0.7722)
    assert converged["1.0"] == {
        "partition.alpha": "1.0", "centralized reference": "79.00% (78.00%..80.00%)",
        "95%: round": "3 (2..4)", "95%: bytes": "300 B (200 B..400 B)",  # rounds 2 and 4
        "99%: round": "4 (4..4)", "99%: bytes": "400 B (400 B..400 B)",  # both at round 4
        "plateaued (seeds)": "0/2", "plateau spread (points)": "4.50 (1.50..7.50)",
        # no federated validation here: selected is the final round, 0.795 / 0.80 and 0.775 / 0.78
        "federated, selected": "78.50% (77.50%..79.50%)",
        "selected / reference": "99.37% (99.36%..99.38%)"}
    assert converged["0.1"] == {
        "partition.alpha": "0.1", "centralized reference": "79.00% (78.00%..80.00%)",
        "95%: round": "4, 1/2 seeds", "95%: bytes": "400 B, 1/2 seeds",
        "99%: round": "not reached", "99%: bytes": "not reached",
        "plateaued (seeds)": "1/2", "plateau spread (points)": "8.75 (0.50..17.00)",
        "federated, selected": "73.75% (70.50%..77.00%)",  # 0.77 / 0.80, 0.705 / 0.78
        "selected / reference": "93.32% (90.38%..96.25%)"}
    per_round = table("Test accuracy per round")
    fed_row = next(row for label, row in per_round.items() if label.startswith("alpha=1.0, seed 0 (fed"))
    assert list(fed_row.values())[1:] == ["50.00%", "", "78.00%", "", "79.50%"]
    assert any(label.endswith("(loc)") for label in per_round)
    validation = table("Validation accuracy per round")  # only the centralized runs have val here
    assert list(validation["seed1 (cen)"].values())[1:] == ["50.00%", "85.00%", "86.00%"]  # rounds 0, 2, 4
    for name in ("accuracy.png", "accuracy_vs_bytes.png", "gap.png", "accuracy_vs_alpha.png"):
        assert (study / name).read_bytes().startswith(b"\x89PNG")
