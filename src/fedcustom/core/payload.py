"""The wire format of every payload: a flat dict of tensors serialized with safetensors.

Bytes on the wire are measured as len(serialize(state)), never computed from shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load, save


def serialize(state: Mapping[str, torch.Tensor]) -> bytes:
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


class StateFile(Mapping[str, torch.Tensor]):
    """A read-only state whose tensors stay in a payload saved to `path`: each lookup reads that one
    tensor from the file, so a reader that goes key by key holds one tensor of it at a time. The
    tensors are those deserialize() gives for the same bytes, bit for bit, in the same key order."""

    def __init__(self, path: Path, keys: list[str]) -> None:
        self.path, self.names = path, keys  # keys: the payload's, in deserialize()'s order
        self.known = frozenset(keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.known:
            raise KeyError(key)
        with safe_open(self.path, framework="pt") as f:
            # safetensors maps the file: the copy owns its memory, so the file can go at any time
            return f.get_tensor(key).clone()

    def __contains__(self, key: object) -> bool:  # without reading the tensor (Mapping's would)
        return key in self.known

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
