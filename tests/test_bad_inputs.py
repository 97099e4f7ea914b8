"""The twelve bad inputs of issue 22, tried as a new user would, through the CLI: each one is a
one-line error with exit code 2 and leaves no file in the output folder. (More cases of each kind
live beside their modules: test_config, test_data, the fuzz tests.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedcustom.cli import main

Case = Callable[[Path, Path], tuple[list[str], str]]  # (tmp folder, config file) -> (argv, message)


def data_file(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


def run_with(**data: str) -> Case:
    def case(tmp: Path, config: Path) -> tuple[list[str], str]:
        return ["run", str(config), *(f"--set={k}={v}" for k, v in data.items())], ""
    return case


def csv(content: bytes, message: str, **extra: str) -> Case:
    def case(tmp: Path, config: Path) -> tuple[list[str], str]:
        path = data_file(tmp, "data.csv", content)
        return ["run", str(config), f'--set=data.dataset="{path}"',
                *(f"--set={k}={v}" for k, v in extra.items())], message
    return case


CASES: dict[str, Case] = {
    "missing label column": csv(b"text,stars\na fine film,5\nawful,1\n", "label"),
    "empty file": csv(b"", "no columns"),
    "one class": csv(b"text,label\n" + b"".join(b"film %d,pos\n" % i for i in range(40)), "class"),
    "binary garbage": csv(bytes(range(256)) * 8, "data.csv"),
    "NaN learning rate": lambda tmp, config: (["run", str(config), "--set=train.lr=nan"], "train.lr"),
    "zero clients": lambda tmp, config: (["run", str(config), "--set=partition.num_clients=0"],
                                         "partition.num_clients"),
    "50,000 clients": lambda tmp, config: (["run", str(config), "--set=partition.num_clients=50000"],
                                           "50000 clients"),
    "resume of a non-run folder": lambda tmp, config: (["run", "--resume", str(tmp)], str(tmp)),
    "report of a missing folder": lambda tmp, config: (["report", str(tmp / "nowhere")], "nowhere"),
    "unknown method": lambda tmp, config: (["run", str(config), "--set=method.name=nope"],
                                           "unknown method 'nope'"),
    "missing model path": lambda tmp, config: (["run", str(config), "--set=model.name=/no/such/model"],
                                               "/no/such/model"),
    "unwritable output folder": lambda tmp, config: (
        ["run", str(config), f'--set=output_dir="{make_unwritable(tmp)}"'], "locked"),
}


def make_unwritable(tmp: Path) -> Path:
    """A folder no one can create, root included: its parent is a file."""
    (tmp / "locked").write_text("a file, not a folder\n")
    return tmp / "locked" / "runs"


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_is_one_line_and_exit_2(name: str, tmp_path: Path, tiny_model_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "runs"
    config = tmp_path / "exp.toml"
    config.write_text(f'output_dir = "{out}"\n[model]\nname = "{tiny_model_dir}"\nmax_length = 16\n'
                      "[data]\nmax_train_examples = 60\nmax_test_examples = 20\n"
                      "[federation]\nrounds = 1\n")
    argv, message = CASES[name](tmp_path, config)
    assert main(argv) == 2, name
    err = capsys.readouterr().err
    assert err.startswith("fedcustom: error:") and err.count("\n") == 1, err
    assert message.lower() in err.lower(), err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
