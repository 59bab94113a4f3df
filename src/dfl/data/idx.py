"""Read and write IDX files (the MNIST format), gzipped or not, refusing anything malformed.

Layout (big-endian): two zero bytes, a type byte, the number of dimensions, one uint32 size
per dimension, then the data in C order. A file whose header or length disagrees is corrupt,
and the error says which file, what was expected and what was found.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfl.errors import DataError
from dfl.runtime.atomic import atomic_write_bytes

GZIP_MAGIC = b"\x1f\x8b"

# type byte -> big-endian dtype as stored in the file
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_TYPE_BYTE_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}

IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension


@dataclass(frozen=True)
class IdxFile:
    """An IDX file's contents with the identity of its decompressed bytes."""

    path: Path
    array: np.ndarray  # native byte order, writable
    magic: int
    sha256: str  # of the decompressed bytes, so a recompressed copy still verifies
    nbytes: int  # decompressed length


MAX_IDX_BYTES = 1 << 30  # 1 GiB decompressed: MNIST's largest file is 47 MB


def read_raw_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped if it starts with the gzip magic (whatever its name)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return _gunzip(data, path)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"corrupt gzip file {path}: expected a complete gzip stream, found {e} "
            "(truncated download? delete it and rerun)"
        ) from None


def _gunzip(data: bytes, path: Path) -> bytes:
    """gzip.decompress with a ceiling: a small file that inflates to gigabytes (a gzip bomb)
    is refused once MAX_IDX_BYTES have come out, before it takes the memory."""
    out, rest = bytearray(), data
    while rest:  # one gzip member after another, as gzip.decompress reads them
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += member.decompress(rest, MAX_IDX_BYTES + 1 - len(out))
        if len(out) > MAX_IDX_BYTES or member.unconsumed_tail:
            raise DataError(
                f"{path} inflates to more than {MAX_IDX_BYTES >> 20} MiB, more than any "
                "28x28 dataset dfl reads (1.3 million images); not an IDX file"
            )
        if not member.eof:
            raise EOFError("the stream ends before its end marker")
        rest = member.unused_data
    return bytes(out)


def parse_idx(raw: bytes, path: Path) -> tuple[np.ndarray, int]:
    """Validate an IDX byte string and return (array in native byte order, magic number)."""
    if len(raw) < 4:
        raise DataError(
            f"corrupt IDX file {path}: expected at least a 4-byte header, found {len(raw)} bytes"
        )
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"not an IDX file {path}: expected a magic number starting with two zero bytes, "
            f"found 0x{raw[:4].hex()} (wrong file, or an HTML error page saved under this name?)"
        )
    type_byte, ndim = raw[2], raw[3]
    if type_byte not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise DataError(
            f"corrupt IDX file {path}: expected a type byte in ({known}), found 0x{type_byte:02x}"
        )
    if ndim == 0:
        raise DataError(f"corrupt IDX file {path}: expected at least 1 dimension, found 0")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(
            f"corrupt IDX file {path}: expected a {header_len}-byte header for {ndim} dimensions, "
            f"found {len(raw)} bytes (truncated download? delete it and rerun)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4:header_len])
    dtype = IDX_DTYPES[type_byte]
    expected = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        dims = "x".join(str(s) for s in shape)
        hint = "truncated download?" if len(raw) < expected else "trailing bytes: wrong file?"
        raise DataError(
            f"corrupt IDX file {path}: expected {expected} bytes for {dims} {dtype.name}, "
            f"found {len(raw)} ({hint} delete it and rerun)"
        )
    flat = np.frombuffer(raw, dtype=dtype, offset=header_len)
    # astype copies into native order, which also gives torch a writable buffer.
    array = flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)
    return array, struct.unpack(">I", raw[:4])[0]


def read_idx(path: str | Path) -> IdxFile:
    """Read and fully validate one IDX file (gzipped or not)."""
    path = Path(path)
    raw = read_raw_bytes(path)
    array, magic = parse_idx(raw, path)
    return IdxFile(path, array, magic, sha256_hex(raw), len(raw))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (uncompressed)."""
    array = np.asarray(array)
    code = _TYPE_BYTE_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise TypeError(f"cannot write {array.dtype} array with {array.ndim} dimensions as IDX")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file atomically; gzipped when the name ends in `.gz`."""
    path = Path(path)
    data = idx_bytes(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # mtime=0: same array, same bytes
    atomic_write_bytes(path, data)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of `data` (the identity used for every checksum table here)."""
    return hashlib.sha256(data).hexdigest()
