"""Verification of raw dataset files: the SHA-256 of the official uncompressed files, the IDX
header and shape, and the errors that name what is wrong."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import zlib

from grad2vae.data.datasets import DATASETS, IdxFile
from grad2vae.data.idx import IDXError, decode_idx
from grad2vae.errors import UserError


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
class DataIntegrityError(UserError):
    """A file's bytes are not the official ones (wrong hash, truncated, not IDX, bad archive)."""


class UnsafePickleError(DataIntegrityError, pickle.UnpicklingError):
    """A pickle asked for something other than rebuilding numpy arrays."""


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _whose_hash(sha256: str) -> str | None:
    """Name the official file these bytes are, if any (helps when MNIST and Fashion get mixed)."""
    for dataset in DATASETS.values():
        for idx_file in dataset.files.values():
            if idx_file.sha256 == sha256:
                return f"{dataset.name}/{idx_file.name}"
    return None


def verify_idx_bytes(raw: bytes, expected: IdxFile, origin: str) -> None:
    """Raise DataIntegrityError unless ``raw`` is exactly the official file ``expected``.

    ``origin`` names where the bytes came from (a path, or a source and file) for the message.
    """
    actual = sha256_of(raw)
    # With the right hash the IDX check cannot fail for the official table; it still runs so
    # that a wrong entry in the table cannot make a non-IDX file pass.
    problem = _idx_problem(raw, expected, origin)
    if actual == expected.sha256 and problem is None:
        return
    known_as = _whose_hash(actual) if actual != expected.sha256 else None
    if known_as is not None:
        problem = f"these are the bytes of {known_as}, not of this file"
    elif problem is None:
        problem = "well-formed IDX of the right shape, but different bytes"
    raise DataIntegrityError(
        f"{origin}: wrong content for {expected.name} ({problem}): "
        f"expected SHA-256 {expected.sha256}, actual SHA-256 {actual}. "
        "The file is corrupt, truncated or a different file. Delete it and run `grad2vae fetch` "
        "again, or put the official files in a folder and pass it with --local-dir."
    )


def _idx_problem(raw: bytes, expected: IdxFile, origin: str) -> str | None:
    """What is wrong with ``raw`` as an IDX file of ``expected``'s shape (bad magic,
    truncated, other shape), or None if nothing is."""
    try:
        array = decode_idx(raw, name=origin)
    except IDXError as error:
        # IDXError messages start with the name, which the caller's message already has.
        return str(error).removeprefix(f"{origin}: ")
    if array.shape != expected.shape:
        return f"IDX shape {array.shape}, expected {expected.shape}"
    return None


def gunzip(data: bytes, origin: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataIntegrityError(
            f"{origin}: not a complete gzip file ({error}). It is corrupt or truncated: "
            "replace it with the official file."
        ) from error
