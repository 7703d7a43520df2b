"""Tests for bbits_ref.datasets: the embedded MNIST subset, the data root, the IDX and CIFAR-10
loaders on genuine and hostile files, the downloaders (against a server on 127.0.0.1 and file://
URLs, never the internet), minibatches, and the docs/method.md §7.3 normalisation and augmentation.

The full-MNIST tests look for the four IDX files where the loaders do (``$BBITS_REF_DATA``, else
the user cache) and are skipped with the reason when they are not there.
"""
from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import importlib.util
import inspect
import pickle
import re
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import bbits_ref._errors
from bbits_ref.datasets import (ChecksumError, DataFileError, DataNotFoundError, Dataset,
                                DownloadError, UnsafePickleError, augment_cifar, batches,
                                data_root, default_cache_dir, find_mnist, first_per_class,
                                load_cifar10, load_dataset, load_embedded_mnist, load_mnist,
                                normalize_cifar, normalize_mnist, read_idx)
from bbits_ref.datasets import cifar10, download, mnist
from bbits_ref.datasets.common import CIFAR10_MEAN, CIFAR10_STD
import fixtures_data as fx

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "bbits_ref" / "datasets" / "embedded" / mnist.EMBEDDED_MNIST_FILE
REAL_ROOT = data_root()
REAL_MNIST = find_mnist(REAL_ROOT)
needs_real_mnist = pytest.mark.skipif(
    REAL_MNIST is None, reason=f"the full MNIST is not under the data root {REAL_ROOT} (set "
                               f"BBITS_REF_DATA to a folder with mnist/ in it)")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mnist_arrays(rng):
    return fx.make_mnist(rng)


@pytest.fixture
def cifar(rng):
    return fx.make_cifar(rng)


@contextlib.contextmanager
def one_line(kind=DataFileError, match=None):
    """``pytest.raises`` that also requires what every data error must be: a
    ``bbits_ref._errors.DataFileError`` whose message is a single line."""
    with pytest.raises(kind, match=match) as info:
        yield info
    assert isinstance(info.value, bbits_ref._errors.DataFileError), type(info.value)
    assert "\n" not in str(info.value), str(info.value)


