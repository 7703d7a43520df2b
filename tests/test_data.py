"""Tests for bbits_ref.datasets.loaders: the embedded MNIST subset, the IDX and CIFAR-10 loaders, the
downloaders (against a local server and file:// URLs, never the internet), minibatches and the
spec §7.3 normalisation and augmentation."""
from __future__ import annotations

import ast
import gzip
import hashlib
import importlib.util
import inspect
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.datasets import loaders as data
from bbits_ref.datasets.loaders import (ChecksumError, DataFileError, Dataset, DownloadError,
                            UnsafePickleError, augment_cifar, batches, first_per_class,
                            load_cifar10, load_dataset, load_embedded_mnist, load_mnist,
                            normalize_cifar, normalize_mnist, read_idx)
import fixtures_data as fx

ROOT = Path(__file__).resolve().parents[1]
REAL_MNIST = ROOT.parent / "shared" / "data" / "mnist"  # where CI keeps the full MNIST
EMBEDDED = ROOT / "bbits_ref" / "datasets" / "embedded" / data.EMBEDDED_MNIST_FILE
needs_real_mnist = pytest.mark.skipif(not REAL_MNIST.is_dir(),
                                      reason=f"full MNIST not available at {REAL_MNIST}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mnist_arrays(rng):
    return fx.make_mnist(rng)


@pytest.fixture
def cifar(rng):
    return fx.make_cifar(rng)


def build_script():
    spec = importlib.util.spec_from_file_location("build_embedded_mnist",
                                                  ROOT / "scripts" / "build_embedded_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert hashlib.sha256(raw).hexdigest() == data.EMBEDDED_MNIST_SHA256
    assert load_dataset("mnist-small").x_train.shape == (10000, 28, 28)
    licence = (EMBEDDED.parent / "MNIST_LICENSE.txt").read_text(encoding="utf-8")
    for needed in ("Yann LeCun", "Corinna Cortes", "CC BY-SA 3.0",
                   "https://creativecommons.org/licenses/by-sa/3.0/", "derived work",
                   "scripts/build_embedded_mnist.py", "first 1,000"):
        assert needed in licence, needed


def test_embedded_mnist_refuses_a_file_with_the_wrong_sha256(monkeypatch):
    monkeypatch.setattr(data, "EMBEDDED_MNIST_SHA256", "0" * 64)
    with pytest.raises(ChecksumError, match="SHA256 checksum mismatch.*build_embedded_mnist"):
        load_embedded_mnist()
    assert load_embedded_mnist(verify=False).x_test.shape == (2000, 28, 28)


def test_the_npz_writer_is_byte_reproducible_and_loads_with_numpy(tmp_path, rng):
    script = build_script()
    arrays = {"x": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), "y": np.arange(5)}
    script.write_npz_reproducibly(tmp_path / "a.npz", arrays)
    script.write_npz_reproducibly(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    with np.load(tmp_path / "a.npz") as npz:
        assert all((npz[k] == v).all() for k, v in arrays.items())


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


@needs_real_mnist
def test_embedded_subset_is_the_first_examples_of_each_class(real_mnist):
    embedded = load_embedded_mnist()
    with np.load(EMBEDDED) as npz:
        train_index, test_index = npz["train_index"], npz["test_index"]
    assert (train_index == first_per_class(real_mnist.y_train, 1000)).all()
    assert (test_index == first_per_class(real_mnist.y_test, 200)).all()
    assert (embedded.x_train == real_mnist.x_train[train_index]).all()
    assert (embedded.y_test == real_mnist.y_test[test_index]).all()
    # load_dataset(small=True) on the full set gives exactly the embedded images.
    small = load_dataset("mnist", data_dir=REAL_MNIST.parent, small=True)
    assert (small.x_train == embedded.x_train).all() and (small.y_test == embedded.y_test).all()


@needs_real_mnist
def test_build_script_reproduces_the_embedded_arrays():
    arrays = build_script().build_subset(REAL_MNIST)
    with np.load(EMBEDDED) as npz:
        assert sorted(npz.files) == sorted(arrays)
        for key, value in arrays.items():
            assert npz[key].dtype == value.dtype and (npz[key] == value).all(), key


# --------------------------------------------------------------------------- IDX loader

@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_mnist_reads_idx_files(tmp_path, mnist_arrays, gz):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays, gz=gz)
    ds = load_mnist(tmp_path, checksums=checksums)
    for role in ("x_train", "y_train", "x_test", "y_test"):
        assert (getattr(ds, role) == mnist_arrays[role]).all()
    assert ds.y_train.dtype == np.int64 and ds.x_train.dtype == np.uint8
    # The published checksums do not match these fixture files.
    with pytest.raises(ChecksumError, match="MD5 checksum mismatch.*verify=False"):
        load_mnist(tmp_path)
    assert load_mnist(tmp_path, verify=False).x_test.shape == (20, 28, 28)


def test_wrong_checksum_is_reported_with_both_values(tmp_path, mnist_arrays):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays)
    bad = dict(checksums, **{"t10k-labels-idx1-ubyte": "f" * 32})
    with pytest.raises(ChecksumError, match=f"t10k-labels.*expected f{{32}}, got "
                                            f"{checksums['t10k-labels-idx1-ubyte']}"):
        load_mnist(tmp_path, checksums=bad)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_truncated_idx_file_is_a_clear_error(tmp_path, mnist_arrays, gz):
    checksums = fx.write_mnist_dir(tmp_path, mnist_arrays, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    content = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(content[:len(content) // 2])
    match = "gzip stream is damaged or truncated" if gz else "bytes, but the header announces"
    with pytest.raises(DataFileError, match=match):
        load_mnist(tmp_path, checksums=checksums)


def test_idx_file_with_extra_or_missing_bytes(tmp_path, mnist_arrays):
    content = fx.idx_bytes(mnist_arrays["y_test"])
    fx.write_file(tmp_path / "extra", content + b"\0")
    with pytest.raises(DataFileError, match=r"29 bytes, but the header announces \(20,\) and so 28 bytes"):
        read_idx(tmp_path / "extra", data.LABELS_MAGIC)
    fx.write_file(tmp_path / "short", content[:6])
    with pytest.raises(DataFileError, match="shorter than the 8-byte header"):
        read_idx(tmp_path / "short", data.LABELS_MAGIC)
    fx.write_file(tmp_path / "empty", b"")
    with pytest.raises(DataFileError, match="too short"):
        read_idx(tmp_path / "empty", data.LABELS_MAGIC)


def test_wrong_magic_numbers(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path, mnist_arrays, gz=False)
    # Swap the training images and labels: each file now has the other's magic number.
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    with pytest.raises(DataFileError, match="wrong magic number 2049 .expected 2051.*labels file"):
        load_mnist(tmp_path, verify=False)
    fx.write_file(tmp_path / "junk", b"\x1f\x8b\x08\x00" + bytes(100))
    with pytest.raises(DataFileError, match="not an MNIST IDX file"):
        read_idx(tmp_path / "junk", data.IMAGES_MAGIC)


def test_mnist_files_that_do_not_belong_together(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, y_test=mnist_arrays["y_test"][:-1]))
    with pytest.raises(DataFileError, match="20 images but 19 labels"):
        load_mnist(tmp_path, verify=False)
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, y_test=mnist_arrays["y_test"] + 5))
    with pytest.raises(DataFileError, match="digits 0..9, found 14"):
        load_mnist(tmp_path, verify=False)
    fx.write_mnist_dir(tmp_path, dict(mnist_arrays, x_test=np.zeros((20, 32, 32), np.uint8)))
    with pytest.raises(DataFileError, match="must be 28x28.*32x32"):
        load_mnist(tmp_path, verify=False)


