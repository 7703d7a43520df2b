"""``bbits-ref compare`` and bbits_ref.training.compare, on the committed runs and on junk."""
import json
import shutil
from pathlib import Path

import pytest

from bbits_ref._errors import DataFileError, RunDirError
from bbits_ref.cli import main
from bbits_ref.training.compare import compare_runs, format_comparison, load_run

ROOT = Path(__file__).resolve().parents[1]
E30, E100 = ROOT / "figures" / "mnist-lenet5", ROOT / "figures" / "mnist-lenet5-e100"


def test_committed_runs_side_by_side():
    c = compare_runs(E30, E100)
    assert set(c.settings) == {"epochs"}                      # same recipe and seed, 30 vs 100 epochs
    assert [row[0] for row in c.epochs] == list(range(1, 31))
    assert c.epochs[0][1] == c.epochs[0][2]                   # identical first epoch
    by_name = {q[0]: q for q in c.quantizers}
    assert by_name["conv1.weight_quantizer"][1:5] == (4, 2, 32, 30)   # the 30-epoch run kept 4 bits
    # The 100-epoch run's first 11 epochs ran on code with another conv1 summation order: the
    # trajectories part in epoch 12, long before the learning-rate schedules differ (epoch 20).
    assert c.first_parting["step"] == 5660 and 12 < c.first_parting["epoch"] < 13
    text = format_comparison(c)
    assert "gate trajectories part first at step 5660" in text
    assert "conv1.weight_quantizer          4      2   32/32   30/32   <- differs" in text


def test_a_run_compared_with_itself_never_parts():
    c = compare_runs(E30, E30)
    assert c.settings == {} and c.first_parting is None and c.first_config_difference is None
    assert all(a == b for _, a, b, _, _ in c.epochs)


def test_tolerance_moves_the_parting_point():
    assert compare_runs(E30, E100, tol=1.0).first_parting is None
    with pytest.raises(ValueError, match="tol"):
        compare_runs(E30, E100, tol=float("nan"))


def test_cli_prints_and_draws(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(E30), str(E100)]) == 0
    out = capsys.readouterr().out
    assert "relative_bops" in out and "wrote compare-mnist-lenet5-vs-mnist-lenet5-e100.png" in out
    png = tmp_path / "compare-mnist-lenet5-vs-mnist-lenet5-e100.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", str(E30), str(E100)]) == RunDirError.exit_code   # never overwrites
    assert "exists; pass --force" in capsys.readouterr().err
    assert main(["compare", str(E30), str(E100), "--force", "--plot", str(tmp_path / "p.png")]) == 0


def _copy_run(tmp_path, name="run"):
    dst = tmp_path / name
    dst.mkdir()
    for f in ("config.json", "history.json", "summary.json"):
        shutil.copy(E30 / f, dst / f)
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "history.json").unlink(), "history.json: missing"),
    (lambda d: (d / "history.json").write_text("[{"), "not valid JSON"),
    (lambda d: (d / "history.json").write_text('{"a": 1}'), "expected a list of history records"),
    (lambda d: (d / "history.json").write_text('[{"kind": "epoch", "step": 1}]'),
     "record 0 has no numeric 'epoch'"),
    (lambda d: (d / "history.json").write_text("[" * 100000 + "]" * 100000), "not valid JSON"),
    (lambda d: (d / "config.json").write_text("[]"), "expected a JSON object"),
    (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe"), "not valid JSON"),
])
def test_damaged_run_folders_are_one_clear_error(tmp_path, damage, message):
    run = _copy_run(tmp_path)
    damage(run)
    with pytest.raises(DataFileError, match=message):
        load_run(run)


def test_not_a_folder(tmp_path):
    with pytest.raises(DataFileError, match="not a folder"):
        load_run(tmp_path / "nothing")


def test_unfinished_run_is_compared_up_to_its_last_epoch(tmp_path):
    run = _copy_run(tmp_path)
    (run / "summary.json").unlink()
    history = json.loads((run / "history.json").read_text())
    cut = [i for i, r in enumerate(history) if r["kind"] == "epoch"][4]        # after epoch 5
    (run / "history.json").write_text(json.dumps(history[:cut + 1]))
    c = compare_runs(run, E100)
    assert [row[0] for row in c.epochs] == [1, 2, 3, 4, 5]
    assert "unfinished" in format_comparison(c)
