"""Checks on every client update before the strategy sees it.

One bad update must not end a run or poison the global state: a client may crash half-way, a
state may diverge to NaN, a malicious client may send something huge. So each update is checked
on its own (same keys, shapes and dtypes as the global state, all values finite, a weight of at
least one example) and then against the round (its distance from the global state is not far
outside the other clients'). A rejected update is dropped with a reason; the round goes on with
the rest.
"""

from __future__ import annotations

import math
import numbers
import statistics
from typing import Any

import torch

from fedcustom.core.types import State, Update, is_owned_key, owned_key

Sender = int | str  # a client id, or SECURE_MEAN: the securely aggregated mean of several clients
SECURE_MEAN = "secure mean"
MIN_UPDATES_FOR_NORM_CHECK = 3  # the median of two is their mean: no outlier can stand out of it


def structural_problem(global_state: State, update: State) -> str | None:
    """Why `update` cannot be aggregated with `global_state`, or None if it can."""
    if update.keys() != global_state.keys():
        missing = sorted(global_state.keys() - update.keys())
        extra = sorted(update.keys() - global_state.keys())
        return f"keys differ from the global state: missing {missing}, unexpected {extra}"
    for key, expected in global_state.items():
        got = update[key]
        if got.shape != expected.shape:
            return f"{key} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"{key} has dtype {got.dtype}, expected {expected.dtype}"
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            return f"{key} has non-finite values"
    return None


def delta_norm(global_state: State, update: State) -> float:
    """||update - global|| over all tensors together, in float64, over what the sender owns: an
    ownership mask (core.types.owned_key) is bookkeeping, and the elements it marks False are not
    the sender's (a smaller-rank LoRA client sends zeros there, which is no move of its own)."""
    total = 0.0
    for key, g in global_state.items():
        if is_owned_key(key):
            continue
        delta = update[key].double() - g.double()
        mask = update.get(owned_key(key))
        total += float(((delta if mask is None else delta * mask) ** 2).sum())
    return math.sqrt(total)


def screen_updates(
    global_state: State, updates: dict[Sender, Update], max_norm_factor: float
) -> tuple[list[Update], list[dict[str, Any]]]:
    """Split a round's updates by sender into (accepted updates, rejected {client, reason}).

    The norm check runs when max_norm_factor > 0 and at least three updates passed the structural
    checks: an update farther than max_norm_factor x the median distance is rejected. A median of
    zero (most clients sent the global state back unchanged) gives no scale, so nothing is cut.
    """
    rejected: list[dict[str, Any]] = []
    valid: dict[Sender, Update] = {}
    for sender, update in updates.items():
        problem = structural_problem(global_state, update.state)
        if problem is None and not (isinstance(update.examples, numbers.Integral) and update.examples >= 1):
            # its weight in the mean: zero would divide by zero, a negative one would subtract it
            problem = f"claims {update.examples} training examples; expected at least 1"
        if problem is None:
            valid[sender] = update
        else:
            rejected.append({"client": sender, "reason": problem})
    if max_norm_factor > 0 and len(valid) >= MIN_UPDATES_FOR_NORM_CHECK:
        norms = {sender: delta_norm(global_state, u.state) for sender, u in valid.items()}
        median = statistics.median(norms.values())
        limit = max_norm_factor * median
        if limit > 0:
            for sender, norm in norms.items():
                if norm > limit:
                    reason = f"delta norm {norm:.4g} > {max_norm_factor:g} x the round's median {median:.4g}"
                    rejected.append({"client": sender, "reason": reason})
            valid = {sender: u for sender, u in valid.items() if norms[sender] <= limit}
    rejected.sort(key=lambda r: (isinstance(r["client"], str), r["client"]))
    return list(valid.values()), rejected