def test_missing_mnist_file(tmp_path, mnist_arrays):
    fx.write_mnist_dir(tmp_path, mnist_arrays)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte \(or .*\.gz\) not found"):
        load_mnist(tmp_path, verify=False)


# --------------------------------------------------------------------------- CIFAR-10 loader

def expected_cifar(cifar):
    x_train = np.concatenate([cifar[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_train = np.concatenate([cifar[f"data_batch_{i}"][1] for i in range(1, 6)])
    return x_train.reshape(-1, 3, 32, 32), y_train


@pytest.mark.parametrize("style", ["py2", "bytes-keys", "str-keys"])
@pytest.mark.parametrize("layout", ["folder", "parent", "tar", "tar-in-dir"])
def test_load_cifar10_from_every_layout_and_pickle_style(tmp_path, cifar, style, layout):
    files = fx.cifar_files(cifar, style)
    if layout == "folder":
        path = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    elif layout == "parent":
        fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
        path = tmp_path
    else:
        archive = tmp_path / "cifar-10-python.tar.gz"
        fx.write_cifar_tar(archive, files, extra={"cifar-10-batches-py/readme.html": b"<html/>"})
        path = archive if layout == "tar" else tmp_path
    ds = load_cifar10(path, verify=False)
    x_train, y_train = expected_cifar(cifar)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert (ds.x_train == x_train).all() and (ds.y_train == y_train).all()
    assert ds.y_train.dtype == np.int64
    assert (ds.x_test == cifar["test_batch"][0].reshape(-1, 3, 32, 32)).all()
    assert ds.classes == fx.CIFAR_NAMES
    # Channel-major rows: the first 1024 values of a row are the red plane.
    assert (ds.x_test[0, 0].ravel() == cifar["test_batch"][0][0, :1024]).all()


def test_py2_fixture_really_uses_the_original_format(cifar):
    raw = fx.cifar_files(cifar, "py2")["data_batch_1"]
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    assert set(pickle.loads(raw, encoding="latin1")) == {"batch_label", "labels", "data",
                                                         "filenames"}


@pytest.mark.parametrize("payload", ["os.system", "builtins.open", "nested in labels"])
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
    with pytest.raises(UnsafePickleError, match="refusing to load .*not an original CIFAR-10"):
        load_cifar10(path, verify=False)
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert not marker.exists()


def test_pickles_needing_other_globals_are_refused(tmp_path, cifar):
    # Python 3's protocol 5 rebuilds arrays with numpy._core.numeric._frombuffer: not allowed.
    files = fx.cifar_files(cifar, "bytes-keys", overrides={
        "test_batch": pickle.dumps({b"data": cifar["test_batch"][0], b"labels": []}, protocol=5)})
    with pytest.raises(UnsafePickleError, match="_frombuffer"):
        load_cifar10(fx.write_cifar_dir(tmp_path, files), verify=False)


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "cifar-10-batches-py/../../evil"])
def test_tar_with_unsafe_member_names_is_rejected(tmp_path, cifar, name):
    archive = tmp_path / "c.tar.gz"
    fx.write_cifar_tar(archive, fx.cifar_files(cifar, "py2"), extra={name: b"x"})
    with pytest.raises(DataFileError, match="unsafe member name"):
        load_cifar10(archive, verify=False)
    assert not (tmp_path.parent / "evil").exists()


def test_cifar_archive_checksum(tmp_path, cifar, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    md5 = fx.write_cifar_tar(archive, fx.cifar_files(cifar, "py2"))
    with pytest.raises(ChecksumError, match=f"expected {data.CIFAR10_MD5}, got {md5}"):
        load_cifar10(archive)
    assert load_cifar10(archive, md5=md5).x_train.shape == (30, 3, 32, 32)
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DataFileError, match="not a readable tar archive"):
        load_cifar10(archive, verify=False)


@pytest.mark.parametrize("change, match", [
    ({"data": np.zeros((6, 3000), np.uint8)}, r"uint8 array of shape \(N, 3072\), got uint8 \(6, 3000\)"),
    ({"data": np.zeros((6, 3072), np.float32)}, "got float32"),
    ({"labels": [0] * 5}, r"expected 6 integer labels.*\(5,\)"),
    ({"labels": [10] * 6}, r"labels must lie in 0..9, found \[10, 10\]"),
])
def test_bad_cifar_batches(tmp_path, cifar, change, match):
    data_, labels = cifar["data_batch_3"]
    batch = {"data": data_, "labels": labels, **change}
    files = fx.cifar_files(cifar, "str-keys", overrides={"data_batch_3": pickle.dumps(batch)})
    with pytest.raises(DataFileError, match="data_batch_3.*" + match):
        load_cifar10(fx.write_cifar_dir(tmp_path, files), verify=False)


def test_incomplete_or_damaged_cifar(tmp_path, cifar):
    files = fx.cifar_files(cifar, "py2")
    directory = fx.write_cifar_dir(tmp_path / "cifar-10-batches-py", files)
    (directory / "data_batch_4").write_bytes(files["data_batch_4"][:100])
    with pytest.raises(DataFileError, match="data_batch_4: not a readable CIFAR-10 pickle"):
        load_cifar10(directory)
    (directory / "data_batch_4").unlink()
    with pytest.raises(DataFileError, match="missing CIFAR-10 file.*data_batch_4"):
        load_cifar10(directory)
    with pytest.raises(FileNotFoundError, match="CIFAR-10 not found"):
        load_cifar10(tmp_path / "nowhere")


# --------------------------------------------------------------------------- downloads

def mnist_gz_files(directory: Path, arrays: dict) -> tuple[dict[str, bytes], dict[str, str]]:
    checksums = fx.write_mnist_dir(directory, arrays, gz=True)
    return {p.name: p.read_bytes() for p in directory.iterdir()}, checksums


def test_download_mnist_falls_back_to_the_next_mirror_and_caches(tmp_path, mnist_arrays):
    files, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    routes = {f"/good/{name}": content for name, content in files.items()}
    with fx.http_server(routes) as server:
        mirrors = [f"{server.url}/missing/", f"{server.url}/good"]
        target = data.download_mnist(tmp_path / "cache", mirrors=mirrors, checksums=checksums)
        assert target == tmp_path / "cache" / "mnist"
        assert sorted(server.hits) == sorted([f"/missing/{n}" for n in files] +
                                             [f"/good/{n}" for n in files])
        assert (load_mnist(target, checksums=checksums).x_train == mnist_arrays["x_train"]).all()
        assert sorted(p.name for p in target.iterdir()) == sorted(files)  # no temporary files
        hits = len(server.hits)
        data.download_mnist(tmp_path / "cache", mirrors=mirrors, checksums=checksums)
        assert len(server.hits) == hits  # everything cached and valid: no request
        # A damaged cached file is downloaded again.
        (target / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
        data.download_mnist(tmp_path / "cache", mirrors=mirrors, checksums=checksums)
        assert server.hits[hits:] == ["/missing/t10k-labels-idx1-ubyte.gz",
                                      "/good/t10k-labels-idx1-ubyte.gz"]
        assert load_mnist(target, checksums=checksums).y_test.shape == (20,)


def test_download_leaves_no_partial_file_on_truncation_or_bad_checksum(tmp_path, mnist_arrays):
    files, checksums = mnist_gz_files(tmp_path / "src", mnist_arrays)
    routes = {f"/cut/{name}": (content, "truncate") for name, content in files.items()}
    routes.update({f"/bad/{name}": gzip.compress(b"other content") for name in files})
    cache = tmp_path / "cache"
    with fx.http_server(routes) as server:
        for mirror, match in (("cut", "truncated download: received"), ("bad", "MD5 checksum mismatch")):
            with pytest.raises(DownloadError, match=f"(?s)train-images.*{mirror}/.*{match}"):
                data.download_mnist(cache, mirrors=[f"{server.url}/{mirror}/"],
                                    checksums=checksums)
            assert list((cache / "mnist").iterdir()) == []
        # A truncated first mirror still falls back to a good one.
        routes.update({f"/good/{name}": content for name, content in files.items()})
        data.download_mnist(cache, mirrors=[f"{server.url}/cut/", f"{server.url}/good/"],
                            checksums=checksums)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(files)


def test_download_from_file_urls_and_load_dataset(tmp_path, mnist_arrays, monkeypatch):
    src = tmp_path / "src"
    _, checksums = mnist_gz_files(src, mnist_arrays)
    broken = tmp_path / "broken"
    broken.mkdir()
    monkeypatch.setattr(data, "DEFAULT_MNIST_MIRRORS", (broken.as_uri(), src.as_uri()))
    monkeypatch.setattr(data, "MNIST_MD5", checksums)
    monkeypatch.setattr(data.download_mnist, "__defaults__",
                        (None, data.DEFAULT_MNIST_MIRRORS, None, 60.0))
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError, match=r"(?s)mnist not found.*Looked in.*root.*--download"
                                                r".*BBITS_REF_DATA.*mnist-small"):
        load_dataset("mnist", data_dir=root)
    ds = load_dataset("mnist", data_dir=root, download=True)
    assert (ds.x_test == mnist_arrays["x_test"]).all()
    assert (root / "mnist" / "train-images-idx3-ubyte.gz").is_file()
    # The environment variable chooses the cache directory when data_dir is not given.
    monkeypatch.setenv("BBITS_REF_DATA", str(root))
    assert data.data_root() == root
    assert (load_dataset("mnist").y_train == mnist_arrays["y_train"]).all()


def test_download_cifar10_and_load_dataset(tmp_path, cifar, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    md5 = fx.write_cifar_tar(src / "cifar-10-python.tar.gz", fx.cifar_files(cifar, "py2"))
    with pytest.raises(DownloadError, match="MD5 checksum mismatch"):
        data.download_cifar10(tmp_path / "root", mirrors=[src.as_uri()])
    assert list((tmp_path / "root" / "cifar10").iterdir()) == []
    path = data.download_cifar10(tmp_path / "root", mirrors=[src.as_uri()], md5=md5)
    assert path == tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz"
    monkeypatch.setattr(data, "CIFAR10_MD5", md5)
    ds = load_dataset("cifar10", data_dir=tmp_path / "root")
    assert (ds.x_train == expected_cifar(cifar)[0]).all()
    with pytest.raises(FileNotFoundError, match="(?s)cifar10 not found.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir=tmp_path / "elsewhere")


def test_load_dataset_bad_name_and_small(tmp_path, rng):
    with pytest.raises(ValueError, match="unknown data set 'imagenet'; choose one of mnist-small"):
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
    mean, std = np.array(data.CIFAR10_MEAN), np.array(data.CIFAR10_STD)
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