def build_script():
    spec = importlib.util.spec_from_file_location("build_embedded_mnist",
                                                  ROOT / "scripts" / "build_embedded_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- errors and the root

def test_error_classes_are_the_package_data_error():
    for kind in (DataNotFoundError, ChecksumError, UnsafePickleError, DownloadError):
        assert issubclass(kind, DataFileError)
    assert issubclass(DataFileError, bbits_ref._errors.DataFileError)
    assert issubclass(DataNotFoundError, FileNotFoundError)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert DataNotFoundError("x").exit_code == 3


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_root(environ={}) == tmp_path / "home" / ".cache" / "bbits_ref"
    # XDG_CACHE_HOME counts only when absolute (the XDG convention).
    assert data_root(environ={"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/bbits_ref")
    assert default_cache_dir({"XDG_CACHE_HOME": "rel"}) == tmp_path / "home/.cache/bbits_ref"
    env = {"XDG_CACHE_HOME": "/xdg", "BBITS_REF_DATA": str(tmp_path / "env")}
    assert data_root(environ=env) == tmp_path / "env"
    assert data_root(environ=dict(env, BBITS_REF_DATA=" ")) == Path("/xdg/bbits_ref")
    assert data_root(tmp_path / "arg", environ=env) == tmp_path / "arg"
    assert data_root("~/d", environ=env) == tmp_path / "home" / "d"
    monkeypatch.setenv("BBITS_REF_DATA", str(tmp_path / "from-os"))
    assert data_root() == tmp_path / "from-os"


def test_no_path_outside_the_repository():
    sources = [*(ROOT / "bbits_ref" / "datasets").glob("*.py"), ROOT / "tests" / "fixtures_data.py",
               ROOT / "scripts" / "build_embedded_mnist.py"]
    assert len(sources) >= 9
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for needle in (r"\.\./", r"shared/", r"parents\[[2-9]\]", r"\.parent\.parent\b",
                       r"ROOT\.parent"):
            assert not re.search(needle, text), f"{path.name} refers to a path outside the repo"


# --------------------------------------------------------------------------- embedded subset

def test_embedded_mnist_shapes_dtypes_and_class_balance():
    ds = load_embedded_mnist()
    assert ds.name == "mnist-small" and ds.classes == tuple("0123456789")
    assert ds.x_train.shape == (10000, 28, 28) and ds.x_test.shape == (2000, 28, 28)
    assert ds.x_train.dtype == ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert (np.bincount(ds.y_train, minlength=10) == 1000).all()
    assert (np.bincount(ds.y_test, minlength=10) == 200).all()
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0  # real digits, not a blank array
    # Images differ from each other (a broken selection repeating one image would not).
    assert len(np.unique(ds.x_train.reshape(10000, -1)[:100], axis=0)) == 100


def test_embedded_file_size_checksum_and_licence():
    raw = EMBEDDED.read_bytes()
    assert len(raw) <= 3 * 2**20
    assert hashlib.sha256(raw).hexdigest() == mnist.EMBEDDED_MNIST_SHA256
    assert load_dataset("mnist-small").x_train.shape == (10000, 28, 28)
    licence = (EMBEDDED.parent / "MNIST_LICENSE.txt").read_text(encoding="utf-8")
    for needed in ("Yann LeCun", "Corinna Cortes", "CC BY-SA 3.0",
                   "https://creativecommons.org/licenses/by-sa/3.0/", "derived work",
                   "scripts/build_embedded_mnist.py", "first 1,000"):
        assert needed in licence, needed


def test_embedded_mnist_refuses_a_file_with_the_wrong_sha256(monkeypatch):
    monkeypatch.setattr(mnist, "EMBEDDED_MNIST_SHA256", "0" * 64)
    with one_line(ChecksumError, "mnist_subset.npz: SHA256 checksum mismatch.*build_embedded_mnist"):
        load_embedded_mnist()
    assert load_embedded_mnist(verify=False).x_test.shape == (2000, 28, 28)


def test_the_npz_writer_is_byte_reproducible_and_loads_with_numpy(tmp_path, rng):
    script = build_script()
    arrays = {"x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), "y": np.arange(5)}
    script.write_npz_reproducibly(tmp_path / "a.npz", arrays)
    script.write_npz_reproducibly(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temporaries
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    with np.load(tmp_path / "a.npz") as npz:
        assert all((npz[k] == v).all() for k, v in arrays.items())


def test_build_script_finds_mnist_through_the_data_root(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BBITS_REF_DATA", str(tmp_path / "empty"))
    assert build_script().main(["--out", str(tmp_path / "out.npz")]) == 2
    assert "not under" in capsys.readouterr().err and not (tmp_path / "out.npz").exists()


# --------------------------------------------------------------------------- the real MNIST

@pytest.fixture(scope="module")
def real_mnist():
    return load_mnist(REAL_MNIST, verify=True)


@needs_real_mnist
def test_full_mnist_loads_with_verified_checksums(real_mnist):
    assert real_mnist.x_train.shape == (60000, 28, 28) and real_mnist.x_test.shape == (10000, 28, 28)
    assert real_mnist.y_train[:3].tolist() == [5, 0, 4]  # the well-known first training labels
    assert real_mnist.y_test[:3].tolist() == [7, 2, 1]
    assert np.bincount(real_mnist.y_train).tolist()[:2] == [5923, 6742]
    # The pinned SHA-256s and the published MD5s describe the same files.
    for stem, *_ in mnist.MNIST_FILES.values():
        path = mnist._mnist_file(REAL_MNIST, stem)
        content = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        assert hashlib.md5(content).hexdigest() == mnist.MNIST_MD5[stem]
        assert hashlib.sha256(content).hexdigest() == mnist.MNIST_SHA256[stem]


@needs_real_mnist
def test_embedded_subset_is_the_first_examples_of_each_class(real_mnist):
    embedded = load_embedded_mnist()
    with np.load(EMBEDDED) as npz:
        train_index, test_index = npz["train_index"], npz["test_index"]
    assert (train_index == first_per_class(real_mnist.y_train, 1000)).all()
    assert (test_index == first_per_class(real_mnist.y_test, 200)).all()
    assert (embedded.x_train == real_mnist.x_train[train_index]).all()
    assert (embedded.y_test == real_mnist.y_test[test_index]).all()
    # load_dataset(small=True) on the full set, found through the data root, gives exactly the
    # embedded images.
    small = load_dataset("mnist", small=True)
    assert (small.x_train == embedded.x_train).all() and (small.y_test == embedded.y_test).all()


@needs_real_mnist
def test_build_script_reproduces_the_embedded_file(tmp_path):
    script = build_script()
    assert script.main(["--out", str(tmp_path / "subset.npz")]) == 0
    assert (tmp_path / "subset.npz").read_bytes() == EMBEDDED.read_bytes()


# --------------------------------------------------------------------------- IDX loader

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_mnist_reads_idx_files(tmp_path, mnist_arrays, gz):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays, gz=gz)
    ds = load_mnist(tmp_path, checksums=checksums)
    for role in ("x_train", "y_train", "x_test", "y_test"):
        assert (getattr(ds, role) == mnist_arrays[role]).all()
    assert ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.uint8
    # The pinned SHA-256s do not match these fixture files.
    with one_line(ChecksumError, "train-images-idx3-ubyte.*SHA256 checksum mismatch.*--download"):
        load_mnist(tmp_path)
    assert load_mnist(tmp_path, verify=False).x_test.shape == (20, 28, 28)


def test_gzip_is_recognised_by_content_not_by_name(tmp_path, mnist_arrays):
    content = fx.idx_bytes(mnist_arrays["y_test"])
    (tmp_path / "labels.gz").write_bytes(content)                     # raw, named .gz
    (tmp_path / "labels").write_bytes(gzip.compress(content))         # gzip, no suffix
    for name in ("labels.gz", "labels"):
        assert (read_idx(tmp_path / name, mnist.LABELS_MAGIC) == mnist_arrays["y_test"]).all()


def test_wrong_checksum_is_reported_with_both_values(tmp_path, mnist_arrays):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays)
    bad = dict(checksums, **{"t10k-labels-idx1-ubyte": "f" * 32})
    with one_line(ChecksumError, f"t10k-labels.*MD5 checksum mismatch: expected f{{32}}, got "
                                 f"{checksums['t10k-labels-idx1-ubyte']}"):
        load_mnist(tmp_path, checksums=bad)
    sha = hashlib.sha256(fx.idx_bytes(mnist_arrays["y_test"])).hexdigest()
    assert load_mnist(tmp_path, checksums=dict(checksums, **{"t10k-labels-idx1-ubyte": sha}))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_idx_file_is_a_clear_error(tmp_path, mnist_arrays, gz):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    content = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(content[:len(content) // 2])
    match = ("expected a gzip-compressed IDX magic 2051.*found a damaged or truncated gzip "
             "stream" if gz else
             r"expected IDX magic 2051 \(images, N×28×28 uint8, N ≤ 60000\).*announcing shape "
             r"\(30, 28, 28\): 23536 bytes, but the file has 11768 bytes; it is truncated")
    with one_line(DataFileError, f"{name}: {match}.*--download.*BBITS_REF_DATA"):
        load_mnist(tmp_path, checksums=checksums)


def test_idx_file_with_extra_or_missing_bytes(tmp_path, mnist_arrays):
    content = fx.idx_bytes(mnist_arrays["y_test"])
    fx.write_file(tmp_path / "extra", content + b"\0")
    with one_line(DataFileError, r"28 bytes, but the file has 29 bytes; it is too long"):
        read_idx(tmp_path / "extra", mnist.LABELS_MAGIC)
    fx.write_file(tmp_path / "extra.gz", content + b"\0")
    with one_line(DataFileError, r"announces \(20,\) and so 28 bytes, but the content has more"):
        read_idx(tmp_path / "extra.gz", mnist.LABELS_MAGIC)
    fx.write_file(tmp_path / "short.gz", content[:-3])
    with one_line(DataFileError, r"but the content has only 25 bytes"):
        read_idx(tmp_path / "short.gz", mnist.LABELS_MAGIC)
    fx.write_file(tmp_path / "short", content[:6])
    with one_line(DataFileError, "shorter than the 8-byte header"):
        read_idx(tmp_path / "short", mnist.LABELS_MAGIC)
    fx.write_file(tmp_path / "empty", b"")
    with one_line(DataFileError, "found 0 bytes, too short for an IDX header"):
        read_idx(tmp_path / "empty", mnist.LABELS_MAGIC)


def test_wrong_magic_numbers(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path, mnist_arrays, gz=False)
    # Swap the training images and labels: each file now has the other's magic number.
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    with one_line(DataFileError, "train-images-idx3-ubyte: expected IDX magic 2051.*found magic "
                                 "number 2049 .an MNIST labels file.; check the file names"):
        load_mnist(tmp_path, verify=False)
    fx.write_file(tmp_path / "junk", b"PK\x03\x04" + bytes(100))
    with one_line(DataFileError, "not an MNIST IDX file"):
        read_idx(tmp_path / "junk", mnist.IMAGES_MAGIC)


@pytest.mark.parametrize("shape, match", [
    ((60001, 28, 28), "more than 60000 items"),
    ((10, 32, 32), "items of another shape"),
    ((2**32 - 1, 28, 28), "more than 60000 items"),
])
def test_header_claims_are_checked_before_anything_is_allocated(tmp_path, shape, match):
    header = fx.idx_bytes(np.zeros((0, 28, 28), np.uint8))[:4] + b"".join(
        s.to_bytes(4, "big") for s in shape)
    for name, content in (("raw", header + bytes(100)), ("gz", gzip.compress(header + bytes(100)))):
        (tmp_path / name).write_bytes(content)
        tracemalloc.start()
        try:
            with one_line(DataFileError, rf"{name}: expected IDX magic 2051.*{match}"):
                read_idx(tmp_path / name, mnist.IMAGES_MAGIC, item_shape=(28, 28), max_items=60000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20


def test_absurd_sizes_without_limits_and_gzip_bounds(tmp_path):
    huge = b"\x00\x00\x08\x03" + (2**32 - 1).to_bytes(4, "big") * 3
    (tmp_path / "huge").write_bytes(huge)
    with one_line(DataFileError, "more than the 1073741824-byte limit"):
        read_idx(tmp_path / "huge", mnist.IMAGES_MAGIC)
    # 40 MB announced by a 100-byte gzip file: more than deflate can expand, refused unread.
    claim = b"\x00\x00\x08\x03" + b"".join(s.to_bytes(4, "big") for s in (50000, 28, 28))
    (tmp_path / "bomb").write_bytes(gzip.compress(claim + bytes(10)))
    tracemalloc.start()
    try:
        with one_line(DataFileError, "more than a [0-9]+-byte gzip file can hold"):
            read_idx(tmp_path / "bomb", mnist.IMAGES_MAGIC, item_shape=(28, 28))
        assert tracemalloc.get_traced_memory()[1] < 2**20
    finally:
        tracemalloc.stop()
    # A gzip stream that decompresses to less than it announces.
    claim = b"\x00\x00\x08\x03" + b"".join(s.to_bytes(4, "big") for s in (10, 28, 28))
    (tmp_path / "short").write_bytes(gzip.compress(claim + bytes(1000)))
    with one_line(DataFileError, r"the content has only 1016 bytes"):
        read_idx(tmp_path / "short", mnist.IMAGES_MAGIC, item_shape=(28, 28))


def test_unreadable_file_is_a_data_error(tmp_path):
    (tmp_path / "folder").mkdir()
    with one_line(DataFileError, "folder: cannot be read"):
        read_idx(tmp_path / "folder", mnist.LABELS_MAGIC)


def test_mnist_files_that_do_not_belong_together(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, y_test=mnist_arrays["y_test"][:-1]))
    with one_line(DataFileError, "t10k-labels-idx1-ubyte.gz: expected one label per image of "
                                 r"t10k-images-idx3-ubyte.gz \(20 images\), found 19 labels"):
        load_mnist(tmp_path, verify=False)
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, y_test=mnist_arrays["y_test"] + 5))
    with one_line(DataFileError, "expected digits 0..9, found a label 14"):
        load_mnist(tmp_path, verify=False)
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, x_test=np.zeros((20, 32, 32), np.uint8)))
    with one_line(DataFileError, r"t10k-images-idx3-ubyte.gz: .*shape \(20, 32, 32\): items of "
                                 "another shape"):
        load_mnist(tmp_path, verify=False)


def test_missing_mnist_files_are_named_with_the_folders_searched(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path / "mnist", mnist_arrays)
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with one_line(DataNotFoundError, r"MNIST files not found: .*mnist \(missing "
                                     r"t10k-images-idx3-ubyte\).*--download.*--data-dir.*"
                                     "BBITS_REF_DATA"):
        load_mnist(tmp_path / "mnist", verify=False)
    with one_line(DataNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    for needed in (f"{tmp_path} (missing all four files)",
                   f"{tmp_path / 'mnist'} (missing t10k-images-idx3-ubyte)",
                   "train-labels-idx1-ubyte[.gz]", "--download", "--data-dir", "BBITS_REF_DATA",
                   "mnist-small"):
        assert needed in message, needed


# --------------------------------------------------------------------------- CIFAR-10 loader

def expected_cifar(cifar):
    x_train = np.concatenate([cifar[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = np.concatenate([cifar[f"data_batch_{i}"][1] for i in range(1, 6)])
    return x_train.reshape(-1, 3, 32, 32), y_train


def check_cifar(ds, cifar):
    x_train, y_train = expected_cifar(cifar)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert (ds.x_train == x_train).all() and (ds.y_train == y_train).all()
    assert ds.y_train.dtype == np.int64
    assert (ds.x_test == cifar["test_batch"][0].reshape(-1, 3, 32, 32)).all()
    assert ds.classes == fx.CIFAR_NAMES
    # Channel-major rows: the first 1024 values of a row are the red plane.
    assert (ds.x_test[0, 0].ravel() == cifar["test_batch"][0][0, :1024]).all()


@pytest.mark.parametrize("style", fx.CIFAR_STYLES)
def test_genuine_batches_at_every_pickle_protocol(tmp_path, cifar, style):
    files = fx.cifar_files(cifar, style)
    check_cifar(load_cifar10(fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)), cifar)


@pytest.mark.parametrize("layout", ["folder", "parent", "tar", "tar-in-dir", "plain-tar"])
def test_load_cifar10_from_every_layout(tmp_path, cifar, layout):
    files = fx.cifar_files(cifar, "py2")
    if layout == "folder":
        path = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    elif layout == "parent":
        fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
        path = tmp_path
    else:
        archive = tmp_path / "cifar-10-python.tar.gz"
        md5 = fx.write_cifar_tar(archive, files, extra={"cifar-10-batches-py/readme.html": b"<h/>"})
        if layout == "plain-tar":  # an uncompressed tar, recognised by content
            archive.write_bytes(gzip.decompress(archive.read_bytes()))
            md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        path = archive if layout in ("tar", "plain-tar") else tmp_path
        check_cifar(load_cifar10(path, checksum=md5), cifar)
    check_cifar(load_cifar10(path, verify=False), cifar)


def test_fixtures_are_in_the_genuine_formats(cifar):
    raw = fx.cifar_files(cifar, "py2")["data_batch_1"]
    assert raw.startswith(b"\x80\x02}") and b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    assert b"_codecs" not in raw
    assert b"cnumpy\ndtype\n" in raw and b"u1" in raw and b"K\x00K\x01\x87" in raw  # (0, 1)
    assert set(pickle.loads(raw, encoding="latin1")) == {"batch_label", "labels", "data",
                                                         "filenames"}
    assert b"S'data'\n" in fx.cifar_files(cifar, "py2-p0")["data_batch_1"]
    assert b"c_codecs\nencode\n" in fx.cifar_files(cifar, "py3-p2")["data_batch_1"]
    assert b"numpy._core.numeric" in fx.cifar_files(cifar, "py3-p5")["data_batch_1"]
    p5 = fx.cifar_files(cifar, "py3-p5-numpy1")["data_batch_1"]
    assert b"numpy.core.numeric" in p5 and b"_frombuffer" in p5
    assert b"numpy._core" not in fx.cifar_files(cifar, "py3-p4-numpy1")["data_batch_1"]


@pytest.mark.parametrize("payload", ["os.system", "builtins.open", "eval, protocol 0",
                                     "nested in labels"])
@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_malicious_pickle_raises_and_runs_nothing(tmp_path, cifar, payload, layout):
    marker = tmp_path / "pwned"
    files = fx.cifar_files(cifar, "py2",
                           overrides={"data_batch_1": fx.malicious_pickles(marker)[payload]})
    if layout == "folder":
        path = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    else:
        path = tmp_path / "c.tar.gz"
        fx.write_cifar_tar(path, files)
    refused = {"os.system": "(posix|os).system", "builtins.open": "(builtins|io).open",
               "eval, protocol 0": "__builtin__.eval", "nested in labels": "(posix|os).mkdir"}
    with one_line(UnsafePickleError, f"data_batch_1: refusing to load the Python global "
                                     f"{refused[payload]}: .*not an original CIFAR-10.*nothing "
                                     "was run"):
        load_cifar10(path, verify=False)
    assert not marker.exists()


def test_a_plausible_but_unneeded_numpy_global_is_refused(tmp_path, cifar):
    raw = fx.cifar_files(cifar, "py3-p2")["test_batch"].replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\nscalar\n")
    files = fx.cifar_files(cifar, "py3-p2", overrides={"test_batch": raw})
    folder = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    with one_line(UnsafePickleError, f"{folder / 'test_batch'}: refusing to load the Python global "
                                     "numpy.core.multiarray.scalar"):
        load_cifar10(folder)


@pytest.mark.parametrize("name", list(fx.hostile_pickles()))
def test_pathological_pickles_keep_memory_bounded(tmp_path, cifar, name):
    raw, match = fx.hostile_pickles()[name]
    files = fx.cifar_files(cifar, "py2", overrides={"data_batch_2": raw})
    folder = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    tracemalloc.start()
    try:
        with one_line(DataFileError, f"data_batch_2: .*{match}"):
            load_cifar10(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20


def test_pickles_with_too_many_opcodes_are_refused(tmp_path, cifar, monkeypatch):
    files = fx.cifar_files(cifar, "py3-p4")
    folder = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    ops = sum(1 for _ in __import__("pickletools").genops(files["data_batch_1"]))
    monkeypatch.setattr(cifar10, "MAX_PICKLE_OPCODES", ops - 1)
    with one_line(DataFileError, f"data_batch_1: .*more than {ops - 1}"):
        load_cifar10(folder)
    monkeypatch.setattr(cifar10, "MAX_PICKLE_OPCODES", ops + 100)  # test_batch has more rows
    check_cifar(load_cifar10(folder), cifar)


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "cifar-10-batches-py/../../evil"])
def test_tar_with_unsafe_member_names_is_rejected(tmp_path, cifar, name):
    archive = tmp_path / "c.tar.gz"
    fx.write_cifar_tar(archive, fx.cifar_files(cifar, "py2"), extra={name: b"x"})
    with one_line(DataFileError, "unsafe member name"):
        load_cifar10(archive, verify=False)
    assert not (tmp_path.parent / "evil").exists()


def test_archive_bounds(tmp_path, cifar, monkeypatch):
    files = fx.cifar_files(cifar, "py2")
    archive = tmp_path / "c.tar.gz"
    fx.write_cifar_tar(archive, files, extra={f"junk/{i}": b"" for i in range(70)})
    with one_line(DataFileError, "more than 64 members"):
        load_cifar10(archive, verify=False)
    fx.write_cifar_tar(archive, files)
    monkeypatch.setattr(cifar10, "MAX_PICKLE_BYTES", 1000)
    with one_line(DataFileError, r"c.tar.gz:cifar-10-batches-py/data_batch_1: expected at most "
                                 "1000 bytes, the archive announces"):
        load_cifar10(archive, verify=False)
    monkeypatch.setattr(cifar10, "MAX_PICKLE_BYTES", 2**20)
    monkeypatch.setattr(cifar10, "MAX_ARCHIVE_BYTES", 50_000)  # as if it unpacked to gigabytes
    with one_line(DataFileError, "unpacks to more than 50000 bytes"):
        load_cifar10(archive, verify=False)
    # A member whose header claims 2 GiB, with no data behind it: refused before reading.
    with tarfile.open(tmp_path / "claim.tar", "w") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = 2**31
        tar.addfile(info)
    with one_line(DataFileError, f"announces {2**31}"):
        load_cifar10(tmp_path / "claim.tar", verify=False)


def test_cifar_archive_checksum(tmp_path, cifar):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = fx.write_cifar_tar(archive, fx.cifar_files(cifar, "py2"))
    with one_line(ChecksumError, f"MD5 checksum mismatch: expected {cifar10.CIFAR10_MD5}, "
                                 f"got {md5}.*verify=False"):
        load_cifar10(archive)
    assert load_cifar10(archive, checksum=md5).x_train.shape == (30, 3, 32, 32)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert load_cifar10(archive, checksum=sha).x_test.shape == (7, 3, 32, 32)
    archive.write_bytes(archive.read_bytes()[:300])
    with one_line(DataFileError, "expected a tar archive .*found an unreadable one"):
        load_cifar10(archive, verify=False)


@pytest.mark.parametrize("change, match", [
    ({"data": np.zeros((6, 3000), np.uint8)},
     r"'data', a uint8 array of shape \(N, 3072\) with N ≤ 10000, found an array of dtype uint8 "
     r"and shape \(6, 3000\)"),
    ({"data": np.zeros((6, 3072), np.float32)},
     r"found an array of dtype float32 and shape \(6, 3072\)"),
    ({"data": [[0] * 3072] * 6}, "found a list of length 6"),
    ({"data": None}, "found a NoneType"),
    ({"labels": [0] * 5}, r"expected 'labels', 6 integers.*found an array of dtype int64 and shape \(5,\)"),
    ({"labels": [[0, 1]] * 5 + [[0]]}, "expected 'labels', 6 integers.*found a list of length 6"),
    ({"labels": ["cat"] * 6}, "expected 'labels', 6 integers"),
    ({"labels": [2**80] * 6}, "expected 'labels', 6 integers"),
    ({"labels": [10] * 6}, r"expected labels in 0..9, found labels in \[10, 10\]"),
    ({"labels": [-1] * 6}, r"expected labels in 0..9, found labels in \[-1, -1\]"),
])
def test_bad_cifar_batches(tmp_path, cifar, change, match):
    data_, labels = cifar["data_batch_3"]
    batch = {"data": data_, "labels": labels, **change}
    files = fx.cifar_files(cifar, "str-keys", overrides={"data_batch_3": pickle.dumps(batch)})
    with one_line(DataFileError, "data_batch_3: .*" + match):
        load_cifar10(fx.write_cifar_dir(tmp_path, files), verify=False)


@pytest.mark.parametrize("content, match", [
    (pickle.dumps([1, 2]), "expected a pickled dict, found a list of length 2"),
    (pickle.dumps({"label_names": ["a"] * 10**5}),
     "expected 'label_names', a list of 10 short strings, found a list of length 100000"),
    (pickle.dumps({"label_names": None}), "found a NoneType"),
])
def test_bad_meta(tmp_path, cifar, content, match):
    files = fx.cifar_files(cifar, "py3-p2", overrides={"batches.meta": content})
    with one_line(DataFileError, "batches.meta: .*" + match) as info:
        load_cifar10(fx.write_cifar_dir(tmp_path, files))
    assert len(str(info.value)) < 500


def test_incomplete_or_damaged_cifar(tmp_path, cifar):
    files = fx.cifar_files(cifar, "py2")
    directory = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    (directory / "data_batch_4").write_bytes(files["data_batch_4"][:100])
    with one_line(DataFileError, "data_batch_4: expected a CIFAR-10 pickle, found an unreadable"):
        load_cifar10(directory)
    (directory / "data_batch_4").unlink()
    with one_line(DataFileError, "expected all of data_batch_1.*missing data_batch_4"):
        load_cifar10(directory)
    with one_line(DataNotFoundError, "CIFAR-10 not found at .*nowhere.*--download"):
        load_cifar10(tmp_path / "nowhere")
    with one_line(DataNotFoundError, r"CIFAR-10 not found: expected cifar-10-python.tar.gz or "
                                     r"cifar-10-batches-py/ in .*elsewhere.*BBITS_REF_DATA"):
        load_dataset("cifar10", data_dir=tmp_path / "elsewhere")


# --------------------------------------------------------------------------- downloads

def mnist_gz_files(directory: Path, arrays: dict) -> tuple[dict[str, bytes], dict[str, str]]:
    checksums = fx.write_mnist_dir(directory, arrays, gz=True)
    sha256 = {stem: hashlib.sha256(fx.idx_bytes(arrays[role])).hexdigest()
              for role, stem in fx.MNIST_STEMS.items()}
    assert sha256.keys() == checksums.keys()
    return {p.name: p.read_bytes() for p in directory.iterdir()}, sha256


def test_download_mnist_falls_back_to_the_next_mirror_and_keeps_valid_files(tmp_path,
                                                                           mnist_arrays):
    files, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    routes = {f"/good/{name}": content for name, content in files.items()}
    with fx.http_server(routes) as server:
        mirrors = [f"{server.url}/missing/", f"{server.url}/good"]
        target = mnist.download_mnist(tmp_path / "cache", mirrors=mirrors, checksums=checksums)
        assert target == tmp_path / "cache" / "mnist"
        assert sorted(server.hits) == sorted([f"/missing/{n}" for n in files] +
                                             [f"/good/{n}" for n in files])
        assert (load_mnist(target, checksums=checksums).x_train == mnist_arrays["x_train"]).all()
        assert sorted(p.name for p in target.iterdir()) == sorted(files)  # no temporary files
        assert all((target / n).stat().st_mode & 0o777 == 0o644 for n in files)
        hits = len(server.hits)
        mnist.download_mnist(tmp_path / "cache", mirrors=mirrors, checksums=checksums)
        assert len(server.hits) == hits  # everything there and valid: no request


def test_download_never_overwrites_a_file_it_did_not_write(tmp_path, mnist_arrays):
    files, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    target = tmp_path / "cache" / "mnist"
    target.mkdir(parents=True)
    users = target / "t10k-labels-idx1-ubyte"  # the user's own (uncompressed, different) file
    users.write_bytes(fx.idx_bytes(np.zeros(3, np.uint8)))
    with fx.http_server({f"/m/{n}": c for n, c in files.items()}) as server:
        with one_line(DataFileError, f"{users} is already there but is not the original file "
                                     r"\(.*SHA256 checksum mismatch.*\); bbits_ref does not "
                                     "overwrite files it did not write"):
            mnist.download_mnist(tmp_path / "cache", mirrors=[f"{server.url}/m"],
                                 checksums=checksums)
        assert "/m/t10k-labels-idx1-ubyte.gz" not in server.hits
    assert users.read_bytes() == fx.idx_bytes(np.zeros(3, np.uint8))
    assert not (target / "t10k-labels-idx1-ubyte.gz").exists()


def test_a_file_appearing_during_the_download_is_kept(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"downloaded")
    dest = tmp_path / "cache" / "f"

    def check(path):  # the user copies their own file in while the download runs
        dest.write_bytes(b"the user's")

    with one_line(DataFileError, "appeared while it was being downloaded"):
        download.fetch([src.as_uri() + "/f"], dest, check, max_bytes=100)
    assert dest.read_bytes() == b"the user's"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f"]


def test_download_leaves_nothing_on_truncation_bad_checksum_or_oversize(tmp_path, mnist_arrays,
                                                                        monkeypatch):
    files, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    routes = {f"/cut/{name}": (content, "truncate") for name, content in files.items()}
    routes.update({f"/bad/{name}": gzip.compress(b"other content") for name in files})
    routes.update({f"/big/{name}": content + bytes(5000) for name, content in files.items()})
    cache = tmp_path / "cache"
    with fx.http_server(routes) as server:
        for mirror, match in (("cut", r"truncated download: received \d+ of \d+ bytes"),
                              ("bad", "found magic number"),
                              ("big", "announces [0-9]+ bytes, more than the 3000")):
            monkeypatch.setattr(mnist, "MAX_GZ_BYTES", 3000 if mirror == "big" else 2**20)
            with one_line(DownloadError, f"could not download train-images-idx3-ubyte.gz into "
                                         f".*{mirror}/train-images.*{match}"):
                mnist.download_mnist(cache, mirrors=[f"{server.url}/{mirror}/"],
                                     checksums=checksums)
            assert not cache.exists()  # not even the folders it made
        # A truncated first mirror still falls back to a good one.
        monkeypatch.setattr(mnist, "MAX_GZ_BYTES", 2**20)
        routes.update({f"/good/{name}": content for name, content in files.items()})
        mnist.download_mnist(cache, mirrors=[f"{server.url}/cut/", f"{server.url}/good/"],
                             checksums=checksums)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(files)


def test_download_checks_the_checksum_after_the_format(tmp_path, mnist_arrays):
    _, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    wrong = dict(checksums, **{"train-labels-idx1-ubyte": "0" * 64})
    with one_line(DownloadError, "train-labels-idx1-ubyte.gz.*SHA256 checksum mismatch: "
                                 "expected 0{64}"):
        mnist.download_mnist(tmp_path / "c", mirrors=[(tmp_path / "src").as_uri()],
                             checksums=wrong)
    # The files before it were valid and stay; the bad one left nothing.
    assert sorted(p.name for p in (tmp_path / "c" / "mnist").iterdir()) == [
        "train-images-idx3-ubyte.gz"]


def test_download_from_file_urls_and_load_dataset(tmp_path, mnist_arrays, monkeypatch):
    src = tmp_path / "src"
    _, checksums = mnist_gz_files(src, mnist_arrays)
    broken = tmp_path / "broken"
    broken.mkdir()
    monkeypatch.setattr(mnist, "DEFAULT_MNIST_MIRRORS", (broken.as_uri(), src.as_uri()))
    monkeypatch.setattr(mnist, "MNIST_SHA256", checksums)
    root = tmp_path / "root"
    with one_line(DataNotFoundError, r"MNIST not found.*--download"):
        load_dataset("mnist", data_dir=root)
    ds = load_dataset("mnist", data_dir=root, download=True)
    assert (ds.x_test == mnist_arrays["x_test"]).all()
    assert (root / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    # The environment variable chooses the data root when data_dir is not given.
    monkeypatch.setenv("BBITS_REF_DATA", str(root))
    assert data_root() == root
    assert (load_dataset("mnist").y_train == mnist_arrays["y_train"]).all()
    # And without it, the user cache (here under a fake XDG_CACHE_HOME).
    monkeypatch.delenv("BBITS_REF_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    load_dataset("mnist", download=True)
    assert find_mnist(tmp_path / "xdg" / "bbits_ref") == tmp_path / "xdg" / "bbits_ref" / "mnist"


def test_download_cifar10_and_load_dataset(tmp_path, cifar, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    md5 = fx.write_cifar_tar(src / "cifar-10-python.tar.gz", fx.cifar_files(cifar, "py3-p2"))
    with one_line(DownloadError, "MD5 checksum mismatch"):
        cifar10.download_cifar10(tmp_path / "root", mirrors=[src.as_uri()])
    assert not (tmp_path / "root").exists()
    path = cifar10.download_cifar10(tmp_path / "root", mirrors=[src.as_uri()], checksum=md5)
    assert path == tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5)
    check_cifar(load_dataset("cifar10", data_dir=tmp_path / "root"), cifar)
    # download=True with the file already there: kept, no mirror needed.
    monkeypatch.setattr(cifar10, "DEFAULT_CIFAR10_MIRRORS", ("http://127.0.0.1:9/",))
    check_cifar(load_dataset("cifar10", data_dir=tmp_path / "root", download=True), cifar)


def test_load_dataset_bad_name_and_small(tmp_path, rng):
    with pytest.raises(bbits_ref._errors.UsageError,
                       match="unknown data set 'imagenet'; choose one of mnist-small"):
        load_dataset("imagenet")
    arrays = fx.make_mnist(rng, n_train=60, n_test=30)
    fx.write_mnist_dir(tmp_path / "mnist", arrays, gz=False)
    ds = load_mnist(tmp_path / "mnist", verify=False)
    small = ds.subset(2, 1)
    assert np.bincount(small.y_train).tolist() == [2] * 10
    assert np.bincount(small.y_test).tolist() == [1] * 10


def test_first_per_class_keeps_file_order():
    labels = np.array([3, 1, 3, 3, 1, 0, 1, 3])
    assert first_per_class(labels, 2).tolist() == [0, 1, 2, 4, 5]
    assert first_per_class(labels, 0).tolist() == []
    with pytest.raises(ValueError, match="1-D integer array"):
        first_per_class(labels.astype(float), 2)
    with pytest.raises(ValueError, match="non-negative int"):
        first_per_class(labels, -1)


def test_dataset_checks_its_arrays():
    x = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match="3 train images but 2 labels"):
        Dataset(x, np.zeros(2, np.int64), x, np.zeros(3, np.int64), "t", tuple("01"))
    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 2\), found \[0, 5\]"):
        Dataset(x, np.zeros(3, np.int64), x, np.array([0, 1, 5]), "t", tuple("01"))
    assert "train (3, 28, 28) uint8" in repr(Dataset(x, np.zeros(3, int), x, np.zeros(3, int),
                                                     "t", "01"))


# --------------------------------------------------------------------------- minibatches

@pytest.mark.parametrize("n, batch_size, drop_last", [(10, 3, False), (10, 3, True), (9, 3, False),
                                                      (5, 8, False)])
def test_batches_cover_every_example_once(n, batch_size, drop_last):
    x, y = np.arange(n) * 10, np.arange(n)
    for rng in (None, np.random.default_rng(1)):
        got = list(batches(x, y, batch_size, rng=rng, drop_last=drop_last))
        sizes = [len(b) for b, _ in got]
        full = n // batch_size
        assert sizes[:full] == [batch_size] * full
        assert sizes[full:] == ([] if drop_last or n % batch_size == 0 else [n % batch_size])
        seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
        assert all((xb == 10 * yb).all() for xb, yb in got)  # x and y stay paired
        if drop_last:
            assert len(np.unique(seen)) == len(seen) == full * batch_size
        else:
            assert sorted(seen) == list(range(n))
        if rng is None:
            assert seen.tolist() == sorted(seen)


def test_batches_shuffle_is_reproducible_from_the_seed():
    x = np.arange(100)

    def epoch(seed):
        return np.concatenate([b for b, _ in batches(x, x, 16, rng=np.random.default_rng(seed))])

    assert (epoch(3) == epoch(3)).all()
    assert not (epoch(3) == epoch(4)).all()
    assert not (epoch(3) == x).all()


def test_batches_bad_arguments_fail_at_the_call():
    x = np.arange(4)
    with pytest.raises(ValueError, match="same length, got 4 and 3"):
        batches(x, x[:3], 2)
    with pytest.raises(ValueError, match="positive int, got 0"):
        batches(x, x, 0)
    with pytest.raises(TypeError, match="numpy.random.Generator.*got int"):
        batches(x, x, 2, rng=42)


# --------------------------------------------------------------------------- normalisation

def test_normalize_mnist_is_to_tensor():
    images = np.array([[[0, 128], [255, 1]]], np.uint8).repeat(14, 1).repeat(14, 2)
    out = normalize_mnist(images)
    assert out.shape == (1, 1, 28, 28) and out.dtype == np.float32
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 14, 0] == 1
    assert out[0, 0, 0, 14] == np.float32(128) / np.float32(255)
    assert np.allclose(out, images[:, None] / 255.0, rtol=1e-7, atol=0)
    assert (normalize_mnist(images[:, None]) == out).all()
    with pytest.raises(TypeError, match="raw uint8 pixels.*got float32"):
        normalize_mnist(out)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 28, 28\), got \(1, 1, 14, 28\)"):
        normalize_mnist(images[:, None, :14])


def test_normalize_cifar_per_channel():
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[1] = 255
    images[0, 1, 5, 7] = 51
    out = normalize_cifar(images)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    mean, std = np.array(CIFAR10_MEAN), np.array(CIFAR10_STD)
    assert np.allclose(out[0, :, 0, 0], -mean / std, rtol=1e-6)
    assert np.allclose(out[1, :, 3, 3], (1 - mean) / std, rtol=1e-6)
    assert np.isclose(out[0, 1, 5, 7], (0.2 - 0.4822) / 0.1994, rtol=1e-6)
    assert np.allclose(out[1, 2], (1 - 0.4465) / 0.2010, rtol=1e-6)  # channel order respected
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\), got \(2, 32, 32, 3\)"):
        normalize_cifar(images.transpose(0, 2, 3, 1))
    ds = Dataset(images, np.zeros(2, int), images, np.zeros(2, int), "cifar10", fx.CIFAR_NAMES)
    assert (ds.normalize(images) == out).all()


