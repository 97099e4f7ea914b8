"""Flower rounds: a round on 2 loopback SuperNodes against the in-process engine, same config.

Sides, run one after another in this process (the federations' processes are its children):
- `in_process`: `run_experiment` with engine = "simulation";
- `flower_process`: engine "flower" on a LocalDeployment whose sites are SuperNodes in Flower's
  `--isolation process` mode served by fedcustom's long-lived executor (the model stays loaded);
- `flower_subprocess`: the same with Flower's default `--isolation subprocess` (a fresh ClientApp
  process, imports and model build for every message: the path before the executor);
- `flower_floor`: Flower's own messaging, measured: an echo app (a ServerApp that sends the
  run's tensors, same names and shapes, to both sites and waits for them to come back; a
  ClientApp that returns them untouched) on the same kind of deployment as `flower_process`.

`round_s` is each round's `round_seconds` from the run's records (the server's round: sending,
the clients' work, receiving, aggregation, evaluation); steady state is the median of rounds
2..R (round 1 of a kept-model site includes building it). Flower's ServerApp asks the SuperLink
for replies every 3 s and an idle SuperNode asks for messages every 3 s (both fixed in Flower
1.41), so a Flower round is a multiple of about 3 s whatever the clients do: the floor side shows
it. `site_task_s` is what a site spends on one training message (the executor's log: pull the
message, train, push the reply), the part a kept model shortens. `site_rss_mb` samples each
site's process tree after every round: it must not grow with rounds.

    python -m benchmarks flower-rounds --model tiny      # the test suite's tiny BERT (built here)
    python -m benchmarks flower-rounds --model minilm    # the packaged MiniLM, few examples
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from benchmarks.common import ROOT, Mark, Options, median, print_ratios, write_result

# --- the echo app (Flower's messaging alone) -----------------------------------------------------

echo_client = ClientApp()
echo_server = ServerApp()


@echo_client.train()
def echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)


@echo_server.main()
def echo_rounds(grid: Grid, context: Context) -> None:
    """`rounds` times: the same tensors to every site and back; each exchange's seconds to `out`."""
    from safetensors.torch import load_file

    config = context.run_config
    rounds, nodes = int(config["rounds"]), int(config["nodes"])
    while len(grid.get_node_ids()) < nodes:
        time.sleep(0.5)
    arrays = ArrayRecord(load_file(str(config["state"])))  # the run's tensors, names and shapes
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        replies = grid.send_and_receive([Message(RecordDict({"arrays": arrays}), dst_node_id=n,
                                                 message_type="train") for n in grid.get_node_ids()],
                                        timeout=300)
        assert all(not r.has_error() for r in replies), [r.error for r in replies if r.has_error()]
        times.append(time.perf_counter() - start)
    Path(str(config["out"])).write_text(json.dumps(times))


# --- assets --------------------------------------------------------------------------------------

def tiny_assets(folder: Path) -> dict[str, Any]:
    """The test suite's tiny BERT (2 layers, hidden 32, MiniLM's tokenizer) and its 120-row CSV."""
    import random

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from fedcustom.models.backbones import resolve

    model = folder / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(resolve("minilm")[0])
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(model)
    tokenizer.save_pretrained(model)
    rng = random.Random(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["dull", "awful", "boring", "flat"]
    rows = [f"the film was {' '.join(rng.choices(good if i % 2 else bad, k=rng.randint(3, 9)))},"
            f"{'pos' if i % 2 else 'neg'}" for i in range(120)]
    csv = folder / "reviews.csv"
    csv.write_text("review,sentiment\n" + "\n".join(rows) + "\n")
    return {"model": {"name": str(model), "max_length": 16},
            "data": {"dataset": str(csv), "text_column": "review", "label_column": "sentiment",
                     "test_fraction": 0.25}}


def config_for(opts: Options, rounds: int, folder: Path) -> Any:
    from fedcustom.core.config import ExperimentConfig, build, load_config, to_dict

    if opts.model == "tiny":
        raw: dict[str, Any] = tiny_assets(folder)
    else:  # a real model: few examples, short texts
        raw = {k: v for k, v in to_dict(load_config(None, [f"model.name={json.dumps(opts.model)}",
                                                             "model.max_length=64",
                                                             "data.max_train_examples=64",
                                                             "data.max_test_examples=32",
                                                             *opts.overrides])).items()
               if k in ("model", "data")}
    raw |= {"name": "flower-rounds", "output_dir": str(folder / "runs"), "threads": 1, "modes": ["federated"],
            "engine": "flower", "partition": {"scheme": "iid", "num_clients": 2},
            "method": {"name": "prefix", "num_virtual_tokens": 4}, "train": {"batch_size": 8, "lr": 0.05},
            "federation": {"rounds": rounds}, "flower": {"round_timeout": 600.0, "connect_timeout": 300.0}}
    return build(ExperimentConfig, raw)


# --- measuring -----------------------------------------------------------------------------------

def records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "federated" / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


class RoundSampler:
    """After each new round record, the RSS of every site's process tree."""

    def __init__(self, run_dir: Path, sites: dict[str, int]) -> None:
        self.run_dir, self.sites = run_dir, sites
        self.rss: dict[str, list[float]] = {name: [] for name in sites}
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            rounds = len(records(self.run_dir))
            if rounds > self.seen:
                self.seen = rounds
                for name, pid in self.sites.items():
                    self.rss[name].append(round(tree_rss_mb(pid), 1))

    def __enter__(self) -> RoundSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def site_tasks(log: Path) -> list[float]:
    """Seconds the executor spent on each training message, from its log (the SuperNode's log)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    return [float(s) for s in re.findall(r"\(train\) served in ([0-9.]+) s", text)]


def flower_side(cfg: Any, isolation: str, folder: Path) -> dict[str, Any]:
    from fedcustom.core.config import dumps
    from fedcustom.engines.flower.loopback import LocalDeployment

    start = Mark.now()
    deployment = LocalDeployment(2, folder / "deploy", isolation=isolation)
    with deployment as federation:
        up = Mark.now() - start
        sites = {name: p.pid for name, p in federation.processes.items() if name.startswith("supernode")}
        with RoundSampler(folder / "run", sites) as sampler:
            status = federation.submit(dumps(cfg), folder / "run", timeout=3600)
    total = Mark.now() - start
    if status != "finished:completed":
        raise RuntimeError(f"flower run ({isolation}) ended as {status}: see {folder}")
    rounds = [r["round_seconds"] for r in records(folder / "run")[1:]]
    tasks = {name: site_tasks(folder / "deploy" / f"{name}.log") for name in sites}
    return {"isolation": isolation, "round_s": rounds, "steady_round_s": median(rounds[1:]),
            "first_round_s": rounds[0], "start_processes_s": up.wall, "run_wall_s": total.wall,
            "site_task_s": tasks, "site_rss_mb": sampler.rss,
            "client_s": [r["client_seconds"] for r in records(folder / "run")[1:]]}


def floor_side(rounds: int, state: Path, folder: Path) -> dict[str, Any]:
    """The echo app on 2 sites in process isolation: Flower's messaging, no training."""
    import tomli_w

    from fedcustom.engines.flower.deploy import flower_bin, flower_env, write_connection
    from fedcustom.engines.flower.loopback import LocalDeployment

    app = folder / "echo-app"
    app.mkdir(parents=True, exist_ok=True)
    out = folder / "echo.json"
    (app / "pyproject.toml").write_text(tomli_w.dumps({
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "echo", "version": "1.0.0", "description": "Flower messaging alone",
                    "license": "Apache-2.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedcustom",
            "components": {"serverapp": "benchmarks.flower_rounds:echo_server",
                           "clientapp": "benchmarks.flower_rounds:echo_client"},
            "config": {"rounds": rounds, "nodes": 2, "state": str(state), "out": str(out)}}}}}))
    with LocalDeployment(2, folder / "deploy") as federation:
        write_connection(federation.home, federation.superlink, federation.security)
        proc = subprocess.run([flower_bin("flwr"), "run", str(app), "fedcustom", "--stream"],
                              env=flower_env(federation.home), capture_output=True, text=True, timeout=1800,
                              check=False)
    if not out.is_file():
        raise RuntimeError(f"the echo app wrote nothing: {(proc.stdout + proc.stderr)[-2000:]}")
    times = json.loads(out.read_text())
    return {"round_s": times, "steady_round_s": median(times[1:])}


