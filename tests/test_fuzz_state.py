"""Property tests on what a run keeps and what clients send: a truncated or bit-flipped checkpoint
is refused in one line naming the file and the last recorded round, never resumed from; a client
payload that is not safetensors, too large, or does not fit the global state is rejected with a
reason before aggregation, and the round goes on.

No model loads: the states are a few small tensors (milliseconds an example)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from fedcustom.core.errors import UserError
from fedcustom.core.payload import serialize, unpack
from fedcustom.core.registry import STRATEGIES
from fedcustom.core.types import State, Update
from fedcustom.federation.replies import payload_limit
from fedcustom.federation.screening import screen_updates
from fedcustom.runs.results import CHECKPOINT, Checkpoint, load_checkpoint, save_checkpoint

FUZZ = settings(max_examples=int(os.environ.get("FEDCUSTOM_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
ROUND = 3


def event(label: str) -> None:
    """Count an outcome in hypothesis' statistics (a plain test has none to count)."""
    with contextlib.suppress(InvalidArgument):
        hypothesis_event(label)


def checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    state = {"prefix.weight": torch.randn(4, 8), "head.bias": torch.randn(2),
             "mask": torch.tensor([True, False]), "steps": torch.tensor([7], dtype=torch.int64)}
    records = [{"round": r, "test_accuracy": 0.5 + r / 10, "rejected": []} for r in range(ROUND + 1)]
    return Checkpoint(ROUND, state, {"momentum/prefix.weight": torch.zeros(4, 8)}, records)


def write_run(folder: Path, ckpt: Checkpoint) -> Path:
    """A mode folder as a run leaves it: the checkpoint and the records it holds."""
    save_checkpoint(folder / CHECKPOINT, ckpt)
    (folder / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ckpt.records))
    return folder / CHECKPOINT


@functools.cache
def good_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        return write_run(Path(folder), checkpoint()).read_bytes()


def header_end() -> int:
    """Where the tensors' bytes start: 8 length bytes, then the JSON header."""
    return 8 + int.from_bytes(good_bytes()[:8], "little")


def same(a: Checkpoint, b: Checkpoint) -> bool:
    return (a.round == b.round and a.records == b.records
            and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                    for x, y in ((a.state, b.state), (a.strategy_state, b.strategy_state))))


def refused_or_intact(data: bytes) -> None:
    """Load a damaged checkpoint: a one-line UserError naming the file and the round the records
    end at; or (a change no reader could notice) exactly the checkpoint that was saved."""
    with tempfile.TemporaryDirectory() as folder:
        path = write_run(Path(folder), checkpoint())
        path.write_bytes(data)
        try:
            loaded = load_checkpoint(path)
        except UserError as e:
            message = str(e)
            assert "\n" not in message and str(path) in message, message
            assert f"end at round {ROUND}" in message, message
            event("refused: " + message.split(" (")[1].split(")")[0][:24])
            return
    assert loaded is not None and same(loaded, checkpoint()), "a damaged checkpoint was read as good"
    event("intact")


def flip(data: bytes, position: int, bit: int) -> bytes:
    out = bytearray(data)
    out[position % len(out)] ^= 1 << bit
    return bytes(out)


def test_an_undamaged_checkpoint_loads_as_saved(tmp_path: Path) -> None:
    loaded = load_checkpoint(write_run(tmp_path, checkpoint()))
    assert loaded is not None and same(loaded, checkpoint())


@FUZZ
@given(st.data())
def test_a_truncated_checkpoint_is_refused(data: st.DataObject) -> None:
    whole = good_bytes()
    cut = data.draw(st.one_of(st.integers(0, header_end()), st.integers(0, len(whole) - 1)))
    refused_or_intact(whole[:cut])


@FUZZ
@given(st.data(), st.integers(0, 7))
def test_a_bit_flip_anywhere_is_refused(data: st.DataObject, bit: int) -> None:
    """Anywhere: the length prefix, the header (tensor names, dtypes, offsets, the metadata and its
    field names, the checksum) and the tensors' bytes."""
    whole = good_bytes()
    position = data.draw(st.one_of(st.integers(0, header_end() - 1), st.integers(0, len(whole) - 1)))
    refused_or_intact(flip(whole, position, bit))


