"""Property test: whatever values a config holds, building it either succeeds or raises a one-line
UserError naming the key; it never crashes with another exception."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fedcustom.core.config import ExperimentConfig, build, dumps, load_config, to_dict
from fedcustom.core.errors import UserError

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.sampled_from(["federated", "centralized", "x"]), max_size=3),
)
KEYS = st.sampled_from([
    ("federation", "rounds"), ("federation", "fraction_fit"), ("federation", "max_norm_factor"),
    ("partition", "alpha"), ("partition", "num_clients"), ("partition", "scheme"),
    ("partition", "min_size"), ("data", "test_fraction"), ("data", "max_train_examples"),
    ("train", "lr"), ("train", "batch_size"), ("train", "lr_schedule"), ("model", "max_length"),
    ("method", "num_virtual_tokens"), ("method", "init"), ("strategy", "momentum"),
    ("attack", "fraction"), ("attack", "kind"), ("seed", None), ("modes", None), ("name", None),
    ("data", "unknown_key"),
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_any_values_build_or_fail_with_a_user_error(entries: list) -> None:
    raw: dict = {}
    for (section, key), value in entries:
        if value is None:
            continue  # TOML has no null
        if key is None:
            raw[section] = value
        else:
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = value
    try:
        cfg = build(ExperimentConfig, raw)
    except UserError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(cfg, ExperimentConfig)
    floats = [v for table in to_dict(cfg).values() if isinstance(table, dict)
              for v in table.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats)  # no NaN or Inf gets through


@settings(max_examples=50, deadline=None)
@given(rounds=st.integers(1, 1000), alpha=st.floats(1e-3, 1e3), clients=st.integers(1, 5000),
       fraction=st.floats(1e-3, 1.0))
def test_valid_configs_round_trip_through_toml(tmp_path_factory, rounds: int, alpha: float,
                                              clients: int, fraction: float) -> None:
    cfg = load_config(None, [f"federation.rounds={rounds}", f"partition.alpha={alpha!r}",
                             f"partition.num_clients={clients}",
                             f"federation.fraction_fit={fraction!r}"])
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(dumps(cfg))
    assert load_config(path) == cfg
