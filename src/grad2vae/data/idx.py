"""Read and write IDX files, the format of MNIST and Fashion-MNIST (LeCun et al.).

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then each
dimension as a big-endian uint32; then the data in C order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

UBYTE = 0x08


class IDXError(ValueError):
    """A file is not a well-formed IDX file of the expected shape."""


def encode_idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    return header + array.tobytes()


def decode_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE or not 1 <= raw[3] <= 4:
        raise IDXError(
            f"{name}: not an unsigned-byte IDX file (magic bytes {raw[:4].hex() or 'missing'}, "
            "expected 000008 followed by the number of dimensions)"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise IDXError(f"{name}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + int(np.prod(shape))
    if len(raw) != expected:
        raise IDXError(
            f"{name}: IDX header announces shape {shape} ({expected} bytes) "
            f"but the file has {len(raw)} bytes: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    return decode_idx(path.read_bytes(), name=str(path))
