"""A 2-client x 2-round run on a tiny model: files, measured bytes, determinism, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedcustom.cli import main
from fedcustom.core.config import dumps
from fedcustom.core.payload import serialize
from fedcustom.data import load_task_data
from fedcustom.runs.experiment import run_experiment


def test_two_clients_two_rounds(tiny_config) -> None:
    cfg = tiny_config()
    results = run_experiment(cfg, log=lambda *_: None)
    run_dir = results["federated"].path.parent
    train_examples = len(load_task_data(cfg.data).train)
    assert (run_dir / "config.toml").read_text() == dumps(cfg)
    assert "client" in (run_dir / "partition.txt").read_text()
    assert "federated test_accuracy" in (run_dir / "summary.txt").read_text()

    for mode, clients in (("federated", 2), ("centralized", 1)):
        path = run_dir / mode
        records = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == [0, 1, 2]
        assert (path / "rounds.csv").read_text().count("\n") == 4
        state = load_file(path / "state.safetensors")
        # bytes are the serialized payload's size: one state per client each way
        payload = len(serialize(state))
        for r in records[1:]:
            assert r["clients"] == clients
            assert r["bytes_down"] == r["bytes_up"] == payload * clients
            assert 0 <= r["test_accuracy"] <= 1 and r["train_loss"] > 0
            assert r["client_seconds"] > 0 and r["peak_rss_mb"] > 0
            # the shared loop: one forward and one backward per example seen (1 local epoch)
            assert r["forward_passes"] == r["backward_passes"] == train_examples
        assert (path / "adapter" / "adapter_config.json").is_file()
    assert results["federated"].records[-1] != results["centralized"].records[-1]


def test_same_config_and_seed_give_the_same_numbers(tiny_config) -> None:
    drop = ("client_seconds", "round_seconds", "peak_rss_mb")

    def run(seed: int):
        out = run_experiment(tiny_config(seed=seed, modes=["federated"]), log=lambda *_: None)
        records = [{k: v for k, v in r.items() if k not in drop} for r in out["federated"].records]
        return records, load_file(out["federated"].path / "state.safetensors")

    (r1, s1), (r2, s2), (r3, _) = run(0), run(0), run(1)
    assert r1 == r2
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert r1 != r3


def test_centralized_lr_is_the_centralized_modes_own_rate(tiny_config) -> None:
    """train.centralized_lr trains the centralized mode as train.lr would, and leaves the
    federated mode alone."""
    def run(**train: float) -> dict[str, list]:
        out = run_experiment(tiny_config(train=train), log=lambda *_: None)
        return {m: [(r.get("train_loss"), r["test_accuracy"]) for r in out[m].records]
                for m in ("federated", "centralized")}

    own, same = run(lr=0.05, centralized_lr=0.01), run(lr=0.01)
    assert own["centralized"] == same["centralized"]
    assert own["federated"] == run(lr=0.05)["federated"] != same["federated"]


def test_client_sampling_fraction(tiny_config) -> None:
    cfg = tiny_config(partition={"num_clients": 4}, federation={"fraction_fit": 0.5},
                      modes=["federated"])
    records = run_experiment(cfg, log=lambda *_: None)["federated"].records
    assert [r["clients"] for r in records[1:]] == [2, 2]


def test_cli_run_with_overrides(tiny_config, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["run", str(config), "--set", "federation.rounds=1", "--set",
                 "modes=['federated']"]) == 0
    out = capsys.readouterr().out
    assert "federated test_accuracy" in out and "results:" in out


def test_two_processes_cannot_write_one_run_folder(tiny_config, tmp_path: Path) -> None:
    from fedcustom.core.errors import UserError
    from fedcustom.core.io import folder_lock

    folder = tmp_path / "one-run"
    with folder_lock(folder), pytest.raises(UserError, match="being written by another fedcustom process"):
        run_experiment(tiny_config(), log=lambda *_: None, into=folder)
    assert not (folder / "config.toml").exists()  # the refused run wrote nothing


def test_an_unwritable_output_folder_fails_before_the_model_loads(tiny_config, tmp_path: Path,
                                                                  capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = tiny_config()
    path = tmp_path / "c.toml"
    path.write_text(dumps(cfg))
    assert main(["run", str(path), "--set", f"output_dir={blocker / 'runs'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedcustom: error: cannot write results under {blocker / 'runs'}: {blocker} is not "
                   "a writable folder"]


def test_quiet_and_version(tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """-q leaves stdout to the command's own output (none for run); the library logs nothing
    unless asked (the `fedcustom` logger has no handler outside the command line)."""
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    assert main(["-q", "run", str(config), "--set", "federation.rounds=1",
                 "--set", "modes=['federated']"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "round" not in captured.err  # no records, no progress bars
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("fedcustom ")


def test_the_command_line_logs_even_after_a_library_reconfigured_logging(tiny_config, tmp_path: Path) -> None:
    # In its own process: dictConfig closes every logging handler of the process, pytest's too, which
    # would break the capture of the tests that follow in this one.
    config = tmp_path / "tiny.toml"
    config.write_text(dumps(tiny_config()))
    script = ("import logging.config, sys\n"
              "logging.config.dictConfig({'version': 1})  # disable_existing_loggers, as some libraries do\n"
              "from fedcustom.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "run", str(config), "--set", "federation.rounds=1",
                           "--set", "modes=['federated']"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "results:" in done.stdout


def test_peak_rss_is_the_runs_own_after_a_reset() -> None:
    """peak_rss_mb reads the peak since the last reset_peak_rss, so a study's later, smaller run does
    not report an earlier run's peak."""
    import numpy as np

    from fedcustom.core.device import peak_rss_mb, reset_peak_rss

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc")
    block = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    high = peak_rss_mb()
    del block
    reset_peak_rss()
    assert peak_rss_mb() < high - 300
