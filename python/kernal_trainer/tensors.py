"""Updates as safetensors bytes, in float32 or compressed to 16 bits.

The hub widens f16 and bf16 deltas to float32 before folding them, so a
16-bit update costs half the bytes on the wire and in the hub's in-flight
budget for a rounding error far below what training noise adds. numpy has no
bfloat16, so the file is written here (the format is a little-endian header
length, a JSON header, then the raw tensors) instead of through a library.
"""

import json
import struct
from typing import Dict, Optional

import numpy as np

#: `compress=` values and the safetensors dtype each sends.
COMPRESSIONS = {None: "F32", "none": "F32", "f32": "F32", "f16": "F16", "bf16": "BF16"}


def wire_dtype(compress: Optional[str]) -> str:
    try:
        return COMPRESSIONS[compress]
    except KeyError:
        raise ValueError(f"compress must be one of None, 'f16', 'bf16', not {compress!r}") from None


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest
    even as torch does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _raw(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return np.ascontiguousarray(a, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(a, dtype="<f2").tobytes()
    if dtype == "BF16":
        return to_bf16_bits(a).astype("<u2").tobytes()
    raise ValueError(f"unsupported dtype {dtype}")


def encode(tensors: Dict[str, np.ndarray], dtype: str = "F32") -> bytes:
    """A safetensors file of float tensors, every one as `dtype` (F32, F16
    or BF16)."""
    header: Dict[str, dict] = {}
    chunks = []
    offset = 0
    for name, a in tensors.items():
        raw = _raw(a, dtype)
        header[name] = {
            "dtype": dtype,
            "shape": [int(s) for s in np.shape(a)],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)