@pytest.mark.parametrize("field", ["sha256", "format", "records", "round", "global/head.bias"])
def test_a_flipped_bit_in_a_header_field_name_is_refused(field: str) -> None:
    """A damaged field name leaves a header that still parses. With a second flip in the tensors:
    had the checksum's field lost its name, the file would load unverified."""
    whole = good_bytes()
    position = whole.index(f'"{field}"'.encode()) + 2
    for bit in range(8):
        refused_or_intact(flip(whole, position, bit))
        refused_or_intact(flip(flip(whole, position, bit), len(whole) - 3, bit))


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.data())
def test_garbage_written_over_a_checkpoint_is_refused(garbage: bytes, data: st.DataObject) -> None:
    whole = good_bytes()
    start = data.draw(st.integers(0, len(whole) - 1))
    refused_or_intact(whole[:start] + garbage + whole[start + len(garbage):])


def test_a_damaged_records_file_still_gives_a_one_line_error(tmp_path: Path) -> None:
    path = write_run(tmp_path, checkpoint())
    path.write_bytes(good_bytes()[:100])
    (tmp_path / "rounds.jsonl").write_bytes(b"\xff\xfe garbage\n" * 4)  # no UTF-8 either
    with pytest.raises(UserError, match="end at round 3") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


# --- client payloads ---------------------------------------------------------------------------

GLOBAL: State = {"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(4), "scale": torch.ones(1)}


def payload_bytes() -> bytes:
    return serialize({k: v + 0.5 for k, v in GLOBAL.items()})


@FUZZ
@given(st.one_of(
    st.binary(max_size=300),
    st.integers(0, 400).map(lambda n: payload_bytes()[:n]),
    st.tuples(st.integers(0, 10_000), st.integers(0, 7)).map(lambda p: flip(payload_bytes(), *p)),
    st.integers(1, 4096).map(lambda n: payload_bytes() + b"\0" * n),
))
@example(b"")
@example(b"\xff" * 8 + b"{}")
def test_unpack_returns_tensors_or_a_one_line_reason(payload: bytes) -> None:
    limit = payload_limit(len(serialize(GLOBAL)))
    too_big = len(payload) > limit
    with mock.patch("fedcustom.core.payload.load", wraps=__import__("safetensors.torch").torch.load) as parse:
        try:
            state = unpack(payload, limit)
        except ValueError as e:
            assert "\n" not in str(e) and str(e)
            event("refused: " + ("over the limit" if "limit" in str(e) else str(e)[:24]))
            assert not (too_big and parse.called), "an oversized payload was parsed"
            return
    assert not too_big
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    event("read")


def mutated(kind: str, rng: np.random.Generator) -> tuple[State, int]:
    """A client's state broken one way (kind), and its claimed number of examples."""
    state = {k: v + 0.01 * torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))
             for k, v in GLOBAL.items()}
    key = sorted(state)[int(rng.integers(len(state)))]
    examples = 10
    if kind == "missing key":
        del state[key]
    elif kind == "extra key":
        state["extra"] = torch.zeros(2)
    elif kind == "renamed key":
        state[key + "_"] = state.pop(key)
    elif kind == "shape":
        state[key] = torch.zeros(*state[key].shape, 2)
    elif kind == "flat":
        state[key] = state[key].reshape(-1)[:-1] if state[key].numel() > 1 else torch.zeros(0)
    elif kind in ("float64", "float16", "int64", "bool"):
        state[key] = state[key].to(getattr(torch, kind))
    elif kind in ("nan", "inf"):
        state[key].view(-1)[int(rng.integers(state[key].numel()))] = float(kind)
    elif kind in ("zero examples", "negative examples"):
        examples = 0 if kind == "zero examples" else -5
    return state, examples


BROKEN = ["missing key", "extra key", "renamed key", "shape", "flat", "float64", "float16", "int64",
          "bool", "nan", "inf", "zero examples", "negative examples"]


@FUZZ
@given(kinds=st.lists(st.one_of(st.just("good"), st.sampled_from(BROKEN)), min_size=1, max_size=6),
       strategy=st.sampled_from(["fedavg", "fedprox", "fedadam", "median", "trimmed_mean", "krum"]),
       seed=st.integers(0, 2**16))
