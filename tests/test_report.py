"""`fedcustom report`: figures and report.md from real tiny run folders."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from helpers import record, write_run_folder
from PIL import Image

from fedcustom.cli import main
from fedcustom.reporting.plots import DPI, FIGURES, SIZE
from fedcustom.reporting.report import settings_table, table
from fedcustom.reporting.runs import RunFolder, summarize
from fedcustom.runs.experiment import run_experiment
from fedcustom.runs.results import read_records


def make_run(tiny_config, **sections) -> Path:
    results = run_experiment(tiny_config(**sections), log=lambda *_: None)
    return next(iter(results.values())).path.parent


def pct(accuracy: float) -> str:
    return f"{100 * accuracy:.2f}%"


def section(report: str, title: str) -> str:
    """The text of one `## title` section."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def rows(markdown_table: str) -> dict[str, list[str]]:
    """First cell -> the row's cells, for the data rows of a Markdown pipe table."""
    lines = [ln for ln in markdown_table.splitlines() if ln.startswith("|")][2:]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return {c[0]: c for c in cells}


def check_figures(folder: Path) -> None:
    for name in FIGURES:
        path = folder / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 10_000  # axes, curves and text: far more than a blank image
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            width, height = image.size  # a long legend goes below the axes: a taller figure
            assert width == round(SIZE[0] * DPI) and height >= round(SIZE[1] * DPI)
    assert not list(folder.glob(".*.tmp"))


def test_report_of_one_run(tiny_config, capsys: pytest.CaptureFixture[str]) -> None:
    # lr 0.01: here the modes end apart and centralized peaks before its last round, so the
    # final and best-vs-best gaps differ (the expected values are read from the records anyway)
    run_dir = make_run(tiny_config, train={"lr": 0.01})
    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.md'}"
    check_figures(run_dir)

    report = (run_dir / "report.md").read_text()
    fed, cen = read_records(run_dir / "federated"), read_records(run_dir / "centralized")
    results = rows(section(report, "Results"))
    for label, records in (("tiny federated (prefix, fedavg)", fed), ("tiny centralized (prefix)", cen)):
        best = max(records, key=lambda r: (r["test_accuracy"], -r["round"]))
        assert results[label][1:4] == [str(records[-1]["round"]), pct(records[-1]["test_accuracy"]),
                                       f"{pct(best['test_accuracy'])} (round {best['round']})"]
        assert results[label][4] == f"{records[-1]['test_macro_f1']:.3f}"

    gap = rows(section(report, "Federated vs centralized"))["tiny federated (prefix, fedavg)"]
    final = fed[-1]["test_accuracy"] - cen[-1]["test_accuracy"]
    best = max(r["test_accuracy"] for r in fed) - max(r["test_accuracy"] for r in cen)
    assert gap[1:3] == [pct(fed[-1]["test_accuracy"]), pct(cen[-1]["test_accuracy"])]
    assert gap[3] == f"{100 * final:+.2f}" and gap[6] == f"{100 * best:+.2f}"

    per_round = rows(section(report, "Test accuracy per round"))
    assert per_round["tiny federated (prefix, fedavg)"][1:] == [pct(r["test_accuracy"]) for r in fed]
    for name in FIGURES:
        assert f"]({name})" in report
    settings = rows(section(report, "Settings"))["tiny"]
    assert settings[1:] == ["reviews.csv", Path(settings[2]).name, "prefix", "fedavg", "2", "iid", "2",
                            "federated, centralized"]


def test_report_of_several_runs(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_run(tiny_config)
    second = make_run(tiny_config, name="other", modes=["federated"], federation={"rounds": 1})
    copy = shutil.copytree(first, tmp_path / "copy-of-tiny")  # two runs of one config name
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(first), str(second), str(copy)]) == 0

    out = tmp_path / "report"  # several runs, no --out: ./report
    check_figures(out)
    report = (out / "report.md").read_text()
    assert "3 runs" in report.splitlines()[0]
    labels = {f"{first.name} federated (prefix, fedavg)", f"{first.name} centralized (prefix)",
              "other federated (prefix, fedavg)", "copy-of-tiny federated (prefix, fedavg)",
              "copy-of-tiny centralized (prefix)"}
    assert set(rows(section(report, "Results"))) == labels
    # only runs with a centralized mode have a gap
    assert set(rows(section(report, "Federated vs centralized"))) == {
        f"{first.name} federated (prefix, fedavg)", "copy-of-tiny federated (prefix, fedavg)"}
    other = read_records(second / "federated")
    assert rows(section(report, "Results"))["other federated (prefix, fedavg)"][2] == pct(
        other[-1]["test_accuracy"])
    assert not (first / "report.md").exists() and not (second / "report.md").exists()


def test_report_out_folder(tiny_config, tmp_path: Path) -> None:
    run_dir = make_run(tiny_config, modes=["centralized"], federation={"rounds": 1})
    assert main(["report", str(run_dir), "--out", str(tmp_path / "a" / "b")]) == 0
    check_figures(tmp_path / "a" / "b")
    report = (tmp_path / "a" / "b" / "report.md").read_text()
    assert "## Federated vs centralized" not in report  # nothing to compare
    assert not (run_dir / "report.md").exists()


