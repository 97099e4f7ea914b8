"""Checks that the gradient contract suites for encoders (test_method_contract_encoder.py) and
causal LMs (test_method_contract_lm.py) share."""

from __future__ import annotations

import numpy as np
import torch

from fedcustom.core.config import TrainConfig
from fedcustom.core.types import is_owned_key
from fedcustom.methods.training import train_local


def assert_training_changes_the_state_and_nothing_else(model, method, data, examples: int) -> None:
    """A few steps of the shared loop change every exchanged tensor and no frozen one."""
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = method.get_state(model)
    train_local(model, method, data, np.arange(examples), TrainConfig(batch_size=4, lr=1e-3), seed=0)
    after = method.get_state(model)
    assert set(after) == set(before)
    # every exchanged tensor moves; ownership masks (hetlora) are bookkeeping, not tensors trained
    assert [k for k in before if torch.equal(before[k], after[k]) and not is_owned_key(k)] == []
    params = dict(model.named_parameters())
    assert [n for n, p in frozen.items() if not torch.equal(params[n], p)] == []
