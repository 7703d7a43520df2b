"""The CIFAR-10 path of ``bbits-ref train``, proven without the data: a tiny CIFAR-10 in the real
layout (``cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta, pickled as
the original Python 2 files) trains VGG-7 through the command line with each engine, is
interrupted after its first epoch, resumes with the OTHER engine, and draws its figures.

Four images per training batch file (20 in all), six test images, width 0.125, batch 8."""
import json

import numpy as np
import pytest

import fixtures_data as fx

from bbits_ref.cli import main
from bbits_ref.training.runs import FIGURE_FILES
from bbits_ref.training.trainer import Trainer

pytest.importorskip("torch")

ENGINES = ("numpy", "torch")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cifar = fx.make_cifar(np.random.default_rng(0), n_per_batch=4, n_test=6)
    fx.write_cifar_dir(root / "cifar-10-batches-py", fx.cifar_files(cifar, "py2"))
    return root


def interrupt_after_first_checkpoint(monkeypatch):
    """Ctrl-C right after the first checkpoint is written (as a user or a scheduler would)."""
    save = Trainer.save

    def save_then_interrupt(self, path=None):
        save(self, path)
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "save", save_then_interrupt)


@pytest.mark.parametrize("first", ENGINES)
def test_vgg7_on_cifar10_through_the_command_line(first, cifar_root, tmp_path, monkeypatch,
                                                  capsys):
    second = ENGINES[1 - ENGINES.index(first)]
    out = tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-dir", str(cifar_root), "--width", "0.125",
            "--epochs", "2", "--batch-size", "8", "--log-every", "1", "--no-progress",
            "--out", str(out)]
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        assert main(args + ["--engine", first, "--device", "cpu"]) == 130
    printed = capsys.readouterr()
    assert "training vgg7 on cifar10 (20 training / 6 test images) for 2 epochs" in printed.out
    assert "interrupted; the last checkpoint" in printed.err
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history if h["kind"] == "epoch"] == [1]

    assert main(["train", "--resume", str(out), "--engine", second, "--device", "cpu",
                 "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    epochs = [h for h in history if h["kind"] == "epoch"]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert [h["step"] for h in epochs] == [3, 6]                 # 20 images, batch 8
    assert all(np.isfinite(h["ce"]) and 0 <= h["test_acc"] <= 1 for h in epochs)
    record = json.loads((out / "run.json").read_text())
    assert [e["engine"] for e in record["engines"]] == [first, second]
    config = json.loads((out / "config.json").read_text())
    assert (config["dataset"], config["model"], config["width"]) == ("cifar10", "vgg7", 0.125)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["model"] == "vgg7(width=0.125)"

    for f in FIGURE_FILES:
        (out / "figures" / f).unlink()
    assert main(["figures", str(out)]) == 0
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(FIGURE_FILES)
    assert main(["info", str(out)]) == 0
    assert "vgg7 on cifar10, epoch 2, step 6" in capsys.readouterr().out
