"""How the engines feed data to a training step (bbits_ref.training.engines): the torch engine
keeps the normalised training set on its device and indexes each batch there with the
reference's permutation; with augmentation both engines make the same host batches; the torch
engine computes on as many threads as NumPy's BLAS.

Runs are tiny: the embedded MNIST subset, 48 images, batches of 16."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bbits_ref.datasets import augment_cifar, batches  # noqa: E402
from bbits_ref.training import engines  # noqa: E402
from bbits_ref.training.config import TrainConfig  # noqa: E402
from bbits_ref.training.trainer import Trainer  # noqa: E402

TINY = dict(train_limit=48, test_limit=32, batch_size=16, epochs=1, log_every=2, seed=3)


def trainer(engine: str) -> Trainer:
    return Trainer(TrainConfig().replace(**TINY), progress=False, verbose=False, engine=engine,
                   device="cpu")


def test_torch_batches_are_indexed_on_the_device_in_the_reference_order():
    a, b = trainer("numpy"), trainer("torch")
    want = list(batches(a.x_train, a.y_train, 16, a.data_rng))  # the reference loop's draw
    got = list(b.engine.epoch_batches(16))
    assert len(got) == len(want) == 3
    for (xw, yw), (xg, yg) in zip(want, got):
        assert isinstance(xg, torch.Tensor) and xg.device.type == b.engine.device
        np.testing.assert_array_equal(xg.numpy(), a._normalize(xw))
        np.testing.assert_array_equal(yg.numpy(), yw)
        assert yg.dtype == torch.long
    # the same generator state afterwards: the run continues identically (checkpoints)
    assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state
    # the set is copied once, not per epoch
    first = b.engine._device_train_set()[0]
    list(b.engine.epoch_batches(16))
    assert b.engine._device_train_set()[0] is first


def test_numpy_engine_batches_are_the_trainer_loop_of_before():
    a, b = trainer("numpy"), trainer("numpy")
    want = [(a._normalize(x), y) for x, y in batches(a.x_train, a.y_train, 16, a.data_rng)]
    got = list(b.engine.epoch_batches(16))
    for (xw, yw), (xg, yg) in zip(want, got, strict=True):
        assert isinstance(xg, np.ndarray)
        np.testing.assert_array_equal(xg, xw)
        np.testing.assert_array_equal(yg, yw)


def test_augmented_batches_are_made_on_the_host_the_same_by_both_engines():
    """With augmentation the permutation comes first, then each batch's augmentation noise,
    from the same generator: both engines yield identical NumPy batches."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(40) % 10
    out = []
    for engine in ("numpy", "torch"):
        t = trainer(engine)
        t.x_train, t.y_train = rgb, labels
        t._normalize = lambda x: np.asarray(x, dtype=np.float32) / np.float32(255)
        out.append(list(t.engine.epoch_batches(16, augment_cifar)))
    assert len(out[0]) == len(out[1]) == 3
    for (xa, ya), (xb, yb) in zip(*out):
        assert isinstance(xb, np.ndarray)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_a_training_epoch_uses_the_device_batches(monkeypatch):
    """The trainer's loop takes its batches from the engine: no NumPy batch reaches the torch
    engine's step without augmentation."""
    t = trainer("torch")
    seen = []
    step = t.engine.train_step

    def spy(xb, yb, mu):
        seen.append((type(xb), type(yb)))
        return step(xb, yb, mu)
    monkeypatch.setattr(t.engine, "train_step", spy)
    t.train_epoch()
    assert seen == [(torch.Tensor, torch.Tensor)] * 3


def test_torch_engine_uses_numpy_thread_count(monkeypatch):
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    try:
        monkeypatch.setattr(engines, "numpy_threads", lambda: wanted)
        trainer("torch")
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_numpy_threads_reads_the_environment_without_threadpoolctl(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert engines.numpy_threads() is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert engines.numpy_threads() == 3
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "junk")
    assert engines.numpy_threads() == 3
