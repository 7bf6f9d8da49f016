"""Tensors as safetensors bytes, each in its dtype, read and written here.

A model's tensors keep their dtype on the hub (F32, F16, BF16, F64, I64,
I32, I16, I8, U8, BOOL) and their exact shape, 0-d included. Deltas of
floating tensors travel in the tensor's own dtype, or compressed to 16 bits
(`compress="f16"`/`"bf16"`: half the bytes, for a rounding error far below
what training noise adds); deltas of integer and bool tensors travel as I64
(a difference of two U8 or bool values can be negative) and must be whole
numbers. numpy has no bfloat16, so files are read and written here (the
format is a little-endian header length, a JSON header, then the raw
tensors) instead of through a library; a BF16 tensor comes back as float32
values (exact).
"""

import json
import struct
from typing import Dict, Optional

import numpy as np

#: `compress=` values and the safetensors dtype floating deltas are sent in
#: (None: each tensor's own dtype).
COMPRESSIONS = {None: None, "none": None, "f32": "F32", "f16": "F16", "bf16": "BF16"}

#: safetensors dtype -> numpy dtype (BF16: float32 values, see `decode`).
NUMPY = {
    "F32": "<f4",
    "F16": "<f2",
    "F64": "<f8",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
FLOATS = ("F32", "F16", "BF16", "F64")


def wire_dtype(compress: Optional[str]) -> Optional[str]:
    try:
        return COMPRESSIONS[compress]
    except KeyError:
        raise ValueError(f"compress must be one of None, 'f16', 'bf16', not {compress!r}") from None


def dtype_of(a) -> str:
    """The safetensors dtype of a numpy array (float32 for anything else)."""
    kind = np.asarray(a).dtype
    for name, np_dtype in NUMPY.items():
        if kind == np.dtype(np_dtype):
            return name
    return "F32"


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values as bfloat16 bit patterns (uint16), rounded to nearest
    even as torch does."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _raw(a: np.ndarray, dtype: str) -> bytes:
    if dtype == "BF16":
        return to_bf16_bits(a).astype("<u2").tobytes()
    if dtype not in NUMPY:
        raise ValueError(f"unsupported dtype {dtype}")
    return np.ascontiguousarray(a, dtype=NUMPY[dtype]).tobytes()


def encode_typed(tensors: Dict[str, np.ndarray], dtypes: Dict[str, str]) -> bytes:
    """A safetensors file of `tensors`, each written as `dtypes[name]`,
    shapes exact (a 0-d array stays 0-d)."""
    header: Dict[str, dict] = {}
    chunks = []
    offset = 0
    for name, a in tensors.items():
        raw = _raw(np.asarray(a), dtypes[name])
        header[name] = {
            "dtype": dtypes[name],
            "shape": [int(s) for s in np.shape(a)],
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def encode(tensors: Dict[str, np.ndarray], dtype: str = "F32") -> bytes:
    """A safetensors file of tensors, every one as `dtype`."""
    return encode_typed(tensors, {k: dtype for k in tensors})


def decode(payload: bytes) -> Dict[str, np.ndarray]:
    """The tensors of a safetensors file as arrays of their dtype and shape
    (BF16 as float32)."""
    (n,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + n])
    data = memoryview(payload)[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        lo, hi = t["data_offsets"]
        shape = tuple(t["shape"])
        raw = data[lo:hi]
        if t["dtype"] == "BF16":
            a = from_bf16_bits(np.frombuffer(raw, dtype="<u2"))
        elif t["dtype"] in NUMPY:
            a = np.frombuffer(raw, dtype=NUMPY[t["dtype"]])
        else:
            raise ValueError(f"tensor {name} has dtype {t['dtype']}, which this package does not read")
        out[name] = a.reshape(shape).copy()
    return out


def encode_delta(
    delta: Dict[str, np.ndarray], model_dtypes: Dict[str, str], compress: Optional[str] = None
) -> bytes:
    """A delta as the hub takes it: floating tensors in `compress` (F16,
    BF16, F32) or their own dtype, integer and bool tensors as I64, which
    must be whole numbers."""
    wire = {}
    arrays = {}
    for k, d in delta.items():
        own = model_dtypes[k]
        if own in FLOATS:
            wire[k] = compress or own
            arrays[k] = np.asarray(d)
        else:
            a = np.asarray(d)
            if a.dtype.kind == "f" and not np.all(np.isfinite(a) & (a == np.round(a))):
                raise ValueError(f"delta {k} of integer tensor ({own}) has fractional values")
            wire[k] = "I64"
            arrays[k] = a.astype(np.int64)
    return encode_typed(arrays, wire)
