"""Tests for bbits_ref.training.checkpoints: .npz without pickle, atomic writes, clear errors on damaged
files, and generator states that survive a round trip (docs/method.md §7.3 resume; STYLE: errors speak)."""
import json
import os
import zipfile

import numpy as np
import pytest

from bbits_ref import _files
from bbits_ref._files import atomic_write_text, write_json
from bbits_ref.training.checkpoints import (CHECKPOINT_VERSION, CheckpointError, load_checkpoint,
                                            restore_rng, rng_state, save_checkpoint)


def _states(seed=0):
    rng = np.random.default_rng(seed)
    model = {"conv1.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
             "conv1.weight_quantizer.signed_flag": np.array(1, dtype=np.int8),
             "fc.beta": np.array(0.75, dtype=np.float32)}
    optim = {"group0.lr": np.array(1e-3), "group0.name": np.array("weights"),
             "group0.param0.step": np.array(7, dtype=np.int64),
             "group0.param0.exp_avg": rng.standard_normal(5).astype(np.float32)}
    meta = {"epoch": 3, "history": [{"kind": "epoch", "ce": 0.125, "test_acc": 0.5}],
            "rng": {"noise": rng_state(np.random.default_rng(1))}}
    return model, optim, meta


def _assert_same_arrays(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "checkpoint.npz"
    model, optim, meta = _states()
    save_checkpoint(path, model_state=model, optim_state=optim, meta=meta)
    return path, (model, optim, meta)


# --------------------------------------------------------------------------- round trip, no pickle

def test_round_trip_is_exact(saved):
    path, (model, optim, meta) = saved
    m, o, me = load_checkpoint(path)
    _assert_same_arrays(m, model)
    _assert_same_arrays(o, optim)
    assert me == {"version": CHECKPOINT_VERSION, **meta}


def test_file_is_plain_npz_loadable_without_pickle(saved):
    path, (model, optim, _) = saved
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        assert all(z[k].dtype != object for k in z.files)
        meta = json.loads(str(z["meta"]))
    assert files == {f"model/{k}" for k in model} | {f"optim/{k}" for k in optim} | {"meta"}
    assert meta["version"] == CHECKPOINT_VERSION


def test_object_arrays_are_rejected_and_nothing_is_written(tmp_path):
    path = tmp_path / "checkpoint.npz"
    bad = {"w": np.array([np.zeros(2), "text"], dtype=object)}
    with pytest.raises(TypeError, match=r"'model/w' is an object array.*no pickle"):
        save_checkpoint(path, model_state=bad, optim_state={}, meta={})
    assert list(tmp_path.iterdir()) == []


class _Boom:
    """Unpickling this would set a flag: proves loading never runs pickled code."""
    triggered = False

    def __reduce__(self):
        return (_Boom._trigger, ())

    @staticmethod
    def _trigger():
        _Boom.triggered = True
        return "boom"


def test_a_file_that_needs_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array(json.dumps({"version": CHECKPOINT_VERSION})),
             **{"model/w": np.array([_Boom()], dtype=object)})
    with pytest.raises(CheckpointError, match="evil.npz.*allow_pickle"):
        load_checkpoint(path)
    assert not _Boom.triggered


# --------------------------------------------------------------------------- atomic writes

def _only_the_checkpoint_left(directory):
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint.npz"]


@pytest.mark.parametrize("where", ["replace", "fsync"])
def test_crash_during_write_keeps_previous_checkpoint(saved, monkeypatch, where):
    path, (model, optim, meta) = saved
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError(f"simulated crash in os.{where}")

    monkeypatch.setattr(_files.os, where, crash)
    new_model, new_optim, new_meta = _states(seed=5)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(path, model_state=new_model, optim_state=new_optim, meta=new_meta)
    monkeypatch.undo()
    assert path.read_bytes() == before                 # the old file, untouched
    _only_the_checkpoint_left(path.parent)             # and no temporary file left behind
    m, _, _ = load_checkpoint(path)
    _assert_same_arrays(m, model)


def test_interrupt_while_writing_bytes_cleans_up(saved, monkeypatch):
    path, _ = saved
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt                    # Ctrl-C half way through the write

    monkeypatch.setattr(_files.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "x" * 10_000)
    monkeypatch.undo()
    assert path.read_bytes() == before
    _only_the_checkpoint_left(path.parent)


def test_write_json_is_atomic_and_handles_numpy(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"acc": np.float32(0.5), "bits": np.array([2, 4]), "dir": tmp_path})
    assert json.loads(path.read_text()) == {"acc": 0.5, "bits": [2, 4], "dir": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text())["acc"] == 0.5     # previous content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# --------------------------------------------------------------------------- damaged files

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothere\.npz"):
        load_checkpoint(tmp_path / "nothere.npz")


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.9])
def test_truncated_file(saved, keep):
    path, _ = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError, match=r"checkpoint\.npz is not a readable bbits_ref "
                                              r"checkpoint \(truncated or corrupted\?\)"):
        load_checkpoint(path)


def test_corrupted_array_data_is_detected(saved):
    path, _ = saved
    raw = bytearray(path.read_bytes())
    # Damage the middle of the first member's data (past its local header): CRC-32 fails.
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 128
    raw[start:start + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="truncated or corrupted.*CRC"):
        load_checkpoint(path)


def test_wrong_version_is_refused(tmp_path):
    path = tmp_path / "old.npz"
    np.savez(path, meta=np.array(json.dumps({"version": CHECKPOINT_VERSION + 1})))
    with pytest.raises(CheckpointError, match=rf"format version {CHECKPOINT_VERSION + 1}.*"
                                              rf"reads version {CHECKPOINT_VERSION}"):
        load_checkpoint(path)
    np.savez(path, meta=np.array(json.dumps({"epoch": 1})))        # no version at all
    with pytest.raises(CheckpointError, match="format version None"):
        load_checkpoint(path)


@pytest.mark.parametrize("entries, message", [
    ({"model/w": np.zeros(2)}, "has no 'meta' entry"),
    ({"meta": np.array("{not json")}, "'meta' entry is not valid JSON"),
    ({"meta": np.array("[1, 2]")}, "should be a JSON object, got list"),
])
def test_foreign_npz_files_are_refused(tmp_path, entries, message):
    path = tmp_path / "foreign.npz"
    np.savez(path, **entries)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


# --------------------------------------------------------------------------- generator states

@pytest.mark.parametrize("bit_generator", ["PCG64", "Philox", "SFC64"])
def test_restore_rng_round_trip_through_json(bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(1234))
    rng.random(17)                                        # some mid-stream state
    state = json.loads(json.dumps(rng_state(rng)))        # what a checkpoint stores
    restored = restore_rng(state)
    assert type(restored.bit_generator).__name__ == bit_generator
    np.testing.assert_array_equal(restored.random(50), rng.random(50))
    np.testing.assert_array_equal(restored.permutation(30), rng.permutation(30))
    # The copy is independent: drawing from it does not move the original.
    a = restore_rng(rng_state(rng))
    a.random(5)
    b = restore_rng(rng_state(rng))
    np.testing.assert_array_equal(b.random(3), rng.random(3))


def test_rng_state_survives_a_checkpoint_file(tmp_path):
    rng = np.random.default_rng(99)
    rng.integers(0, 10, size=11)
    save_checkpoint(tmp_path / "c.npz", model_state={}, optim_state={},
                    meta={"rng": rng_state(rng)})
    _, _, meta = load_checkpoint(tmp_path / "c.npz")
    np.testing.assert_array_equal(restore_rng(meta["rng"]).standard_normal(20),
                                  rng.standard_normal(20))
