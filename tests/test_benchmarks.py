"""The benchmark harness runs end to end on the tiny model and writes well-formed results.

No timing thresholds: speed claims live in benchmarks/results, measured on the reference machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(tiny_model_dir: Path, sentiment_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `python -m benchmarks ARGS` in process on the tiny model and the small CSV; return its exit
    code and the results folder."""
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is a top-level package beside src/
    from benchmarks.__main__ import main

    out = tmp_path / "results"
    common = ["--model", str(tiny_model_dir), "--out", str(out), "--repeats", "1",
              "--set", f"data.dataset={json.dumps(str(sentiment_csv))}", "--set", "data.text_column=review",
              "--set", "data.label_column=sentiment", "--set", "model.max_length=16"]

    def run(*args: str) -> tuple[int, Path]:
        return main([*args, *common]), out

    return run


def load(out: Path, name: str) -> dict:
    result = json.loads((out / f"{name}.json").read_text())
    assert result["benchmark"] == name
    assert result["command"].startswith("python -m benchmarks ")
    machine = result["machine"]
    assert machine["cpu_count"] >= 1 and machine["torch"] and machine["torch_threads"] == 1
    assert result["ratios"], "a benchmark reports ratios"
    for key, value in result["ratios"].items():
        assert math.isfinite(value), key
        # memory growth per extra client is a slope near 0 (one shared model): noise may make it < 0
        assert value > 0 or key.startswith("memory_per_extra_client"), key
    return result


def test_overhead_replays_the_same_steps(bench) -> None:
    code, out = bench("overhead", "--quick")
    assert code == 0
    result = load(out, "overhead")["results"]
    # 4 clients x 16 examples, batch 16, 2 rounds: one step per client per round on both sides
    assert result["optimizer_steps"] == 8 and result["examples"] == 4 * 16 * 2
    assert len(result["fedcustom_cpu_s"]) == len(result["plain_wall_s"]) == 1
    assert result["fedcustom_median_cpu_s"] > 0 and result["plain_median_wall_s"] > 0


def test_throughput_covers_every_gradient_method(bench) -> None:
    code, out = bench("throughput", "--quick")
    assert code == 0
    result = load(out, "throughput")
    assert set(result["results"]) == {"full", "lora", "prompt", "prefix"}
    for name, r in result["results"].items():
        assert r["train_examples_per_cpu_s"] > 0 and r["eval_examples_per_cpu_s"] > 0, name
        assert r["trainable_parameters"] > 0
    # full fine-tuning trains more tensors than any parameter-efficient method
    full = result["results"]["full"]["trainable_parameters"]
    assert all(r["trainable_parameters"] < full for n, r in result["results"].items() if n != "full")


def test_scale_point_measures_one_run(tiny_model_dir: Path, sentiment_csv: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One scale point in process (the CLI runs each in a fresh process: see the slow test)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import scale

    overrides = [f"data.dataset={json.dumps(str(sentiment_csv))}", "data.text_column=review",
                 "data.label_column=sentiment", "model.max_length=16"]
    p = scale.point({"model": str(tiny_model_dir), "overrides": overrides, "clients": 8,
                     "examples_per_client": 2, "rounds": 1, "fraction_fit": 0.5})
    assert p["clients"] == 8 and p["sampled_per_round"] == 4
    assert p["peak_rss_mb"] >= p["rss_after_setup_mb"] > 0 and p["base_model_mb"] > 0
    assert len(p["round_seconds"]) == 1 and p["state_bytes_per_client"] > 0


@pytest.mark.slow
def test_scale_runs_each_point_in_its_own_process(bench) -> None:
    code, out = bench("scale", "--quick", "--clients", "2,8")
    assert code == 0
    points = load(out, "scale")["results"]["points"]
    assert [p["clients"] for p in points] == [2, 8]
    for p in points:
        assert p["peak_rss_mb"] > p["base_model_mb"] > 0 and p["tree_peak_pss_mb"] > 0
        assert p["seconds_per_round"] > 0 and p["state_bytes_per_client"] > 0


def test_bad_override_is_a_user_error(bench, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = bench("overhead", "--quick", "--set", "federation.rounds=0")
    assert code == 2
    assert "federation.rounds" in capsys.readouterr().err
    assert not (out / "overhead.json").exists()


@pytest.mark.ray
def test_peer_against_flower_simulation(bench) -> None:
    code, out = bench("peer", "--quick")
    assert code == 0
    runs = load(out, "peer")["results"]
    for side in ("fedcustom", "flower"):
        assert len(runs[side]) == 1
        assert len(runs[side][0]["round_s"]) == 2 and runs[side][0]["tree_peak_pss_mb"] > 0
