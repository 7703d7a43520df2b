"""Build bbits_ref/datasets/embedded/mnist_subset.npz, the MNIST subset embedded in the package ("mnist-small").

    python scripts/build_embedded_mnist.py [MNIST_DIR] [--out PATH]

MNIST_DIR holds the four standard IDX files, raw or .gz (default: ../shared/data/mnist relative
to the repository root).  Their MD5s are checked against the published values.  The subset is the
first 1,000 training and the first 200 test images of each digit, in the order of the original
files (no randomness, so nothing to seed).  The .npz holds

    x_train (10000, 28, 28) uint8, y_train (10000,) uint8, train_index (10000,) int32,
    x_test  (2000, 28, 28)  uint8, y_test  (2000,)  uint8, test_index  (2000,)  int32,

where *_index are the positions in the original files.  It is written like np.savez_compressed but
with fixed zip timestamps and compression level, so the same input gives the same bytes (with the
same zlib).  The script prints the size and SHA-256; copy the SHA-256 into
EMBEDDED_MNIST_SHA256 in bbits_ref/datasets/loaders.py when it changes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # use this checkout's bbits_ref, installed or not

from bbits_ref.datasets import loaders as data  # noqa: E402

DEFAULT_MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_OUT = REPO_ROOT / "bbits_ref" / "data" / data.EMBEDDED_MNIST_FILE
MAX_BYTES = 3 * 2**20


def build_subset(mnist_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of the embedded subset, from the full MNIST in ``mnist_dir`` (MD5-verified)."""
    full = data.load_mnist(mnist_dir, verify=True)
    train_per_class, test_per_class = data.EMBEDDED_PER_CLASS
    train = data.first_per_class(full.y_train, train_per_class)
    test = data.first_per_class(full.y_test, test_per_class)
    for split, labels, per_class in (("train", full.y_train[train], train_per_class),
                                     ("test", full.y_test[test], test_per_class)):
        counts = np.bincount(labels, minlength=10)
        if not (counts == per_class).all():
            raise RuntimeError(f"{split}: expected {per_class} images per class, got {counts}")
    return {"x_train": full.x_train[train], "y_train": full.y_train[train].astype(np.uint8),
            "train_index": train.astype(np.int32),
            "x_test": full.x_test[test], "y_test": full.y_test[test].astype(np.uint8),
            "test_index": test.astype(np.int32)}


def write_npz_reproducibly(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed .npz (a zip of .npy files, as np.savez_compressed writes) with a fixed
    timestamp, permissions and compression level, so identical arrays give identical bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                             compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist_dir", nargs="?", default=str(DEFAULT_MNIST_DIR),
                        help=f"directory with the MNIST IDX files (default {DEFAULT_MNIST_DIR})")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    arrays = build_subset(args.mnist_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz_reproducibly(out, arrays)
    size = out.stat().st_size
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: {size} bytes ({size / 2**20:.2f} MiB)")
    print(f"sha256 {sha256}")
    if size > MAX_BYTES:
        print(f"error: larger than the {MAX_BYTES}-byte budget", file=sys.stderr)
        return 1
    if sha256 != data.EMBEDDED_MNIST_SHA256:
        print("note: differs from EMBEDDED_MNIST_SHA256 in bbits_ref/datasets/loaders.py; update the constant",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
