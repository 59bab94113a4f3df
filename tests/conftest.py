"""Shared fixtures and helpers: a small learnable synthetic dataset (so most tests need no
real MNIST), the `digits` IDX directory, `dfl` as a command (`DFL`, in a fresh process) and as
a call (`run`, in this one), and `wait_for` to poll a real process."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dfl.data import Dataset

# `dfl` in a fresh interpreter, as a user starts it, for the tests that kill, pause or limit a
# real process (this interpreter and the checkout under test, whatever `dfl` is on the PATH).
DFL = [sys.executable, "-c", "import sys; from dfl.cli import main; sys.exit(main())"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`dfl ARGV` in this process: its exit code (argparse's own exits, such as --help and bad
    flags, included), then what it printed to stdout and to stderr."""
    from dfl.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def wait_for(condition: Callable[[], object], timeout: float = 60.0) -> None:
    """Poll `condition` every 20 ms until it holds; fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting for the process"
        time.sleep(0.02)


def synthetic_digits(n: int, seed: int, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 uint8 images: class k is a bright 6x6 square at a class-specific place, plus noise.
    Easy enough that a few epochs of any sensible model learn it, hard enough to need a step."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.int64)
    for k in range(num_classes):
        row, col = 2 + 8 * (k // 3), 2 + 8 * (k % 3)
        images[labels == k, row : row + 6, col : col + 6] += 180
    return images.clamp(0, 255).to(torch.uint8), labels


def make_dataset(n_train: int = 512, n_test: int = 128, num_classes: int = 10) -> Dataset:
    train_x, train_y = synthetic_digits(n_train, 0, num_classes)
    test_x, test_y = synthetic_digits(n_test, 1, num_classes)
    return Dataset(
        name="synthetic",
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=num_classes,
        source="synthetic",
        path=Path("."),
        verified="synthetic (no checksums)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """`make test` runs the tests in two pytest-xdist workers. On 2 cores each worker, and every
    process its tests start, trains on one thread: two workers of two threads each would spin
    against each other, and a test that compares numbers exactly needs a thread count that
    does not depend on what else runs."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (those marked longest, then those marked slow), so that two
    workers finish together rather than one ending on a long test alone."""

    def order(item: pytest.Item) -> tuple[bool, bool]:
        return item.get_closest_marker("longest") is None, item.get_closest_marker("slow") is None

    items.sort(key=order)


@pytest.fixture(scope="session")
def tiny_data() -> Dataset:
    return make_dataset()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """No test reads or writes the user's ~/.cache/dfl; each session gets its own cache."""
    monkeypatch.setenv("DFL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "dfl-cache"))


@pytest.fixture(autouse=True)
def _threads_of_their_own(monkeypatch: pytest.MonkeyPatch):
    """The tests' trainings (and the processes they start) keep the thread count they start
    with, whatever other dfl trainings run on the machine: many tests compare numbers exactly,
    and a share of the cores that moves with the others changes the order of sums. The core
    share's own tests turn it back on."""
    monkeypatch.setenv("DFL_SHARE_CORES", "0")


def write_idx_dataset(root: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """The synthetic digits as a directory of the four standard IDX files, for code that loads
    data by path (the CLI, worker processes)."""
    from dfl.data.idx import write_idx

    root.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in {
        "train": synthetic_digits(n_train, 0),
        "t10k": synthetic_digits(n_test, 1),
    }.items():
        write_idx(root / f"{prefix}-images-idx3-ubyte", x.numpy())
        write_idx(root / f"{prefix}-labels-idx1-ubyte", y.numpy().astype("uint8"))
    return root


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic digits as an IDX directory (256 training and 64 test images), written once
    for the session: the tests read it, none writes into it."""
    return write_idx_dataset(tmp_path_factory.mktemp("digits") / "digits")


CHROMIUM_FLAGS = [  # headless, as root, and no background traffic on a closed network
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium driven by Selenium (Debian's chromium + chromium-driver, installed by
    `make browser`); skipped with the reason when they are not installed."""
    import shutil

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless Chromium not installed (run `make browser`)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


def check_page(driver, path: Path, screenshot: Path | None = None) -> dict:
    """Open a local HTML file; report broken images, console errors and script elements."""
    driver.get(path.resolve().as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
    )
    if screenshot is not None:
        driver.save_screenshot(str(screenshot))
    return {
        "images": images,
        "broken": [alt for alt, ok in images if not ok],
        "errors": [e for e in driver.get_log("browser") if e["level"] == "SEVERE"],
        "scripts": driver.execute_script("return document.scripts.length"),
        "text": driver.execute_script("return document.body.innerText"),
    }
