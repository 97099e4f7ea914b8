"""The round's shared vocabulary, below every layer that uses it."""

from __future__ import annotations

import torch

# What travels between server and clients, and what a checkpoint holds: tensors by name. Its
# meaning belongs to the method (prefix vectors, LoRA matrices, logits on a public set, scores).
State = dict[str, torch.Tensor]
