"""The Flower deployment engine for real: a SuperLink and two or three SuperNodes on loopback (started and
stopped by each test, also when it fails), prefix-tuning a tiny model.

- the same config and seed give the same per-round metrics and the same final state as the
  in-process engine (plain run of the secure-aggregation test, and a resumed run);
- a SuperNode killed mid-run: the run completes without it and the records say who was missing;
- the server process killed mid-run: a new deployment resumes from the last checkpoint and ends
  with the same numbers as an uninterrupted run;
- chaos: a seeded schedule kills SuperNodes, restarts them, then kills the server; the resumed run
  records every round, says in each who was missing, and ends equal to an uninterrupted in-process
  run in which the same clients took part in each round.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedcustom.core.config import ConfigError, dumps
from fedcustom.core.errors import UserError
from fedcustom.engines.flower.deploy import Security, write_app
from fedcustom.engines.flower.loopback import LocalDeployment, free_port
from fedcustom.federation.faults import Faults
from fedcustom.runs.experiment import run_experiment
from fedcustom.runs.results import CHECKPOINT, load_checkpoint

METRICS = ("test_accuracy", "test_macro_f1", "test_loss", "train_loss", "accepted", "bytes_down", "bytes_up")


def flower_config(tiny_config, **federation):
    return tiny_config(engine="flower", modes=["federated"], partition={"num_clients": 2},
                       federation={"rounds": 2, **federation},
                       flower={"round_timeout": 300.0, "connect_timeout": 120.0})


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "federated" / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = records(a), records(b)
    assert [r["round"] for r in ra] == [r["round"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        for key in METRICS:
            if key in x:
                assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["round"], key)
    sa, sb = (load_file(p / "federated" / "state.safetensors") for p in (a, b))
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def in_process(cfg, into: Path) -> Path:
    from dataclasses import replace

    run_experiment(replace(cfg, engine="simulation"), log=lambda *a: None, into=into)
    return into


def wait_for_round(run_dir: Path, server_round: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r["round"] >= server_round for r in records(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"round {server_round} was not recorded within {timeout:.0f} s")


def test_a_killed_supernode_does_not_stop_the_run(tiny_config, tmp_path: Path) -> None:
    cfg = flower_config(tiny_config, min_clients=1)
    run_dir = tmp_path / "flower"
    with LocalDeployment(2, tmp_path / "deploy") as federation:
        result: dict[str, str] = {}
        submit = threading.Thread(target=lambda: result.update(
            status=federation.submit(dumps(cfg), run_dir, timeout=600)))
        submit.start()
        wait_for_round(run_dir, 1)
        federation.kill("supernode-1")
        submit.join(timeout=600)
    assert result.get("status") == "finished:completed", result
    rounds = records(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["missing"] == [1] and rounds[-1]["accepted"] == 1
    assert rounds[-1]["test_accuracy"] >= rounds[0]["test_accuracy"]


def test_a_run_resumes_after_the_server_process_dies(tiny_config, tmp_path: Path) -> None:
    cfg = flower_config(tiny_config)
    run_dir = tmp_path / "flower"
    with LocalDeployment(2, tmp_path / "first") as federation:
        submit = threading.Thread(target=lambda: federation.submit(dumps(cfg), run_dir, timeout=600))
        submit.start()
        wait_for_round(run_dir, 1)
        federation.kill("superlink")  # and with it the ServerApp process
        submit.join(timeout=120)
    done = max(r["round"] for r in records(run_dir))
    assert done < 2, "the server died too late to test resuming"
    with LocalDeployment(2, tmp_path / "second") as federation:
        status = federation.submit(dumps(cfg), run_dir, resume=True, timeout=600)
    assert status == "finished:completed", status
    assert_same_run(run_dir, in_process(cfg, tmp_path / "sim"))


def wait_until(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def train_replies(log: Path) -> int:
    """How many training replies a SuperNode began to send (it logs each before sending it)."""
    return log.read_text(errors="replace").count("Sending: train message")


def last_round(run_dir: Path) -> int:
    return max((r["round"] for r in records(run_dir)), default=-1)


# A dead SuperNode is noticed at this timeout (or at Flower's heartbeat expiry, 30-60 s after the
# kill, whichever comes first). In the runs of docs/results/chaos (a loaded 2-core machine) a round
# of live sites took 3-13 s, a restarted site's first included.
CHAOS_ROUND_TIMEOUT = float(os.environ.get("FEDCUSTOM_CHAOS_ROUND_TIMEOUT", "20"))


def test_chaos_on_a_live_federation(tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capfd: pytest.CaptureFixture) -> None:
    """Three SuperNodes, six rounds. A seeded schedule kills one or two SuperNodes (SIGKILL, with
    everything they started) a random moment after round 1 is recorded and restarts them a random
    moment later, then kills the server (SuperLink and ServerApp) a random moment after the first
    round in which they took part again; a new deployment resumes the run from its last
    checkpoint. Events happen after a round is recorded, never at a guessed time, and the test
    checks only what that makes certain:

    - the run completes and records every round once;
    - a killed node is missing from the round in flight when it died (unless its log shows it had
      begun to send that round's reply) until the first round after its restart in which it takes
      part, and that comes before the server dies (a restarted node is accepted); no other client
      is missing, but in a round that ran into the round timeout (a slow site on a loaded machine);
    - every round accepted an update from each client it does not list as missing;
    - the final state and every round's numbers equal an uninterrupted in-process run in which
      exactly the clients the records name as missing sat each round out (so the records are right:
      a wrong `missing` list would change the mean).

    FEDCUSTOM_CHAOS_SEED picks another schedule; FEDCUSTOM_CHAOS_OUT=FILE.json adds the run's
    figures to FILE (docs/results/chaos holds the committed ones)."""
    seed, nodes, rounds = int(os.environ.get("FEDCUSTOM_CHAOS_SEED", "0")), 3, 6
    rng = random.Random(seed)
    killed = sorted(rng.sample(range(nodes), rng.randint(1, nodes - 1)))  # one node always lives
    kill_delay, start_delay, server_delay = (round(rng.uniform(0.0, 1.5), 2) for _ in range(3))
    cfg = tiny_config(engine="flower", modes=["federated"], partition={"num_clients": nodes},
                      federation={"rounds": rounds},
                      flower={"round_timeout": CHAOS_ROUND_TIMEOUT, "connect_timeout": 120.0})
    run_dir, began, events = tmp_path / "flower", time.monotonic(), []

    def note(event: str) -> int:
        seen = last_round(run_dir)
        events.append({"event": event, "last_round_recorded": seen,
                       "seconds": round(time.monotonic() - began, 1)})
        return seen

    def back(cid: int, after: int) -> int | None:
        """The first round after `after` in which client `cid` was not missing."""
        return next((r["round"] for r in records(run_dir) if r["round"] > after and cid not in r["missing"]),
                    None)

    with LocalDeployment(nodes, tmp_path / "first") as federation:
        submit = threading.Thread(target=lambda: federation.submit(dumps(cfg), run_dir, timeout=600),
                                  daemon=True)
        submit.start()
        wait_for_round(run_dir, 1)
        time.sleep(kill_delay)
        for cid in killed:
            federation.kill(f"supernode-{cid}")
        died = note(f"killed supernodes {killed}")  # read after the kill: round died + 1 was in flight
        # a reply to that round had begun to go out only if the dead process logged its sending
        replied = {cid: train_replies(federation.workdir / f"supernode-{cid}.log") > died for cid in killed}
        # restarted at once: the new sites start while the rounds wait for the dead ones (until the
        # round timeout or their heartbeats expire), before the rounds speed up again
        time.sleep(start_delay)
        note(f"restarted supernodes {killed}")
        for cid in killed:
            federation.start_supernode(cid)

        def returned() -> bool:
            return all(back(cid, died + 1) is not None for cid in killed)

        wait_until(lambda: returned() or last_round(run_dir) == rounds, "the restarted SuperNodes took part")
        assert returned(), f"a restarted SuperNode took part in no round: {records(run_dir)[1:]}, {events}"
        time.sleep(server_delay)
        federation.kill("superlink")  # and with it the ServerApp process
        note("killed the server")
        submit.join(timeout=120)
    resumed = load_checkpoint(run_dir / "federated" / CHECKPOINT).round
    assert resumed < rounds, f"the server died too late to test resuming ({events})"
    with LocalDeployment(nodes, tmp_path / "second") as federation:
        note(f"a new deployment resumed the run after round {resumed}")
        status = federation.submit(dumps(cfg), run_dir, resume=True, timeout=600)
    wall = time.monotonic() - began
    assert status == "finished:completed", (status, events)

    history = records(run_dir)
    missing = {r["round"]: r["missing"] for r in history if r["round"] > 0}
    assert [r["round"] for r in history] == list(range(rounds + 1)), events
    for r in history[1:]:
        assert r["accepted"] == r["clients"] - len(r["missing"]) and r["rejected"] == [], (r, events)
    came = {cid: back(cid, died + 1) for cid in killed}  # its first round as a new node
    for cid in killed:
        assert came[cid] is not None and came[cid] <= resumed, (cid, missing, events)
        assert replied[cid] or cid in missing[died + 1], (cid, missing, events)
    timed_out = {r["round"] for r in history[1:] if r["round_seconds"] >= CHAOS_ROUND_TIMEOUT}
    for r, who in missing.items():
        unexplained = [c for c in who if not (c in killed and died + 1 <= r < came[c])]
        assert not unexplained or r in timed_out, (r, unexplained, missing, events)
    out = capfd.readouterr()
    logs = [p.read_text(errors="replace") for p in tmp_path.glob("*/*.log")]
    assert not [text for text in [out.out, out.err, *logs] if "Traceback" in text], "a traceback was printed"

    # the uninterrupted run: in process, the clients missing in a round sit it out (they are asked,
    # as Flower asked them, and their updates are dropped: the same bytes down)
    def split(self: Faults, server_round: int, sampled: list[int]) -> tuple[list[int], list[int], list[int]]:
        absent = missing.get(server_round, [])
        return [c for c in sampled if c not in absent], [], [c for c in sampled if c in absent]

    monkeypatch.setattr(Faults, "split", split)
    reference = in_process(cfg, tmp_path / "sim")
    assert_same_run(run_dir, reference)
    a, b = (load_file(p / "federated" / "state.safetensors") for p in (run_dir, reference))
    if os.environ.get("FEDCUSTOM_CHAOS_OUT"):
        write_chaos_figures(Path(os.environ["FEDCUSTOM_CHAOS_OUT"]), {
            "seed": seed, "supernodes": nodes, "rounds": rounds, "round_timeout_s": CHAOS_ROUND_TIMEOUT,
            "killed_supernodes": killed, "events": events,
            "killed_while_sending_a_reply": [cid for cid in killed if replied[cid]],
            "chaos_events": 2 * len(killed) + 1,  # each killed node's kill and restart, one server kill
            "rounds_recorded": len(history) - 1, "rounds_lost": rounds - (len(history) - 1),
            "resumed_after_round": resumed, "round_in_flight_at_server_kill_redone": resumed + 1,
            "missing_by_round": missing, "rounds_that_ran_into_the_timeout": sorted(timed_out),
            "client_rounds_missing": sum(len(m) for m in missing.values()),
            "equal_to_uninterrupted_run": True,
            "max_abs_state_difference": max(float((a[k] - b[k]).abs().max()) for k in a),
            "wall_seconds": round(wall, 1), "load_average_at_end": [round(x, 1) for x in os.getloadavg()],
            "cpu_cores": os.cpu_count()})


def write_chaos_figures(path: Path, figures: dict) -> None:
    """One entry per seed (a rerun replaces its seed's), with the command that measured it."""
    entries = json.loads(path.read_text())["runs"] if path.is_file() else []
    entries = sorted([e for e in entries if e["seed"] != figures["seed"]] + [figures],
                     key=lambda e: e["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "command": "FEDCUSTOM_CHAOS_SEED=S FEDCUSTOM_CHAOS_OUT=docs/results/chaos/chaos.json "
                   "python -m pytest -q tests/test_flower.py::test_chaos_on_a_live_federation",
        "runs": entries}, indent=1) + "\n")


def test_black_box_prompt_search_on_flower(tiny_config, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Candidate indices and scores (int16 and float64 tensors) travel as they do in process."""
    cfg = tiny_config(engine="flower", modes=["federated"], model={"name": str(tiny_llama_dir)},
                      method={"name": "prompt-search", "score_examples": 8},
                      strategy={"name": "score-search", "candidates": 4}, federation={"rounds": 1},
                      flower={"round_timeout": 300.0, "connect_timeout": 120.0})
    with LocalDeployment(2, tmp_path / "deploy") as federation:
        status = federation.submit(dumps(cfg), tmp_path / "flower", timeout=600)
    assert status == "finished:completed", status
    assert_same_run(tmp_path / "flower", in_process(cfg, tmp_path / "sim"))
    rounds = records(tmp_path / "flower")
    assert rounds[1]["search_candidates"] == 14 and rounds[1]["forward_passes"] > 0


def test_a_federation_with_tls_and_node_authentication(tiny_config, tmp_path: Path) -> None:
    """The multi-machine walkthrough's security on loopback: a CA-signed SuperLink certificate,
    SuperNodes admitted by registered keys; an unregistered SuperNode is refused."""
    from fedcustom.engines.flower.credentials import make_certificates, make_node_key
    from fedcustom.engines.flower.deploy import supernode_command

    make_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"])
    secure = Security(certificates=tmp_path / "certs").check(server=True)
    cfg = tiny_config(engine="flower", modes=["federated"], federation={"rounds": 1},
                      flower={"round_timeout": 300.0, "connect_timeout": 120.0})
    with LocalDeployment(2, tmp_path / "deploy", security=secure, node_auth=True) as federation:
        key, _ = make_node_key(tmp_path / "stranger", "stranger")
        stranger = federation.spawn("stranger", supernode_command(
            federation.superlink, 0, secure, free_port(), auth_key=key) + ["--max-retries", "0"])
        status = federation.submit(dumps(cfg), tmp_path / "run", timeout=600)
        assert stranger.wait(timeout=120) != 0  # not registered: the SuperLink refuses it
    assert status == "finished:completed", status
    assert records(tmp_path / "run")[-1]["accepted"] == 2


def test_plain_and_secure_aggregation_on_flower(tiny_config, tmp_path: Path) -> None:
    """A plain loopback federation gives the in-process engine's numbers and state, and its server
    sees every client tensor (audited as Flower serialized it). Under SecAgg+ no client's update
    or delta appears among everything the server receives, and the round lands where FedAvg does."""
    from fedcustom.core.registry import METHODS
    from fedcustom.engines.flower.secagg import read_audit

    def config(name: str, secure: bool):
        return tiny_config(engine="flower", modes=["federated"], partition={"num_clients": 3},
                           federation={"rounds": 1, "max_norm_factor": 0.0},
                           flower={"round_timeout": 300.0, "connect_timeout": 120.0,
                                   "secure_aggregation": secure, "audit_dir": str(tmp_path / name / "audit")})

    def run(name: str, secure: bool) -> Path:
        with LocalDeployment(3, tmp_path / name / "deploy") as federation:
            status = federation.submit(dumps(config(name, secure)), tmp_path / name / "run", timeout=600)
        assert status == "finished:completed", status
        return tmp_path / name

    plain, secure = run("plain", False), run("secure", True)
    assert_same_run(plain / "run", in_process(config("plain", False), tmp_path / "sim"))
    assert (plain / "run" / "federated" / "adapter" / "adapter_config.json").is_file()
    assert all(r["missing"] == [] for r in records(plain / "run")[1:])
    cfg = tiny_config()
    method = METHODS.get(cfg.method.name)(cfg.method.options)
    model, _ = method.build_model(cfg.model, 2, cfg.seed)
    start = {k: v.numpy() for k, v in method.get_state(method.prepare(model)).items()}
    updates = read_audit(plain / "audit")
    assert len(updates) == 3 * len(start)  # the plain server saw every client's every tensor
    secrets = updates + [u - start[k] for u in updates for k in start if start[k].shape == u.shape]
    seen = read_audit(secure / "audit")
    assert seen, "the audit of the secure run is empty"
    for array in seen:
        for secret in secrets:
            if array.shape == secret.shape:
                assert not np.allclose(array.astype(np.float64), secret, atol=1e-3)
    last = records(secure / "run")[-1]
    assert last["secure_aggregation"] == [0, 1, 2] and last["accepted"] == 3
    a, b = (load_file(p / "run" / "federated" / "state.safetensors") for p in (plain, secure))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=0)  # quantization error only


def test_distributed_dp_under_secure_aggregation(tiny_config, tmp_path: Path) -> None:
    """dp_fedavg with distributed = true: each of 3 clients clips its delta and adds noise of std
    z * C / sqrt(3) before SecAgg+ masks it. The server's audit (everything it received) holds no
    client's noisy delta, nor the mean: only masked vectors. With a tiny learning rate the noise
    dominates: the round's mean is exactly the average of the clients' noise (seeded here, so the
    test redraws it), its std is z * C / 3 (the central mechanism's), and the record carries the
    accountant's epsilon."""
    from fedcustom.core.registry import METHODS
    from fedcustom.engines.flower.secagg import read_audit
    from fedcustom.strategies.privacy import epsilon, gaussian

    z, c, n = 1.0, 1.0, 3
    cfg = tiny_config(engine="flower", modes=["federated"], partition={"num_clients": n},
                      train={"lr": 1e-9}, federation={"rounds": 1, "max_norm_factor": 0.0},
                      strategy={"name": "dp_fedavg", "distributed": True, "reproducible_noise": True,
                                "clip_norm": c, "noise_multiplier": z, "seed": 3},
                      flower={"round_timeout": 300.0, "connect_timeout": 120.0, "secure_aggregation": True,
                              "audit_dir": str(tmp_path / "audit")})
    with LocalDeployment(n, tmp_path / "deploy") as federation:
        status = federation.submit(dumps(cfg), tmp_path / "run", timeout=600)
    assert status == "finished:completed", status

    method = METHODS.get(cfg.method.name)(cfg.method.options)
    model, _ = method.build_model(cfg.model, 2, cfg.seed)
    start = {k: v.double() for k, v in method.get_state(method.prepare(model)).items()}
    # what client i sent: its (tiny) delta plus noise drawn from (seed, round 1, i + 1)
    sent = [gaussian(start, z * c / n ** 0.5, 3, 1, cid + 1) for cid in range(n)]
    final = load_file(tmp_path / "run" / "federated" / "state.safetensors")
    moved = {k: final[k].double() - start[k] for k in start}
    for key in start:
        torch.testing.assert_close(moved[key], sum(s[key] for s in sent) / n, atol=1e-4, rtol=0)
    noise = torch.cat([m.flatten() for m in moved.values()])
    assert noise.numel() > 400
    assert float(noise.std()) == pytest.approx(z * c / n, rel=0.15)  # not z * C / sqrt(3): 0.58

    secrets = [s[k].numpy() for s in sent for k in s] + [m.numpy() for m in moved.values()]
    seen = read_audit(tmp_path / "audit")
    assert seen, "the audit is empty"
    for array in seen:
        for secret in secrets:
            if array.shape == secret.shape:
                assert not np.allclose(array.astype(np.float64), secret, atol=1e-3)
    last = records(tmp_path / "run")[-1]
    assert last["secure_aggregation"] == [0, 1, 2] and last["dp_clients"] == n
    assert last["dp_noise_std"] == pytest.approx(z * c / n)
    assert last["dp_epsilon"] == pytest.approx(epsilon(z, 1.0, 1, 1e-5))


@pytest.mark.ray
def test_flower_simulation_engine_equals_the_in_process_run(tiny_config, tmp_path: Path) -> None:
    """The third engine: Flower's simulation runtime (Ray) with the same apps (opt-in: -m ray)."""
    from fedcustom.core.registry import ENGINES

    cfg = tiny_config(engine="flower-simulation", modes=["federated"], partition={"num_clients": 3})
    run_dir = ENGINES.get("flower-simulation").launch(cfg)
    assert_same_run(run_dir, in_process(cfg, tmp_path / "sim"))


# --- fast checks: no processes ------------------------------------------------------------------

def test_flower_engine_refuses_methods_whose_clients_keep_state(tiny_config) -> None:
    with pytest.raises(ConfigError, match="engine = 'flower': expected an engine that carries 'logits'"):
        tiny_config(engine="flower", method={"name": "distill"}, strategy={"name": "consensus"})


def test_secure_aggregation_needs_a_strategy_of_the_mean(tiny_config) -> None:
    with pytest.raises(ConfigError, match="strategy = .*'median' needs each client's update"):
        tiny_config(engine="flower", strategy={"name": "median"}, flower={"secure_aggregation": True})
    with pytest.raises(ConfigError, match="secure aggregation runs on the Flower engines"):
        tiny_config(flower={"secure_aggregation": True})


def test_a_site_trains_on_its_own_file_with_the_federations_labels(tiny_config, tmp_path: Path) -> None:
    from fedcustom.engines.flower.client import site_clients

    cfg = tiny_config(engine="flower", partition={"num_clients": 3})
    site = tmp_path / "site.csv"
    site.write_text("review,sentiment\nthe film was great,pos\nthe film was dull,neg\nsuperb,pos\n")
    clients = site_clients(dumps(cfg), json.dumps(["neg", "pos"]), str(site), 2)
    assert [len(rows) for rows in clients.rows] == [0, 0, 3]
    assert clients.data.labels.tolist() == [1, 0, 1]
    with pytest.raises(UserError, match=r"labels \['pos'\] are not among the federation's"):
        site_clients(dumps(cfg), json.dumps(["neg", "other"]), str(site), 2)


class FakeGrid:
    """A Grid whose nodes say which client they are: `online` as the SuperLink lists them (a killed
    node stays listed until its heartbeat expires), `alive` those that answer."""

    def __init__(self) -> None:
        self.online: dict[int, int] = {}  # node id -> client id
        self.alive: set[int] = set()
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.online)

    def send_and_receive(self, nodes: list[int], *, timeout: float | None = None) -> list:
        from types import SimpleNamespace

        from flwr.app import MetricRecord, RecordDict

        self.asked += nodes
        return [SimpleNamespace(has_error=lambda: False, metadata=SimpleNamespace(src_node_id=node),
                                content=RecordDict({"metrics": MetricRecord({"client-id": cid})}))
                for node, cid in self.online.items() if node in nodes and node in self.alive]

    def add(self, node: int, cid: int) -> None:
        self.online[node] = cid
        self.alive.add(node)


def test_a_restarted_supernode_replaces_its_dead_node(tiny_config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted SuperNode is a new node claiming a known client: it takes over from the dead
    one (silent in the last round, or silent when asked now); a live second claimant is an error."""
    from fedcustom.engines.flower.server import CURRENT, Deployment, FlowerEngine
    from fedcustom.federation.replies import Reply, RoundReplies

    grid = FakeGrid()
    token = CURRENT.set(Deployment(grid, None, dumps(tiny_config(engine="flower")), ["neg", "pos"]))  # type: ignore[arg-type]
    try:
        engine = FlowerEngine()
    finally:
        CURRENT.reset(token)
    monkeypatch.setattr(engine, "message", lambda node, kind, config, arrays=None: node)
    grid.add(10, 0)
    grid.add(11, 1)
    engine.discover(2, 0)
    assert engine.nodes == {0: 10, 1: 11}

    grid.alive.discard(11)  # killed: still listed online, and silent in the next round
    engine.heard(RoundReplies({0: Reply(b"", examples=1), 1: Reply(missing=True)}))
    grid.add(12, 1)  # restarted
    grid.asked.clear()
    engine.discover(2, 0)
    assert engine.nodes == {0: 10, 1: 12} and grid.asked == [12]  # the silent node is not asked
    engine.discover(2, 0)
    assert grid.asked == [12]  # nor ever again

    grid.alive.discard(10)  # killed before it missed a round: asked, it does not answer
    grid.add(13, 0)
    engine.discover(2, 0)
    assert engine.nodes == {0: 13, 1: 12} and grid.asked == [12, 13, 10]

    grid.add(14, 1)  # a second live SuperNode with client id 1
    with pytest.raises(UserError, match="two SuperNodes say they are client 1"):
        engine.discover(2, 0)


def test_flower_engine_outside_a_server_app_is_a_clear_error(tiny_config) -> None:
    from fedcustom.engines.flower.server import FlowerEngine

    with pytest.raises(UserError, match="runs inside a Flower ServerApp"):
        FlowerEngine()


def test_secure_by_default(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--insecure runs without TLS"):
        Security().check()
    with pytest.raises(UserError, match="ca.crt not found"):
        Security(certificates=tmp_path).check()


def test_a_site_is_a_supernode_in_process_isolation_with_fedcustoms_executor() -> None:
    from fedcustom.engines.flower.deploy import site_commands

    insecure = Security(insecure=True)
    site = site_commands("127.0.0.1:9093", 1, insecure, 9095)
    assert site[1:6] == ["-m", "fedcustom.engines.flower.executor", "site", "--runtime-api-address",
                         "127.0.0.1:9095"]
    supernode = site[site.index("--") + 1:]
    assert supernode[0].endswith("flower-supernode") and "--isolation" in supernode
    assert supernode[supernode.index("--isolation") + 1] == "process"
    fresh = site_commands("127.0.0.1:9093", 1, insecure, 9095, isolation="subprocess")
    assert fresh[0].endswith("flower-supernode") and fresh[fresh.index("--isolation") + 1] == "subprocess"
    with pytest.raises(UserError, match=r"isolation = 'thread': expected one of \['process', 'subprocess'\]"):
        site_commands("127.0.0.1:9093", 1, insecure, 9095, isolation="thread")


def test_an_executor_that_cannot_start_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SuperNode starts without its executor: the site stops with a one-line error."""
    import sys

    from fedcustom.engines.flower import executor

    monkeypatch.setattr(executor, "serve_command", lambda *a: [sys.executable, "-c", "raise SystemExit(3)"])
    monkeypatch.setattr(executor.os, "execvpe", lambda *a: pytest.fail("the SuperNode started"))
    message = r"executor could not start \(exit code 3;.*--isolation subprocess"
    with pytest.raises(UserError, match=message) as e:
        executor.exec_site("127.0.0.1:9094", ["flower-supernode"])
    assert "\n" not in str(e.value)


def test_a_site_keeps_its_clients_per_run_and_config(tiny_config) -> None:
    """One set of built clients per (config, run, node): the same message again reuses it; a new
    run or config builds anew and replaces it (the cache holds one)."""
    from fedcustom.engines.flower.client import site_clients

    site_clients.cache_clear()
    text, labels = dumps(tiny_config(engine="flower")), json.dumps(["neg", "pos"])
    first = site_clients(text, labels, "", -1, 7)
    assert site_clients(text, labels, "", -1, 7) is first
    again = site_clients(text, labels, "", -1, 8)  # a new run on the same config
    assert again is not first and again.model is not first.model
    other = site_clients(dumps(tiny_config(engine="flower", train={"lr": 0.01})), labels, "", -1, 8)
    assert other is not again and site_clients.cache_info().currsize == 1
    site_clients.cache_clear()


def test_the_app_bundle_is_a_valid_flower_app(tiny_config, tmp_path: Path) -> None:
    import tomllib

    from flwr.common.config import validate_config

    app = write_app(tmp_path / "app", dumps(tiny_config()), tmp_path / "run", resume=False)
    config = tomllib.loads((app / "pyproject.toml").read_text())
    ok, errors, _ = validate_config(config, check_module=False)
    assert ok, errors
    assert tomllib.loads(config["tool"]["flwr"]["app"]["config"]["experiment"])["name"] == "tiny"
