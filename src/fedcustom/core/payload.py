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


def unpack(payload: bytes, limit: int) -> dict[str, torch.Tensor]:
    """A client's payload, refused (ValueError naming why) when it is larger than `limit` bytes,
    checked before anything is parsed, or is not safetensors at all."""
    if len(payload) > limit:
        raise ValueError(f"{len(payload):,} bytes, over the limit of {limit:,}")
    try:
        return load(payload)
    except Exception as e:  # noqa: BLE001 - safetensors reports bad bytes in several ways
        why = (str(e).splitlines() or [type(e).__name__])[0][:80]
        raise ValueError(f"not a safetensors payload ({why})") from None
