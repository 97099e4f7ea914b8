"""Studies: grid expansion, shared centralized baselines, resume after an interruption, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

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
