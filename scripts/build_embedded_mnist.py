"""Build bbits_ref/datasets/embedded/mnist_subset.npz, the MNIST subset embedded in the package ("mnist-small").

    python scripts/build_embedded_mnist.py [MNIST_DIR] [--out PATH]

MNIST_DIR holds the four standard IDX files, raw or .gz (default: where the loaders look, the
data root's mnist/ folder: $BBITS_REF_DATA/mnist, else the user cache; `bbits-ref train --dataset
mnist --download` fetches them there).  Their checksums are verified.  The subset is the
first 1,000 training and the first 200 test images of each digit, in the order of the original
files (no randomness, so nothing to seed).  The .npz holds

    x_train (10000, 28, 28) uint8, y_train (10000,) uint8, train_index (10000,) int32,
    x_test  (2000, 28, 28)  uint8, y_test  (2000,)  uint8, test_index  (2000,)  int32,

where *_index are the positions in the original files.  It is written like np.savez_compressed but
with fixed zip timestamps and compression level, so the same input gives the same bytes (with the
same zlib).  The script prints the size and SHA-256; copy the SHA-256 into
EMBEDDED_MNIST_SHA256 in bbits_ref/datasets/mnist.py when it changes.
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

from bbits_ref._files import atomic_write_bytes  # noqa: E402
from bbits_ref.datasets import data_root, find_mnist, first_per_class, load_mnist  # noqa: E402
from bbits_ref.datasets import mnist  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bbits_ref" / "datasets" / "embedded" / mnist.EMBEDDED_MNIST_FILE
MAX_BYTES = 3 * 2**20


def build_subset(mnist_dir: str | Path) -> dict[str, np.ndarray]:
    """The arrays of the embedded subset, from the full MNIST in ``mnist_dir`` (checksum-verified)."""
    full = load_mnist(mnist_dir, verify=True)
    train_per_class, test_per_class = mnist.EMBEDDED_PER_CLASS
    train = first_per_class(full.y_train, train_per_class)
    test = first_per_class(full.y_test, test_per_class)
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
    timestamp, permissions and compression level, so identical arrays give identical bytes.
    Written atomically: a failure leaves any previous file as it was."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED,
                             compresslevel=9)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mnist_dir", nargs="?", default=None,
                        help="directory with the MNIST IDX files (default: the data root's "
                             "mnist/ folder, $BBITS_REF_DATA/mnist or the user cache)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    mnist_dir = args.mnist_dir if args.mnist_dir is not None else find_mnist(data_root())
    if mnist_dir is None:
        print(f"error: the full MNIST is not under {data_root()}; pass MNIST_DIR, set "
              f"BBITS_REF_DATA, or fetch it with `bbits-ref train --dataset mnist --download`",
              file=sys.stderr)
        return 2
    arrays = build_subset(mnist_dir)
    out = Path(args.out)
    write_npz_reproducibly(out, arrays)
    size = out.stat().st_size
    sha256 = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: {size} bytes ({size / 2**20:.2f} MiB)")
    print(f"sha256 {sha256}")
    if size > MAX_BYTES:
        print(f"error: larger than the {MAX_BYTES}-byte budget", file=sys.stderr)
        return 1
    if sha256 != mnist.EMBEDDED_MNIST_SHA256:
        print("note: differs from EMBEDDED_MNIST_SHA256 in bbits_ref/datasets/mnist.py; update "
              "the constant", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
