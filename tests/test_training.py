"""The shared training loop's learning-rate schedule."""

from __future__ import annotations

from fedcustom.core.config import TrainConfig
from fedcustom.methods.training import lr_scale


def test_cosine_schedule_by_hand() -> None:
    cosine = TrainConfig(lr_schedule="cosine")
    # 0.5 * (1 + cos(pi * (r - 1) / 4)) for r = 1..4: 1, 0.8536, 0.5, 0.1464
    assert [round(lr_scale(cosine, r, 4), 4) for r in (1, 2, 3, 4)] == [1.0, 0.8536, 0.5, 0.1464]
    assert lr_scale(TrainConfig(), 3, 4) == 1.0