def run(opts: Options) -> dict[str, float]:
    from fedcustom.runs.experiment import run_experiment

    rounds = opts.repeats + 1 if opts.repeats else (3 if opts.quick else 6)
    # the sites and the echo app's ServerApp import `benchmarks` from this checkout
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory(prefix="fedcustom-flower-rounds-") as tmp:
        folder = Path(tmp)
        cfg = config_for(opts, rounds, folder)
        print(f"flower-rounds: model {opts.model}, {rounds} rounds, 2 clients", flush=True)
        start = Mark.now()
        run_experiment(replace(cfg, engine="simulation"), log=lambda *a: None, into=folder / "sim")
        sim = records(folder / "sim")
        in_process = {"round_s": [r["round_seconds"] for r in sim[1:]],
                      "client_s": [r["client_seconds"] for r in sim[1:]],
                      "run_wall_s": (Mark.now() - start).wall}
        in_process["steady_round_s"] = median(in_process["round_s"][1:])
        print(f"in process: {in_process['steady_round_s']:.3f} s a round", flush=True)
        sides: dict[str, Any] = {"in_process": in_process}
        for isolation in ("process",) if opts.quick else ("process", "subprocess"):
            side = flower_side(cfg, isolation, folder / isolation)
            sides[f"flower_{isolation}"] = side
            print(f"flower, {isolation} isolation: {side['steady_round_s']:.3f} s a round", flush=True)
        sides["flower_floor"] = floor_side(rounds, folder / "sim" / "federated" / "state.safetensors",
                                           folder / "floor")
        print(f"flower messaging alone: {sides['flower_floor']['steady_round_s']:.3f} s a round", flush=True)
    ip, fp, floor = (sides[k]["steady_round_s"] for k in ("in_process", "flower_process", "flower_floor"))
    tasks = [t for ts in sides["flower_process"]["site_task_s"].values() for t in ts[1:]]
    ratios = {
        "flower_process_over_in_process": fp / ip,
        "flower_process_minus_floor_over_in_process": (fp - floor) / ip,
        "site_task_over_in_process_round": median(tasks) / ip if tasks else float("nan"),
    }
    if "flower_subprocess" in sides:
        ratios["flower_subprocess_over_flower_process"] = sides["flower_subprocess"]["steady_round_s"] / fp
    settings = {"model": opts.model, "rounds": rounds, "clients": 2, "method": "prefix",
                "steady_state": "median of rounds 2..R"}
    notes = ("Target (issue 20): a Flower round <= 1.5 x the in-process round + Flower's own messaging, "
             "i.e. flower_process_minus_floor_over_in_process <= 1.5. Flower's ServerApp polls for replies "
             "every 3 s and idle SuperNodes poll for messages every 3 s, so Flower rounds come in steps of "
             "about 3 s; site_task_s is the site's own time per training message. The machine is shared "
             "with other jobs: see machine.load_average.")
    path = write_result(opts, f"flower-rounds-{Path(opts.model).name}", settings, sides, ratios, notes)
    print_ratios("flower-rounds", ratios)
    print(f"wrote {path}")
    return ratios
