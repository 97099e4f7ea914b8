"""The wire format of every payload: a flat dict of tensors serialized with safetensors.

Bytes on the wire are measured as len(serialize(state)), never computed from shapes.
"""

from __future__ import annotations

import torch
from safetensors.torch import load, save


def serialize(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.detach().contiguous() for k, v in state.items()})


def deserialize(payload: bytes) -> dict[str, torch.Tensor]:
    return load(payload)
