"""How long a GGUF file says it is, against how many bytes are there.

    python tools/gguf_extent.py FILE [FILE ...]   (the files of a split download, in order)

Reads only the header (metadata and tensor table) of the concatenated parts: the 7B packages on
the registry were found this way to hold 2 of the 47 parts of their file (docs/config.md).
"""

from __future__ import annotations

import struct
import sys
from collections import Counter
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class Header:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, fmt: str):
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value

    def string(self) -> str:
        n = self.read("Q")
        self.pos += n
        return self.data[self.pos - n:self.pos].decode("utf-8", "replace")

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, n = self.read("I"), self.read("Q")
            return [self.value(item) for _ in range(n)]
        return self.read(SCALARS[kind])


def extent(parts: list[Path]) -> dict:
    data = b"".join(p.read_bytes() for p in parts)
    h = Header(data)
    if h.data[:4] != b"GGUF":
        raise SystemExit(f"{parts[0]}: not a GGUF file")
    h.pos = 8
    tensors, fields = h.read("Q"), h.read("Q")
    meta = {}
    for _ in range(fields):
        key = h.string()
        meta[key] = h.value(h.read("I"))
    table = []
    for _ in range(tensors):
        name = h.string()
        dims = [h.read("Q") for _ in range(h.read("I"))]
        table.append((name, dims, GGMLQuantizationType(h.read("I")), h.read("Q")))
    align = meta.get("general.alignment", 32)
    start = -(-h.pos // align) * align
    def end(t):
        n = 1
        for d in t[1]:
            n *= d
        block, size = GGML_QUANT_SIZES[t[2]]
        return start + t[3] + n // block * size
    return {"model": meta.get("general.name"), "tensors": tensors,
            "types": dict(Counter(t[2].name for t in table)),
            "bytes_needed": max(end(t) for t in table), "bytes_present": len(data)}


if __name__ == "__main__":
    info = extent([Path(p) for p in sys.argv[1:]])
    share = info["bytes_present"] / info["bytes_needed"]
    print(f"{info['model']}: {info['tensors']} tensors {info['types']}; the file is "
          f"{info['bytes_needed']:,} bytes, {info['bytes_present']:,} present ({share:.1%})")
