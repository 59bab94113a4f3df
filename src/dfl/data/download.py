"""Download IDX files from public mirrors into the cache, verified before they get their name.

Each `<file>.gz` is streamed into a hidden temp file in the cache directory, its MD5 checked
against the mirror table, then decompressed and its sha256 checked; only then are the
decompressed bytes written (atomically) under the final name. A mirror that fails in any way
(HTTP error, timeout, wrong bytes) is skipped for the next one. urllib honours the usual proxy
variables (http_proxy, https_proxy, no_proxy).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dfl.errors import DataError
from dfl.runtime.atomic import atomic_write_bytes, temp_path_in

from .checksums import Checksum
from .idx import read_raw_bytes, sha256_hex

DEFAULT_MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
TIMEOUT_S = 15.0  # per connect / per read, not per file: a stalled mirror is dropped quickly
_CHUNK = 1 << 16


class _MirrorFailed(Exception):
    """One mirror could not deliver one file; the message says why, for the final report."""


def mirrors_for(name: str, override: Sequence[str] | None = None) -> tuple[str, ...]:
    """Mirror base URLs for a dataset: `override`, else `$DFL_MIRRORS` (comma-separated)."""
    if override is not None:
        return tuple(override)
    if env := os.environ.get("DFL_MIRRORS", "").strip():
        return tuple(m.strip() for m in env.split(",") if m.strip())
    return DEFAULT_MIRRORS.get(name, ())


def download_idx_files(
    file_names: Iterable[str],
    dest_dir: Path,
    *,
    mirrors: Sequence[str],
    expected: Mapping[str, Checksum],
    gz_md5: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT_S,
    hint: str = "pass --data-dir DIR with the four IDX files",
) -> None:
    """Fetch each `<name>.gz` from the first mirror that serves verified bytes into `dest_dir`.

    `expected` gives the decompressed size and sha256 of every file, `gz_md5` (optional) the
    MD5 of the `.gz` as served. When every mirror fails for a file, a DataError lists each
    URL tried with its reason and ends with `hint`.
    """
    for name in file_names:
        tried: list[str] = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name + ".gz"
            try:
                raw = _fetch_verified(url, dest_dir, name, expected[name], gz_md5, timeout)
            except _MirrorFailed as e:
                tried.append(f"{url} ({e})")
                continue
            try:
                atomic_write_bytes(dest_dir / name, raw)
            except OSError as e:
                raise DataError(
                    f"cannot write {dest_dir / name}: {e.strerror or e} "
                    "(set DFL_DATA_DIR to a writable directory)",
                    exit_code=1,
                ) from None
            break
        else:
            what = "; ".join(tried) if tried else "no mirrors configured"
            raise DataError(f"cannot download {name}.gz: tried {what}. Fix: {hint}")


def _fetch_verified(
    url: str,
    dest_dir: Path,
    name: str,
    expected: Checksum,
    gz_md5: Mapping[str, str] | None,
    timeout: float,
) -> bytes:
    """Download one file to a temp file, verify it, and return its decompressed bytes."""
    try:
        tmp = temp_path_in(dest_dir, name + ".gz")
    except OSError as e:
        raise DataError(
            f"cannot write into the data cache {dest_dir}: {e.strerror or e} "
            "(set DFL_DATA_DIR to a writable directory)",
            exit_code=1,
        ) from None
    try:
        md5 = _stream_to(url, tmp, timeout, limit=expected.nbytes + (1 << 20))
        want_md5 = (gz_md5 or {}).get(name)
        if want_md5 is not None and md5 != want_md5:
            raise _MirrorFailed(f"md5 of the .gz expected {want_md5}, found {md5}")
        try:
            raw = read_raw_bytes(tmp)
        except DataError as e:
            raise _MirrorFailed(f"not a valid gzip file: {e}") from None
        found = sha256_hex(raw)
        if len(raw) != expected.nbytes or found != expected.sha256:
            raise _MirrorFailed(
                f"decompressed: expected {expected.nbytes} bytes sha256 {expected.sha256}, "
                f"found {len(raw)} bytes sha256 {found}"
            )
        return raw
    finally:
        tmp.unlink(missing_ok=True)


def _stream_to(url: str, path: Path, timeout: float, limit: int) -> str:
    """Copy the body at `url` into `path` (at most `limit` bytes) and return its MD5."""
    md5 = hashlib.md5(usedforsecurity=False)  # an integrity check against the mirror table
    total = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            while chunk := response.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise _MirrorFailed(f"more than {limit} bytes, larger than the real file")
                md5.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as e:
        raise _MirrorFailed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _MirrorFailed(str(e.reason)) from None
    except TimeoutError:
        raise _MirrorFailed(f"timed out after {timeout:g} s") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _MirrorFailed(f"{type(e).__name__}: {e}") from None
    return md5.hexdigest()
