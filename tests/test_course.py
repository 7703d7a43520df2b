"""bbits_ref.course.settings: small/full mode from the environment, the settings, and run_or_load."""
import json

import numpy as np
import pytest

from bbits_ref.course import settings as course
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import Trainer


@pytest.mark.parametrize("env, small", [
    ({}, False),
    ({"BBITS_SMALL": "1"}, True),
    ({"BBITS_SMALL": "true"}, True),
    ({"BBITS_SMALL": " Yes "}, True),
    ({"BBITS_SMALL": "0"}, False),
    ({"BBITS_SMALL": ""}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CI": ""}, False),
    ({"CI": "true", "BBITS_SMALL": "0"}, False),      # an explicit no wins over CI
    ({"CI": "true", "BBITS_SMALL": "false"}, False),
    ({"CI": "true", "BBITS_SMALL": ""}, True),        # empty = unset: CI decides
    ({"CI": "false", "BBITS_SMALL": "1"}, True),
])
def test_small_mode_from_environ(env, small):
    assert course.small_mode(env) is small


def test_small_mode_reads_os_environ(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("BBITS_SMALL", "1")
    assert course.small_mode() is True
    assert course.settings().small is True
    monkeypatch.setenv("BBITS_SMALL", "0")
    monkeypatch.setenv("CI", "true")
    assert course.small_mode() is False
    assert course.settings().small is False


def test_bad_small_value_is_a_clear_error():
    with pytest.raises(ValueError, match="BBITS_SMALL='maybe'.*unset it"):
        course.small_mode({"BBITS_SMALL": "maybe"})
    with pytest.raises(TypeError, match="small must be True, False or None"):
        course.settings(small="yes")


def test_small_settings_are_smaller_than_full():
    small, full = course.settings(small=True), course.settings(small=False, environ={})
    assert small.small and not full.small and small.mode == "small" and full.mode == "full"
    for name in ("tour", "lenet5", "vgg7", "sweep"):
        s, f = getattr(small, name), getattr(full, name)
        assert s.epochs <= f.epochs
        # None means the whole data set, which is more than any limit
        assert s.train_limit is not None and (f.train_limit is None or s.train_limit < f.train_limit)
        assert s.test_limit is not None
    assert len(small.sweep_mus) == 2 and len(full.sweep_mus) >= 3
    assert list(full.sweep_mus) == sorted(full.sweep_mus)
    # full-mode 06 trains the first epochs of the "quick" preset on the whole embedded set; its
    # 15 epochs are the committed run course-runs/mu0.1
    assert 1 <= full.lenet5.epochs < 15 and full.lenet5.train_limit is None
    assert small.cache_dir is None
    assert "small" in small.describe() and "μ in [0.01, 1.0]" in small.describe()


def test_overrides_build_valid_configs():
    for mode in (True, False):
        s = course.settings(small=mode, environ={})
        for run in (s.tour, s.lenet5, s.vgg7, s.sweep):
            cfg = TrainConfig(**run.overrides())
            assert (cfg.epochs, cfg.train_limit, cfg.test_limit, cfg.batch_size) == (
                run.epochs, run.train_limit, run.test_limit, run.batch_size)
            # at least two batches' worth of data, and batch norm needs > 1 example per batch
            assert run.batch_size > 1 and (run.train_limit or 10**9) >= run.batch_size


def test_cache_dir_from_environment(tmp_path):
    s = course.settings(small=False, environ={"BBITS_COURSE_CACHE": str(tmp_path / "c")})
    assert s.cache_dir == tmp_path / "c"
    s = course.settings(small=False, environ={"BBITS_REF_DATA": str(tmp_path)})
    assert s.cache_dir == tmp_path / "course-runs"
    assert course.settings(small=False, environ={"BBITS_COURSE_CACHE": ""}).cache_dir is None


def _tiny_config(**kw):
    return TrainConfig(epochs=1, train_limit=16, test_limit=20, batch_size=8, log_every=1,
                       lr_gates=1e-2, **kw)


def test_cache_key_depends_on_config_and_data_tag():
    a = course.cache_key(_tiny_config())
    assert a == course.cache_key(_tiny_config())
    assert a != course.cache_key(_tiny_config(mu=0.5))
    assert a != course.cache_key(_tiny_config(), data_tag="synthetic")
    assert a.startswith("lenet5-mnist-small-mu0.1-")


def test_run_or_load_trains_once_then_loads(tmp_path, monkeypatch):
    cfg = _tiny_config()
    trainer, summary = course.run_or_load(cfg, tmp_path, progress=False, verbose=False)
    run_dir = tmp_path / course.cache_key(cfg)
    assert (run_dir / "summary.json").is_file()
    assert summary["epochs"] == 1 and trainer.step == 2
    params = {k: np.array(v) for k, v in trainer.model.state_dict().items()}

    def no_training(self):
        raise AssertionError("run_or_load trained again instead of loading the finished run")

    monkeypatch.setattr(Trainer, "train_epoch", no_training)
    loaded, summary2 = course.run_or_load(cfg, tmp_path, progress=False, verbose=False)
    assert loaded.history == json.loads((run_dir / "history.json").read_text())
    assert loaded.history == trainer.history
    assert summary2["test_accuracy"] == summary["test_accuracy"]
    assert summary2["relative_bops"] == summary["relative_bops"]
    for k, v in loaded.model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), params[k], err_msg=k)


def test_run_or_load_retrains_a_damaged_or_unfinished_run(tmp_path, capsys):
    cfg = _tiny_config()
    run_dir = tmp_path / course.cache_key(cfg)
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text("{}")
    (run_dir / "checkpoint.npz").write_bytes(b"not a checkpoint")
    trainer, summary = course.run_or_load(cfg, tmp_path, progress=False, verbose=True)
    assert "unreadable" in capsys.readouterr().out
    assert trainer.step == 2 and summary["epochs"] == 1
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 1


def test_run_or_load_without_cache_is_train(tmp_path):
    trainer, summary = course.run_or_load(_tiny_config(), None, progress=False, verbose=False)
    assert trainer.out_dir is None and summary["epochs"] == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="TrainConfig"):
        course.run_or_load({"epochs": 1})


# ----------------------------------------------------------------------------- a class-sized time
def _steps(run: course.RunSettings, train_size: int = 10_000) -> int:
    n = train_size if run.train_limit is None else min(run.train_limit, train_size)
    return run.epochs * -(-n // run.batch_size)


def test_full_mode_live_runs_fit_a_class():
    """Full mode must run each notebook in at most 3 minutes on 2 cores: the live runs are short
    (a LeNet-5 step takes 0.1-0.4 s here, a width-0.125 VGG-7 step 1-2 s, more under load); the long
    runs come from figures/ (bbits_ref.course.runs)."""
    full = course.settings(small=False, environ={})
    assert _steps(full.tour) <= 100
    assert _steps(full.lenet5) <= 300
    assert _steps(full.vgg7) <= 20 and full.vgg7_width <= 0.125
    assert _steps(full.sweep) * len(full.sweep_mus) <= 120
    small = course.settings(small=True)
    assert sum(_steps(r) for r in (small.tour, small.lenet5, small.vgg7, small.sweep)) <= 30