# --------------------------------------------------------------------------- augmentation

def augment_by_loop(images, shifts, flipped, padding=4):
    """An independent per-example reference: shift with zero fill, then flip."""
    out = np.zeros_like(images)
    height, width = images.shape[2:]
    for n, ((dy, dx), flip) in enumerate(zip(shifts, flipped)):
        padded = np.pad(images[n], ((0, 0), (padding, padding), (padding, padding)))
        crop = padded[:, padding + dy:padding + dy + height, padding + dx:padding + dx + width]
        out[n] = crop[:, :, ::-1] if flip else crop
    return out


def test_augment_cifar_matches_a_per_example_reference(rng):
    images = rng.integers(1, 256, (256, 3, 32, 32), dtype=np.uint8)  # no zeros: padding shows
    out, shifts, flipped = augment_cifar(images, np.random.default_rng(5), return_params=True)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert shifts.shape == (256, 2) and flipped.shape == (256,)
    assert shifts.min() == -4 and shifts.max() == 4  # all offsets in [-4, 4], extremes reached
    assert 0.3 < flipped.mean() < 0.7
    assert (out == augment_by_loop(images, shifts, flipped)).all()
    # Zero padding: a shift of 4 rows down leaves 4 black rows at the bottom.
    n = np.flatnonzero(shifts[:, 0] == 4)[0]
    assert (out[n, :, -4:] == 0).all() and (out[n, :, :-4] != 0).all(axis=1).any()


def test_augment_cifar_flip_and_identity(rng):
    images = rng.integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)
    out, shifts, flipped = augment_cifar(images, np.random.default_rng(0), return_params=True)
    still = (shifts == 0).all(axis=1)
    assert (still & flipped).any() and (still & ~flipped).any()
    assert (out[still & flipped] == images[still & flipped][..., ::-1]).all()
    assert (out[still & ~flipped] == images[still & ~flipped]).all()


def test_augment_cifar_is_reproducible_and_vectorised(rng):
    images = rng.integers(0, 256, (128, 3, 32, 32), dtype=np.uint8)
    a = augment_cifar(images, np.random.default_rng(7))
    assert (a == augment_cifar(images, np.random.default_rng(7))).all()
    assert not (a == augment_cifar(images, np.random.default_rng(8))).all()
    tree = ast.parse(inspect.getsource(augment_cifar).lstrip())
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While, ast.comprehension))]
    assert loops == [], "augment_cifar must not loop over examples"
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        augment_cifar(images, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got \(3, 32, 32\)"):
        augment_cifar(images[0], rng)
