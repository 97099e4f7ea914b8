"""Optional packages (pyproject's extras): a component whose package is missing fails in one line
naming the extra, when the config is built and from the command line; the others keep working.

A package is made absent with `sys.modules[name] = None`, which makes `import name` fail.
"""

from __future__ import annotations

import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from fedcustom.cli import main
from fedcustom.core import extras
from fedcustom.core.config import load_config
from fedcustom.core.errors import UserError
from fedcustom.core.registry import ENGINES, METHODS, STRATEGIES, Builtin, Registry
from fedcustom.rag.config import load_rag_config

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# (overrides of an experiment config, the package it then needs, its extra, who needs it)
NEEDS = [
    (["method.name=bbpt"], "cma", "blackbox", "method 'bbpt'"),
    (["strategy.name=dp_fedavg"], "opacus", "privacy", "strategy 'dp_fedavg'"),
    (["engine=flower"], "flwr", "flower", "engine 'flower'"),
    (["engine=flower-simulation"], "flwr", "flower", "engine 'flower-simulation'"),
    (["engine=flower-simulation"], "ray", "flower", "engine 'flower-simulation'"),
    (["strategy.name=median"], "flwr", "flower", "strategy 'median'"),
    (["strategy.name=krum"], "flwr", "flower", "strategy 'krum'"),
    (["model.quantization='4bit'"], "bitsandbytes", "quantization", "model.quantization = '4bit'"),
]


def absent(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def expected(package: str, extra: str, who: str) -> str:
    return f"{who} needs the optional package {package}: pip install 'fedcustom[{extra}]'"


@pytest.mark.parametrize(("overrides", "package", "extra", "who"), NEEDS)
def test_a_missing_package_fails_the_config_in_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, overrides: list[str], package: str, extra: str, who: str
) -> None:
    load_config(None, overrides)  # installed here (the dev install has every extra)
    absent(monkeypatch, package)
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert str(err.value) == expected(package, extra, who)