def test_a_folder_that_is_not_a_run_is_a_one_line_error(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_records = tmp_path / "no-records"
    (no_records / "federated").mkdir(parents=True)
    (no_records / "config.toml").write_text('name = "x"\n')
    (no_records / "federated" / "rounds.jsonl").write_text("")
    for folder, why in ((empty, "no config.toml"), (no_records, "no mode folder"),
                        (tmp_path / "missing", "no such folder")):
        assert main(["report", str(folder), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(folder) in err and why in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_markdown_table() -> None:
    assert table(["mode", "accuracy"], [["federated", "76.80%"], ["centralized", "n/a"]],
                 markdown=True) == (
        "| mode        | accuracy |\n"
        "|:----------- | --------:|\n"
        "| federated   |   76.80% |\n"
        "| centralized |      n/a |")


def test_settings_describe_each_partition_scheme() -> None:
    def described(**partition) -> str:
        run = RunFolder(Path("r"), "r", {"partition": partition}, {})
        return rows(settings_table([run]))["r"][6]

    assert described(scheme="iid") == "iid"
    assert described(scheme="dirichlet", alpha=0.1) == "Dirichlet(α=0.1) on the label"
    assert described(scheme="dirichlet-balanced", alpha=0.1) == (
        "Dirichlet(α=0.1) on the label, equal client sizes")
    assert described(scheme="shard", shards_per_client=2) == "2 label shards per client"


CONFIG = {"name": "hand", "seed": 0, "model": {"name": "tiny"}, "data": {"dataset": "reviews.csv"},
          "method": {"name": "prefix"}, "strategy": {"name": "fedavg"},
          "partition": {"scheme": "iid", "num_clients": 2}, "federation": {"rounds": 6, "eval_every": 3}}


def test_report_of_records_that_skip_metrics_on_some_rounds(tmp_path: Path) -> None:
    """A run folder written by hand as a run with federation.eval_every = 3 leaves it: rounds 1, 2,
    4 and 5 have no test_*/val_* keys. Local has a record per evaluated round only (here every
    other round, to differ from the others) and sends nothing."""
    run_dir = write_run_folder(tmp_path / "hand", CONFIG, {
        # validation too: the federated run's own best validation round is 3 (selected: 0.77)
        "federated": [record(0, 0.50), record(1), record(2), record(3, 0.77, val_accuracy=0.86), record(4),
                      record(5), record(6, 0.795, val_accuracy=0.85)],
        # validation: the reference is round 3's test accuracy (best validation), not round 6's
        "centralized": [record(0, 0.50, val_accuracy=0.50), record(1, up=500, down=500),
                        record(2, up=500, down=500), record(3, 0.80, 500, 500, val_accuracy=0.85),
                        record(4, up=500, down=500), record(5, up=500, down=500),
                        record(6, 0.82, 500, 500, val_accuracy=0.84)],
        "local": [record(n, a, 0, 0, test_accuracy_weighted=a, test_accuracy_min=a - 0.1,
                         test_accuracy_max=a + 0.1) for n, a in ((0, 0.50), (2, 0.60), (4, 0.62), (6, 0.65))],
    })
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    check_figures(tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()

    results = rows(section(report, "Results"))
    assert results["hand federated (prefix, fedavg)"][1:4] == ["6", "79.50%", "79.50% (round 6)"]
    assert results["hand local (prefix)"][1:4] == ["6", "65.00% (55.00%..75.00%)", "65.00% (round 6)"]
    assert results["hand local (prefix)"][5] == "0 B"
    assert "Local: every client trains alone" in section(report, "Results")
    gap = rows(section(report, "Federated vs centralized"))
    assert list(gap) == ["hand federated (prefix, fedavg)"]  # local is no federated run
    assert gap["hand federated (prefix, fedavg)"][1:4] == ["79.50%", "82.00%", "-2.50"]

    # reference 0.80: 95% = 0.76 reached at round 3 after 3 x 100 bytes; 99% = 0.792 at round 6;
    # plateau: the last tenth of 6 rounds is round 6 alone, so rounds 3 and 6: 0.795 - 0.77
    assert rows(section(report, "Convergence"))["hand federated (prefix, fedavg)"][1:] == [
        "80.00% (best validation, round 3)", "3", "300 B", "6", "600 B", "no (2.50 over rounds 3-6)",
        "77.00% (best validation, round 3)", "96.25%"]  # 0.77 / 0.80

    per_round = section(report, "Test accuracy per round")
    header = [c.strip() for c in next(ln for ln in per_round.splitlines() if ln.startswith("|"))
              .strip("|").split("|")]
    assert header[1:] == ["0", "2", "3", "4", "6"]  # only rounds that some mode evaluated
    per_round_rows = rows(per_round)
    assert per_round_rows["hand federated (prefix, fedavg)"][1:] == ["50.00%", "", "77.00%", "", "79.50%"]
    assert per_round_rows["hand local (prefix)"][1:] == ["50.00%", "60.00%", "", "62.00%", "65.00%"]


def test_a_run_still_going_reports_its_last_evaluated_round() -> None:
    # round 4 is done but not evaluated: final is round 3's
    s = summarize([record(0, 0.5), record(1), record(2, 0.7), record(3, 0.6), record(4)])
    assert (s.final, s.final_round, s.best, s.best_round) == (0.6, 3, 0.7, 2)
    assert s.macro_f1 == 0.6 - 0.1 and s.bytes_total == 400 and s.final_text() == "60.00%"
    assert math.isnan(s.final_min) and math.isnan(s.final_max)