def test_malformed_updates_are_rejected_before_aggregation(kinds: list[str], strategy: str,
                                                          seed: int) -> None:
    """Updates that went through the wire intact but do not fit the global state are rejected with
    a reason naming the problem; the others are aggregated into a state shaped like the global."""
    rng = np.random.default_rng(seed)
    updates = {cid: Update(*mutated(kind, rng)) for cid, kind in enumerate(kinds)}
    for cid, update in updates.items():  # each went through the wire format and its size limit
        wire = unpack(serialize(update.state), payload_limit(len(serialize(GLOBAL))))
        updates[cid] = Update(wire, update.examples)
    accepted, rejected = screen_updates(GLOBAL, updates, max_norm_factor=0)
    reasons = {r["client"]: r["reason"] for r in rejected}
    assert sorted(reasons) == [cid for cid, kind in enumerate(kinds) if kind != "good"]
    for cid, reason in reasons.items():
        expected = {"missing key": "keys differ", "extra key": "keys differ", "renamed key": "keys differ",
                    "shape": "has shape", "flat": "has shape", "nan": "non-finite", "inf": "non-finite",
                    "zero examples": "training examples", "negative examples": "training examples"}
        assert expected.get(kinds[cid], "has dtype") in reason, (kinds[cid], reason)
    assert len(accepted) == kinds.count("good")
    if accepted:
        cls = STRATEGIES.get(strategy)
        from fedcustom.core.config import build

        options = {"krum": {"num_malicious": 0}}.get(strategy, {})
        new = cls(build(cls.Options, options)).aggregate(GLOBAL, accepted)
        assert new.keys() == GLOBAL.keys()
        assert all(new[k].shape == v.shape and new[k].dtype == v.dtype and bool(torch.isfinite(new[k]).all())
                   for k, v in GLOBAL.items())
    event(f"{len(accepted)} accepted")


# --- client replies on the Flower engine -------------------------------------------------------

METRICS = {"num-examples": 10, "loss": 0.5, "steps": 2, "examples": 20, "seconds": 0.1,
           "forward-passes": 20, "backward-passes": 20}


def npy(array: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


ARRAYS = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([np.zeros((3, 4), np.float32), np.zeros(4, np.float16), np.array(["abc"]),
                     np.zeros((2, 2), np.complex64), np.array(1.0), np.zeros((0,), np.float32),
                     np.ones(4, bool), np.arange(4, dtype=np.uint16)]).map(npy),
    st.tuples(st.integers(0, 200), st.integers(0, 7)).map(
        lambda p: flip(npy(np.zeros((3, 4), np.float32)), *p)),
)


@FUZZ
@given(arrays=st.dictionaries(st.sampled_from([*GLOBAL, "other"]),
                              st.tuples(ARRAYS, st.sampled_from(["numpy.ndarray", "numpy.ndarray", "torch"])),
                              max_size=4),
       drop=st.sets(st.sampled_from([*METRICS, "metrics", "arrays"]), max_size=2),
       padding=st.sampled_from([0, 0, 10**5]))
@example(arrays={k: (npy(v.numpy() + 1), "numpy.ndarray") for k, v in GLOBAL.items()}, drop=set(), padding=0)
def test_a_flower_reply_is_read_refused_or_failed_never_raised(arrays: dict, drop: set,
                                                               padding: int) -> None:
    """Whatever a SuperNode's reply holds, the server's reading of it gives an update it can unpack,
    a refusal with the reason, or the client's failure; more bytes than the limit are refused
    before any array is converted."""
    pytest.importorskip("flwr")
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from fedcustom.engines.flower.server import read_reply

    record = ArrayRecord({k: Array(dtype="float32", shape=(1,), stype=stype, data=data + b"\0" * padding)
                          for k, (data, stype) in arrays.items()})
    content = RecordDict({"arrays": record, "metrics": MetricRecord({k: v for k, v in METRICS.items()
                                                                      if k not in drop})})
    for name in drop & {"metrics", "arrays"}:
        del content[name]
    limit = payload_limit(len(serialize(GLOBAL)))
    with mock.patch.object(ArrayRecord, "to_torch_state_dict", autospec=True,
                           side_effect=ArrayRecord.to_torch_state_dict) as convert:
        reply = read_reply(content, limit)
    size = sum(len(d) + padding for d, _ in arrays.values())
    if reply.failure is not None:
        assert drop & {*METRICS, "metrics"} and "\n" not in reply.failure.message
        event("failure")
    elif reply.refused is not None:
        assert "\n" not in reply.refused
        assert ("over the limit" in reply.refused) == (size > limit and "arrays" not in drop)
        assert not (size > limit and convert.called), "an oversized reply was converted"
        event("refused: " + reply.refused[:20])
    else:
        assert size <= limit and reply.update is not None and reply.examples == METRICS["num-examples"]
        state = unpack(reply.update, limit)
        accepted, rejected = screen_updates(GLOBAL, {0: Update(state, reply.examples)}, 0)
        event("accepted" if accepted else "rejected: " + rejected[0]["reason"].split()[-1][:20])
