"""Tests for the ``bbits-ref`` command (bbits_ref.cli), run in-process through ``main([...])``.

Training runs are tiny: 48 embedded MNIST images, batch 32, 2 epochs (4 steps)."""
import contextlib
import importlib.metadata
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bbits_ref.training.checkpoints import load_checkpoint
from bbits_ref._errors import UsageError
from bbits_ref.cli import build_parser, main
from bbits_ref.cli.options import config_from_args
from bbits_ref.method.models import lenet5
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = ["--train-limit", "48", "--test-limit", "32", "--batch-size", "32", "--epochs", "2",
        "--log-every", "3", "--no-progress"]
RUN_FIGURES = ["bit_widths.png", "bops_accuracy.png", "gate_probabilities.png",
               "kept_channels.png", "training_curves.png"]


def config_of(*flags) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


def run(*argv) -> tuple[int, str]:
    """main(argv) with stdout captured (usable in module-scoped fixtures, unlike capsys)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(list(argv))
    return code, buf.getvalue()


def error_line(capsys) -> str:
    """The one line an error printed on stderr (an environment "note:" aside)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One uninterrupted ``bbits-ref train`` run."""
    out = tmp_path_factory.mktemp("cli") / "run"
    code, text = run("train", *TINY, "--out", str(out))
    assert code == 0
    return out, text


# --------------------------------------------------------------------------- train

def test_train_writes_the_run_directory(run_dir):
    out, text = run_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz", "config.json", "figures", "history.json", "run.json", "summary.json"]
    assert sorted(p.name for p in (out / "figures").iterdir()) == RUN_FIGURES
    for f in (out / "figures").iterdir():
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 1000
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())) == config_of(*TINY)
    history = json.loads((out / "history.json").read_text())
    assert [(h["kind"], h["step"]) for h in history] == [("epoch", 2), ("step", 3), ("epoch", 4)]


def test_summary_has_accuracy_bops_bits_and_kept_channels(run_dir):
    summary = json.loads((run_dir[0] / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert 0.0 < summary["relative_bops"] <= 100.0
    assert (summary["epochs"], summary["steps"]) == (2, 4)
    assert [(l["name"], l["w_bits"], l["a_bits"]) for l in summary["layers"]] == [
        ("conv1", 8, 8), ("conv2", 8, 8), ("fc1", 8, 8), ("fc2", 8, 8)]
    q = summary["quantizers"]
    assert q["conv1.weight_quantizer"]["channels"] == 32
    assert 0 < q["conv1.weight_quantizer"]["kept_channels"] <= 32
    assert q["fc2.weight_quantizer"]["kept_channels"] is None        # the last layer: no pruning
    assert summary["test_accuracy"] == json.loads(
        (run_dir[0] / "history.json").read_text())[-1]["test_acc"]


def test_train_prints_progress_and_the_readout(run_dir):
    out, text = run_dir
    assert "training lenet5 on mnist-small (48 training / 32 test images) for 2 epochs" in text
    assert "epoch   1/2: test acc" in text and "epoch   2/2: test acc" in text
    assert "Bayesian Bits readout: lenet5" in text
    assert "conv1.weight_quantizer" in text and "fc2.weight_quantizer" in text
    assert "relative BOPs (deterministic, official)" in text
    assert f"wrote {out}/config.json" in text


def test_existing_run_is_refused_without_resume_or_force(run_dir, capsys):
    out, _ = run_dir
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["train", *TINY, "--out", str(out)]) == 4                # RunDirError
    assert re.fullmatch(r"bbits-ref: \S+ already holds a run: pass --resume .* --force .*",
                        error_line(capsys))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_force_starts_again(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"old run")
    (out / "stale.txt").write_text("left over")
    flags = ["--train-limit", "32", "--test-limit", "8", "--batch-size", "32", "--epochs", "1",
             "--no-progress", "--out", str(out), "--force"]
    assert main(["train", *flags]) == 4                # stale.txt is not a run's: refused
    assert "stale.txt" in error_line(capsys)
    assert (out / "stale.txt").read_text() == "left over"
    assert (out / "checkpoint.npz").read_bytes() == b"old run"
    (out / "stale.txt").unlink()
    code, _ = run("train", *flags)
    assert code == 0
    _, _, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["epoch"] == 1


def test_resume_through_the_cli_matches_the_uninterrupted_run(run_dir, tmp_path):
    out = tmp_path / "interrupted"
    Trainer(config_of(*TINY), out_dir=out, progress=False, verbose=False).fit(stop_after=1)
    code, text = run("train", "--resume", str(out), "--no-progress")
    assert code == 0 and f"resuming {out} at epoch 1/2" in text
    m1, o1, meta1 = load_checkpoint(out / "checkpoint.npz")
    m2, o2, meta2 = load_checkpoint(run_dir[0] / "checkpoint.npz")
    for a, b in ((m1, m2), (o1, o2)):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert meta1.pop("run")["id"] != meta2.pop("run")["id"]       # two runs...
    assert meta1 == meta2                              # ...same history, RNG states, counters, config
    assert (out / "history.json").read_text() == (run_dir[0] / "history.json").read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == RUN_FIGURES


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 3               # DataFileError
    assert re.fullmatch(r"bbits-ref: no checkpoint at \S*checkpoint\.npz", error_line(capsys))


# --------------------------------------------------------------------------- flags -> config

def test_default_flags_use_the_quick_preset_on_embedded_data_and_official_elsewhere():
    quick = config_of()
    assert (quick.epochs, quick.lr_weights, quick.lr_gates, quick.lr_ranges) == (15, 1e-3, 1e-2, 1e-3)
    assert config_of("--preset", "official") == TrainConfig()
    cifar = config_of("--dataset", "cifar10")
    assert (cifar.model, cifar.epochs, cifar.lr_gates) == ("vgg7", 300, 1e-3)   # docs/method.md §7.3
    assert cifar.method.chain_logits.tolist() == [6.0] * 4


def test_learning_rate_flags():
    c = config_of("--lr", "2e-3")
    assert (c.lr_weights, c.lr_gates, c.lr_ranges) == (2e-3, 2e-3, 2e-3)
    c = config_of("--lr", "2e-3", "--lr-gates", "0", "--lr-ranges", "5e-4")
    assert (c.lr_weights, c.lr_gates, c.lr_ranges) == (2e-3, 0.0, 5e-4)   # 0 is kept, not 2e-3


def _quantizers(config):
    return [q for _, q in lenet5(config.method, rng=0).quantizers()]


def test_quant_only():
    c = config_of("--quant-only")
    assert (c.method.pruning, c.method.learn_bits, c.method.quantize, c.mu) == (False, True, True, 0.1)
    qs = _quantizers(c)
    assert all(q.prune_logits is None and q.gate_logits is not None for q in qs)


def test_prune_only():
    c = config_of("--prune-only", "8/4")
    m = c.method
    assert (m.pruning, m.learn_bits, m.weight_bits, m.act_bits) == (True, False, 8, 4)
    qs = _quantizers(c)
    assert all(q.gate_logits is None for q in qs)
    assert sum(q.prune_logits is not None for q in qs) == 3
    assert [int(q.deterministic_chain().sum()) for q in qs[:2]] == [2, 1]    # 8 bits, 4 bits


def test_fixed_bits_baseline():
    c = config_of("--fixed-bits", "4/4", "--mu", "0.3")
    m = c.method
    assert (m.pruning, m.learn_bits, m.weight_bits, m.act_bits, c.mu) == (False, False, 4, 4, 0.0)
    assert all(q.gate_logits is None and q.prune_logits is None for q in _quantizers(c))


def test_full_precision():
    c = config_of("--full-precision")
    assert (c.method.quantize, c.mu) == (False, 0.0)
    assert _quantizers(c) == []


def test_gate_prior_and_method_flags():
    c = config_of("--gate", "gumbel_softmax", "--temperature", "0.5", "--straight-through",
                  "--prior", "independent", "--reg-type", "const", "--no-hard-cut",
                  "--gate-preset", "cifar10", "--mu", "0.01", "--seed", "7")
    bb = c.method
    assert (bb.gate, bb.prior, bb.reg_type, bb.hard_cut, bb.chain_init, c.mu, c.seed) == (
        "gumbel_softmax", "independent", "const", False, "cifar10", 0.01, 7)
    assert bb.gate_options == {"temperature": 0.5, "straight_through": True}
    assert bb.chain_logits == pytest.approx([6 + 1.598597] * 4, abs=1e-6)   # shifted for GS


@pytest.mark.parametrize("flags, message", [
    (["--quant-only", "--full-precision"],
     "choose at most one of --quant-only, --prune-only, --fixed-bits, --full-precision "
     r"\(got --quant-only, --full-precision\)"),
    (["--prune-only", "8/8", "--fixed-bits", "4/4"], "choose at most one of"),
    (["--prune-only", "8"], "--prune-only takes W/A bit widths such as 8/8; got '8'"),
    (["--fixed-bits", "four/4"], "--fixed-bits takes W/A bit widths"),
    (["--prune-only", "3/8"], "weight_bits: bits must be one of .*got 3"),
    (["--epochs", "0"], "--epochs: epochs must be at least 1; got 0"),
    (["--mu", "-1"], "--mu: mu must be at least 0; got -1"),
    (["--mu", "nan"], "--mu: mu must be a finite number; got nan"),
    (["--lr-gates", "inf"], "--lr-gates: lr_gates must be a finite number; got inf"),
    (["--train-limit", "0"], "--train-limit: train_limit must be at least 1; got 0"),
    (["--test-limit", "-3"], "--test-limit: test_limit must be at least 1; got -3"),
    (["--seed", "-1"], "--seed: seed must be at least 0"),
    (["--width", "0"], "--width: width must be greater than 0"),
    (["--batch-size", "0"], "--batch-size: batch_size must be at least 1"),
    (["--finetune-epochs", "-1"], "--finetune-epochs: finetune_epochs must be at least 0"),
    (["--temperature", "0", "--gate", "gumbel_softmax"], "temperature"),
    (["--straight-through"], "--straight-through applies to Gumbel-softmax gates only"),
])
def test_bad_or_conflicting_flags_are_clear_errors(flags, message):
    with pytest.raises(UsageError, match=message):
        config_of(*flags)


def test_unknown_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--gate", "sigmoid"])
    assert exc.value.code == 2
    assert "invalid choice: 'sigmoid'" in capsys.readouterr().err


# --------------------------------------------------------------------------- other subcommands

def test_info_prints_the_table(run_dir, capsys):
    out, _ = run_dir
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert text.startswith(f"{out / 'checkpoint.npz'}: lenet5 on mnist-small, epoch 2, step 4, "
                           f"test accuracy {summary['test_accuracy']:.4f}")
    assert "Bayesian Bits readout: lenet5" in text and "conv2.act_quantizer" in text
    assert f"{summary['relative_bops']:.4f}%" in text      # the same model as the summary


def test_info_on_a_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 3
    assert error_line(capsys).startswith("bbits-ref: no checkpoint at")
    (tmp_path / "checkpoint.npz").write_bytes(b"garbage")
    assert main(["info", str(tmp_path)]) == 3
    assert re.fullmatch(r"bbits-ref: .*checkpoint\.npz is not a readable .*truncated or "
                        r"corrupted.*", error_line(capsys))


def test_figures_renders_a_run(run_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run_dir[0], copy)
    shutil.rmtree(copy / "figures")
    assert main(["figures", str(copy)]) == 0
    assert sorted(p.name for p in (copy / "figures").iterdir()) == RUN_FIGURES
    assert capsys.readouterr().out.split() == [str(copy / "figures" / f) for f in
                                               ["gate_probabilities.png", "bit_widths.png",
                                                "bops_accuracy.png", "kept_channels.png",
                                                "training_curves.png"]]
    assert main(["figures", str(tmp_path)]) == 3
    assert "neither history.json (a run) nor sweep.json" in error_line(capsys)


def test_readout_vgg7(capsys):
    assert main(["readout", "--model", "vgg7", "--width", "0.25"]) == 0
    text = capsys.readouterr().out
    assert "Bayesian Bits readout: vgg7(width=0.25)" in text
    for name in ("conv1.weight_quantizer", "conv6.act_quantizer", "fc1.weight_quantizer"):
        assert name in text
    assert "32/32" in text and "128/128" in text            # width 0.25: 32 … 128 channels


# sweep tests: tests/test_sweep.py


def test_gradcheck_subcommand(capsys):
    assert main(["gradcheck"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: bbits-ref" in capsys.readouterr().out


def test_console_entry_point_help():
    try:
        importlib.metadata.distribution("bbits-ref")
        exe = shutil.which("bbits-ref")
    except importlib.metadata.PackageNotFoundError:
        exe = None
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "bbits_ref.cli", "--help"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: bbits-ref" in done.stdout
    for sub in ("train", "sweep", "figures", "info", "readout", "gradcheck"):
        assert sub in done.stdout