@pytest.mark.parametrize(("overrides", "package", "extra", "who"), NEEDS)
def test_a_missing_package_exits_2_with_one_line_from_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    overrides: list[str], package: str, extra: str, who: str,
) -> None:
    config = tmp_path / "exp.toml"
    config.write_text(f'output_dir = "{tmp_path / "runs"}"\n')
    absent(monkeypatch, package)
    args = [a for o in overrides for a in ("--set", o)]
    assert main(["run", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert err == f"fedcustom: error: {expected(package, extra, who)}\n"
    assert not (tmp_path / "runs").exists()


def test_without_any_optional_package_the_base_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    absent(monkeypatch, *extras.EXTRAS)
    cfg = load_config(None, ["method.name=lora", "strategy.name=fedadam"])
    assert (cfg.engine, cfg.method.name) == ("simulation", "lora")
    assert "flower" in ENGINES.names()  # still a known name: asking for it says what to install


def test_rag_config_needs_faiss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    load_rag_config()
    absent(monkeypatch, "faiss")
    with pytest.raises(UserError) as err:
        load_rag_config()
    assert str(err.value) == expected("faiss", "rag", "fedcustom rag")
    config = tmp_path / "rag.toml"
    config.write_text("")
    assert main(["rag", "eval", str(config)]) == 2
    assert capsys.readouterr().err == f"fedcustom: error: {expected('faiss', 'rag', 'fedcustom rag')}\n"
    assert main(["rag", "index", str(tmp_path / "store"), "--docs", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"fedcustom: error: {expected('faiss', 'rag', 'fedcustom rag')}\n"
    assert not (tmp_path / "store").exists()


def test_generation_data_needs_rouge_score_before_the_model_loads(
    tiny_lm_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedcustom.core.config import dumps

    config = tmp_path / "lm.toml"
    config.write_text(dumps(tiny_lm_config()))
    absent(monkeypatch, "rouge_score")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"fedcustom: error: generation data \('.*'\) needs the optional package "
                        r"rouge_score: pip install 'fedcustom\[generation\]'\n", err), err
    assert not (tmp_path / "runs").exists()


def test_smollm2_needs_gguf_to_read_its_gguf_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedcustom.models.backbones import resolve

    monkeypatch.setenv("FEDCUSTOM_CACHE", str(tmp_path))  # no dequantized copy cached yet
    absent(monkeypatch, "gguf")
    with pytest.raises(UserError, match=re.escape("pip install 'fedcustom[generation]'")) as err:
        resolve("smollm2")
    assert str(err.value).startswith("model 'smollm2' (read from its GGUF file once, then cached) needs "
                                     "the optional package gguf")


def test_a_command_names_the_extra_it_needs_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    absent(monkeypatch, "flwr")
    assert main(["flower", "node-key", str(tmp_path / "keys"), "site-1"]) == 2
    err = capsys.readouterr().err
    assert err == f"fedcustom: error: {expected('flwr', 'flower', 'fedcustom flower')}\n"
    assert not (tmp_path / "keys").exists()


def test_a_missing_optional_import_anywhere_else_becomes_one_line() -> None:
    assert extras.missing_extra(ModuleNotFoundError("no cma", name="cma"), "fedcustom run") == (
        "fedcustom run needs the optional package cma: pip install 'fedcustom[blackbox]'")
    assert extras.missing_extra(ModuleNotFoundError("no x", name="scipy.stats"), "fedcustom run") is None


def test_require_returns_the_module_or_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    assert extras.require("opacus.accountants", "x").RDPAccountant
    absent(monkeypatch, "opacus")
    with pytest.raises(UserError, match=re.escape("x needs the optional package opacus: "
                                                  "pip install 'fedcustom[privacy]'")):
        extras.require("opacus.accountants", "x")
    with pytest.raises(ValueError, match="no optional package"):
        extras.require("json", "x")  # not declared in EXTRAS: a mistake of ours, not the user's


def test_a_builtin_module_missing_its_package_leaves_the_others_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry: Registry[type] = Registry("engine", (
        "fake_plain_engine",
        Builtin("fake_fancy_engine", provides=("fancy",), needs=("cma",)),
    ))
    holder = types.ModuleType("fake_registry_holder")
    holder.REGISTRY = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_registry_holder", holder)
    (tmp_path / "fake_plain_engine.py").write_text(
        "from fake_registry_holder import REGISTRY\n\n@REGISTRY.register('plain')\nclass Plain:\n    pass\n")
    (tmp_path / "fake_fancy_engine.py").write_text(
        "import cma\nfrom fake_registry_holder import REGISTRY\n\n"
        "@REGISTRY.register('fancy')\nclass Fancy:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fake_plain_engine", "fake_fancy_engine"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    real_cma = sys.modules.get("cma")
    absent(monkeypatch, "cma")

    assert registry.names() == ["fancy", "plain"]
    assert registry.get("plain").__name__ == "Plain"
    with pytest.raises(UserError) as err:
        registry.get("fancy")
    assert str(err.value) == expected("cma", "blackbox", "engine 'fancy'")
    assert "fake_fancy_engine" not in sys.modules  # never imported without its package

    if real_cma is not None:
        monkeypatch.setitem(sys.modules, "cma", real_cma)
    else:
        monkeypatch.delitem(sys.modules, "cma")
    assert registry.require("fancy").__name__ == "Fancy"  # installed since: imported on demand


def test_every_declared_need_is_a_known_optional_package() -> None:
    for registry in (METHODS, STRATEGIES, ENGINES):
        for name in registry.names():
            assert set(registry.needs(name)) <= set(extras.EXTRAS), (registry.kind, name)
    assert METHODS.needs("bbpt") == ("cma",)
    assert METHODS.needs("prefix") == ()
    assert ENGINES.needs("flower-simulation") == ("flwr", "ray")


# --- pyproject ---------------------------------------------------------------------------------

# import name -> the distribution that provides it, for the packages an extra lists itself
DISTRIBUTIONS = {"flwr": "flwr", "opacus": "opacus", "faiss": "faiss-cpu", "cma": "cma",
                 "rouge_score": "rouge-score", "gguf": "gguf", "tensorboard": "tensorboard",
                 "mlflow": "mlflow-skinny"}


def optional_dependencies() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def distribution(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_all_extra_holds_every_other_extra() -> None:
    extras_ = optional_dependencies()
    assert {"flower", "privacy", "rag", "blackbox", "generation", "tracking", "dev", "all"} <= set(extras_)
    for name, requirements in extras_.items():
        missing = set(requirements) - set(extras_["all"])
        assert not missing, f"extra '{name}' lists {sorted(missing)}, which 'all' does not"


def test_the_extras_named_in_errors_install_their_packages() -> None:
    extras_ = optional_dependencies()
    for module, extra in extras.EXTRAS.items():
        assert extra in extras_, f"core.extras sends {module} to extra '{extra}', which pyproject lacks"
        if module in DISTRIBUTIONS:
            listed = {distribution(r) for r in extras_[extra]}
            assert DISTRIBUTIONS[module] in listed, (module, extra, listed)


def test_the_base_dependencies_leave_the_extras_out() -> None:
    base = {distribution(r) for r in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]}
    assert not base & set(DISTRIBUTIONS.values()), base & set(DISTRIBUTIONS.values())
