"""The benchmark harness runs end to end on the tiny model and writes well-formed results.

No timing thresholds: speed claims live in benchmarks/results, measured on the reference machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pytest
import torch

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


def test_eval_batch_times_every_size_on_the_same_weights(bench) -> None:
    from benchmarks.eval_batch import LARGEST, SIZES

    code, out = bench("eval-batch", "--quick")
    assert code == 0
    result = load(out, "eval-batch")
    assert set(result["results"]) == {f"{m}_{t}_threads" for m in ("prefix", "full")
                                      for t in result["settings"]["threads"]}
    for name, r in result["results"].items():
        assert set(r["examples_per_s"]) == {str(b) for b in SIZES} and min(r["examples_per_s"].values()) > 0
        # one model, the same rows: the batch size moves only the rounding
        assert r["max_accuracy_change"] <= 1 / r["eval_examples"] and r["max_loss_change"] < 1e-3, name
        speed = r["examples_per_s"]
        assert result["ratios"][f"{name}_batch_8_over_{LARGEST}"] == speed["8"] / speed[str(LARGEST)]


def test_precision_compares_fp32_and_bf16_per_method(bench) -> None:
    code, out = bench("precision", "--quick")
    assert code == 0
    result = load(out, "precision")
    assert set(result["results"]) == {"full", "lora", "prompt", "prefix"}
    for name, r in result["results"].items():
        for p in ("fp32", "bf16"):
            assert r[f"{p}_train_examples_per_cpu_s"] > 0 and r[f"{p}_eval_examples_per_s"] > 0, name
            assert len(r[f"{p}_train_cpu_s"]) == 1 and 0 <= r[f"{p}_eval_accuracy"][0] <= 1
        for key in ("train", "eval"):
            assert result["ratios"][f"{name}_{key}_bf16_over_fp32"] == r[f"{key}_bf16_over_fp32_cpu"]
    flags = result["machine"]["cpu_flags"]
    assert flags is None or {"avx512_bf16", "amx_bf16"} <= set(flags)


def test_limit_measures_matmul_peak_and_training_flops(bench) -> None:
    code, out = bench("limit", "--quick")
    assert code == 0
    result = load(out, "limit")
    settings, results = result["settings"], result["results"]
    # the tiny model: squares of its hidden and feed-forward sizes, and a batch's product
    hidden, ffn = settings["hidden_size"], settings["intermediate_size"]
    assert settings["matmul_shapes"][-1] == [16 * 16, hidden, ffn]
    assert len(results["matmul"]) == len(settings["matmul_shapes"]) * 2 * len(settings["matmul_threads"])
    assert all(r["gflops"] > 0 and r["calls_per_sample"] >= 1 for r in results["matmul"])
    full, prefix = results["training"]["full"], results["training"]["prefix"]
    for p in ("fp32", "bf16"):
        assert full[p]["flops_per_pass"] > prefix[p]["flops_per_pass"] > 0  # no weight gradients
        assert 0 < full[p]["fraction_of_peak"] == result["ratios"][f"full_{p}_fraction_of_matmul_peak"]
    # autocast changes the dtype of the products, not their shapes
    assert full["fp32"]["flops_by_op"] == full["bf16"]["flops_by_op"]


def test_limit_times_a_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import limit

    r = limit.time_matmul(8, 16, 4, torch.float32, 1, 2)
    assert (r["m"], r["k"], r["n"], r["dtype"], r["threads"]) == (8, 16, 4, "float32", 1)
    assert len(r["wall_s"]) == 2 and r["gflops"] == 2 * 8 * 16 * 4 / min(r["wall_s"]) / 1e9


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
    # two kernel counters read at different times (the peak's may lag the current RSS by a few
    # pages, seen after this process had forked workers in an earlier test)
    assert p["peak_rss_mb"] + 1 >= p["rss_after_setup_mb"] > 0 and p["base_model_mb"] > 0
    assert len(p["round_seconds"]) == 1 and p["state_bytes_per_client"] > 0
    assert p["workers"] == 1 and len(p["numbers_digest"]) == 64 and p["examples_per_client"] == 2


def test_scale_never_gives_two_clients_the_same_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each client holds rows of its own: fewer examples per client where the dataset is short,
    an error where it cannot give every client one."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import scale
    from fedcustom.core.errors import UserError

    assert [scale.examples_per_client(4, 10_202, n) for n in (10, 1000, 3000, 10_000)] == [4, 4, 3, 1]
    with pytest.raises(UserError, match="20,000 clients need at least one training row each; the "
                                        "dataset has 10,202"):
        scale.examples_per_client(4, 10_202, 20_000)


def test_scale_compares_worker_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import scale

    def point(clients: int, workers: int, seconds: float, pss: float, digest: str) -> dict:
        return {"clients": clients, "workers": workers, "seconds_per_round": seconds,
                "tree_peak_pss_mb": pss, "numbers_digest": digest}

    points = [point(10, 1, 4.0, 800, "a"), point(10, 2, 2.5, 1000, "a"), point(100, 1, 16.0, 900, "b"),
              point(100, 2, 9.0, 1080, "c")]
    ratios, same = scale.compare_workers(points, (1, 2))
    assert ratios == {
        "round_speedup_2_workers_10_clients": 1.6, "tree_pss_2_workers_10_clients_over_1": 1.25,
        "round_speedup_2_workers_100_clients": 16 / 9, "tree_pss_2_workers_100_clients_over_1": 1.2}
    assert same == {"2 workers, 10 clients": True, "2 workers, 100 clients": False}


@pytest.mark.slow
def test_scale_runs_each_point_in_its_own_process(bench) -> None:
    code, out = bench("scale", "--quick", "--clients", "2,8")
    assert code == 0
    points = load(out, "scale")["results"]["points"]
    assert [p["clients"] for p in points] == [2, 8]
    settings = load(out, "scale")["settings"]
    assert settings["examples_per_client"] == [2, 2] and settings["training_rows"] == 96
    assert settings["update_memory_mb"] == 256.0
    for p in points:
        assert p["peak_rss_mb"] > p["base_model_mb"] > 0 and p["tree_peak_pss_mb"] > 0
        assert p["seconds_per_round"] > 0 and p["state_bytes_per_client"] > 0


def test_bad_override_is_a_user_error(bench, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = bench("overhead", "--quick", "--set", "federation.rounds=0")
    assert code == 2
    assert "federation.rounds" in capsys.readouterr().err
    assert not (out / "overhead.json").exists()


@pytest.mark.ray
def test_peer_runs_both_engines(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """One workload of --quick (each side is a fresh process, Flower's with Ray: about 25 s each)."""
    from benchmarks import peer

    monkeypatch.setattr(peer, "QUICK_WORKLOADS", {"overhead": peer.QUICK_WORKLOADS["overhead"]})
    code, out = bench("peer", "--quick")
    assert code == 0
    result = load(out, "peer")
    assert result["settings"]["engines"] == ["simulation", "flower-simulation"]
    r = result["results"]["overhead"]
    assert r["same_metrics"]  # the same config gives the same numbers on both engines
    for engine in ("simulation", "flower-simulation"):
        run = r["runs"][engine][0]
        assert len(run["round_s"]) == 2 and run["steady_round_s"] == run["round_s"][1]
        assert run["setup_s"] > 0 and run["tree_peak_pss_mb"] > 0
    assert set(result["ratios"]) == {f"overhead_{name}_flower_over_simulation" for name in (
        "steady_round", "setup", "wall", "tree_cpu", "peak_memory")}


def test_peer_setup_and_steady_state_from_the_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import peer

    r = peer.summarize({"round_s": [9.0, 2.0, 4.0, 3.0]}, process_wall=30.0)
    assert r["steady_round_s"] == 3.0  # the median of rounds 2..R
    assert r["first_round_extra_s"] == 6.0 and r["setup_s"] == 12.0


@pytest.fixture
def gpu_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `python -m benchmarks gpu ARGS --out DIR` in process; return its exit code and folder."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.delenv("OUT", raising=False)
    from benchmarks.__main__ import main

    def run(*args: str) -> tuple[int, Path]:
        return main(["gpu", *args, "--out", str(tmp_path)]), tmp_path

    return run


def test_gpu_check_dry_run_runs_its_parts_on_the_cpu(gpu_check) -> None:
    """Every part but `tests` (a pytest in a fresh process: see the next test)."""
    code, out = gpu_check("--dry-run", "--parts", "device,train,overhead,lora_4bit")
    assert code == 0
    result = json.loads((out / "gpu-dry-run.json").read_text())
    assert result["dry_run"] and result["commit"] and result["command"].startswith("python -m benchmarks gpu")
    assert result["machine"]["torch"] and result["plan"]["train"]["llama"]["num_hidden_layers"] == 2
    parts = result["parts"]
    assert list(parts) == ["device", "train", "overhead", "lora_4bit", "tests"]
    assert all(p["wall_s"] >= 0 for p in parts.values())
    for name in ("device", "train", "overhead"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    settings = parts["train"]["result"]["settings"]
    assert set(settings) == {"lora_fp32", "lora_bf16", "prefix_fp32", "prefix_bf16"}
    for s in settings.values():
        assert s["steps"] == 2 and s["tokens"] == 2 * 8 * 32 and s["tokens_per_s"] > 0
        assert math.isfinite(s["loss"]) and s["trainable_parameters"] > 0
    overhead = parts["overhead"]["result"]
    assert overhead["results"]["optimizer_steps"] == 8 and overhead["ratios"]["wall_time_ratio"] > 0
    assert parts["lora_4bit"]["status"].startswith("unavailable: ")  # no 4-bit layers on a CPU
    assert parts["tests"]["status"] == "skipped: not asked for (--parts)"


def test_gpu_check_runs_the_gpu_marked_tests(gpu_check, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `tests` part runs pytest -m gpu on the files that mark tests so (a dry run collects
    them only); a failing pytest fails the part, not the check."""
    import subprocess

    from benchmarks import gpu

    calls, real_run = [], subprocess.run

    def fake_pytest(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        if "pytest" not in cmd:  # git, for the commit
            return real_run(cmd, **kwargs)
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if len(calls) == 2 else 0, "6 tests collected\n", "")

    monkeypatch.setattr(gpu.subprocess, "run", fake_pytest)
    for expected in ("ok", "failed: RuntimeError: pytest exit 1: 6 tests collected"):
        code, out = gpu_check("--dry-run", "--parts", "tests")
        assert code == 0
        part = json.loads((out / "gpu-dry-run.json").read_text())["parts"]["tests"]
        assert part["status"] == expected and part["result"]["summary"] == "6 tests collected"
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pytest", "-q"] and cmd[cmd.index("-m", 3) + 1] == "gpu"
    assert "tests/test_gpu.py" in cmd and "tests/test_benchmarks.py" not in cmd
    assert cmd[-1] == "--collect-only"


def test_gpu_check_records_parts_out_of_time(gpu_check, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpu

    code, out = gpu_check("--dry-run", "--budget", "0")  # nothing left: every part skipped
    assert code == 0
    parts = json.loads((out / "gpu-dry-run.json").read_text())["parts"]
    assert all(p["status"].startswith("skipped: ") for p in parts.values())

    def slow(_plan, found: dict, _deadline: float) -> None:
        found["started"] = True
        time.sleep(5)

    monkeypatch.setattr(gpu, "MIN_PART_S", 0.0)
    monkeypatch.setattr(gpu, "DRY_RUN", dataclasses.replace(gpu.DRY_RUN, budgets={
        **gpu.DRY_RUN.budgets, "device": 0.2}))
    monkeypatch.setattr(gpu, "device_part", slow)
    start = time.monotonic()
    code, out = gpu_check("--dry-run", "--parts", "device")
    assert code == 0 and time.monotonic() - start < 4
    parts = json.loads((out / "gpu-dry-run.json").read_text())["parts"]
    assert parts["device"]["status"].startswith("timed out")
    assert parts["device"]["result"] == {"started": True}  # what it had when stopped
    assert parts["train"]["status"].startswith("skipped: not asked for")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_check_without_a_gpu_is_a_one_line_error(gpu_check, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = gpu_check()
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU" in err and "--dry-run" in err
    assert not list(out.iterdir())
