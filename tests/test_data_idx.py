"""IDX reading and writing: roundtrips, and every kind of corrupt file named in the error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfl.data.idx import idx_bytes, read_idx, sha256_hex, write_idx
from dfl.errors import DataError
from dfl.runtime.atomic import atomic_file, atomic_write_bytes

DTYPES = ["u1", "i1", ">i2", ">i4", ">f4", ">f8", "<i4", "<f8"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_roundtrip_every_type(tmp_path: Path, dtype: str, suffix: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 3, 4)) * 100).astype(dtype)
    path = tmp_path / f"data-idx3{suffix}"
    write_idx(path, array)
    idx = read_idx(path)
    np.testing.assert_array_equal(idx.array, array)
    assert idx.array.dtype.isnative and idx.array.flags.writeable
    assert idx.nbytes == len(idx_bytes(array))
    assert idx.sha256 == sha256_hex(idx_bytes(array))


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    dtype=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
)
def test_roundtrip_any_shape(shape: list[int], dtype: str) -> None:
    array = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    raw = idx_bytes(array)
    assert raw[:2] == b"\0\0" and raw[3] == len(shape)
    assert struct.unpack(f">{len(shape)}I", raw[4 : 4 + 4 * len(shape)]) == tuple(shape)


def test_images_and_labels_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "img", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "lab", np.zeros(2, np.uint8))
    assert read_idx(tmp_path / "img").magic == 2051
    assert read_idx(tmp_path / "lab").magic == 2049


def test_gzip_detected_by_magic_not_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain").write_bytes(idx_bytes(array))
    (tmp_path / "zipped-without-suffix").write_bytes(gzip.compress(idx_bytes(array)))
    a, b = read_idx(tmp_path / "plain"), read_idx(tmp_path / "zipped-without-suffix")
    np.testing.assert_array_equal(a.array, b.array)
    assert a.sha256 == b.sha256  # identity is of the decompressed bytes


def _corrupt(tmp_path: Path, data: bytes, match: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


GOOD = idx_bytes(np.zeros((10, 28, 28), np.uint8))


def test_truncated_file(tmp_path: Path) -> None:
    _corrupt(tmp_path, GOOD[:1000], r"expected 7856 bytes for 10x28x28 uint8, found 1000")


def test_trailing_bytes(tmp_path: Path) -> None:
    _corrupt(tmp_path, GOOD + b"x", r"expected 7856 bytes .* found 7857")


def test_wrong_magic(tmp_path: Path) -> None:
    _corrupt(tmp_path, b"<html>503 Service Unavailable</html>", r"two zero bytes, found 0x3c68")


def test_unknown_type_byte(tmp_path: Path) -> None:
    _corrupt(tmp_path, b"\0\0\x07\x01" + struct.pack(">I", 0), r"type byte .* found 0x07")


def test_zero_dimensions(tmp_path: Path) -> None:
    _corrupt(tmp_path, b"\0\0\x08\0", r"expected at least 1 dimension, found 0")


def test_truncated_header(tmp_path: Path) -> None:
    _corrupt(tmp_path, GOOD[:10], r"expected a 16-byte header for 3 dimensions, found 10")
    _corrupt(tmp_path, b"\0\0", r"at least a 4-byte header, found 2")


def test_truncated_gzip(tmp_path: Path) -> None:
    _corrupt(tmp_path, gzip.compress(GOOD)[:40], r"corrupt gzip file")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read IDX file .*nope"):
        read_idx(tmp_path / "nope")


def test_write_refuses_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))


def test_gzip_output_is_deterministic(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "final"
    with pytest.raises(RuntimeError), atomic_file(final) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(final, b"whole")
    assert final.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]
