"""The two training engines (bbits_ref.training.engines): the torch engine trains like the numpy
reference (same data, noise, losses and parameters within float32 tolerance), checkpoints cross
engines both ways, divergence is caught without a sync per step, evaluation caches the quantized
weights, and every usage problem is one line.

Runs are tiny: the embedded MNIST subset, 48 images, batches of 16."""
import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bbits_ref._errors import UsageError  # noqa: E402
from bbits_ref.cli import main  # noqa: E402
from bbits_ref.datasets import batches  # noqa: E402
from bbits_ref.method.models import lenet5, vgg7  # noqa: E402
from bbits_ref.torch_impl.models import LeNet5, VGG7, cached_weights  # noqa: E402
from bbits_ref.training import engines  # noqa: E402
from bbits_ref.training.checkpoints import load_checkpoint  # noqa: E402
from bbits_ref.training.config import TrainConfig  # noqa: E402
from bbits_ref.training.trainer import Trainer, TrainingDiverged  # noqa: E402

TINY = dict(train_limit=48, test_limit=32, batch_size=16, epochs=3, log_every=2, seed=3)


def tiny(**changes) -> TrainConfig:
    return TrainConfig().replace(**{**TINY, **changes})


def trainer(config, engine, out_dir=None) -> Trainer:
    return Trainer(config, out_dir=out_dir, progress=False, verbose=False, engine=engine,
                   device="cpu")


def ready(t: Trainer) -> Trainer:
    """A trainer set up for its first epoch, to call engine.train_step by hand."""
    t.optimizer.schedule(t.epoch)
    t._set_phase()
    t.engine.begin_epoch()
    t.model.train()
    return t


def diff(a: dict, b: dict, key: str) -> np.ndarray:
    return np.abs(np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64))


# --------------------------------------------------------------------------- parity

def test_parameter_groups_have_the_same_names_in_both_implementations():
    """Adam's state maps by group and position: both must list the same names in each group."""
    for ref, net in ((lenet5(rng=0), LeNet5(rng=0)), (vgg7(0.125, rng=0), VGG7(0.125, rng=0))):
        x = np.random.default_rng(0).standard_normal((2,) + ref.input_shape).astype(np.float32)
        ref.initialize(x, np.random.default_rng(1))
        net.initialize(x, noise=ref.sample_noise(np.random.default_rng(1)))
        names_ref = {id(p): n for n, p in ref.named_parameters()}
        names_net = {id(p): n for n, p in net.named_parameters()}
        groups_ref = {g: [names_ref[id(p)] for p in ps] for g, ps in ref.parameter_groups().items()}
        groups_net = {g: [names_net[id(p)] for p in ps] for g, ps in net.parameter_groups().items()}
        assert groups_ref == groups_net


def test_both_engines_start_from_the_same_model_and_optimizer():
    a, b = trainer(tiny(), "numpy"), trainer(tiny(), "torch")
    sa = a.model.state_dict()
    sb = {k: v.detach().numpy() for k, v in b.engine.net.state_dict().items()}
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k
    assert [g["lr"] for g in b.engine.optimizer.param_groups] == \
        [g["lr"] for g in a.optimizer.param_groups]


def test_step_by_step_parity_with_the_same_data_and_noise():
    """Lockstep: before every step the torch engine takes the numpy engine's state; the loss,
    the correct count, the parameters and Adam's moments after the step agree to float32."""
    a, b = ready(trainer(tiny(), "numpy")), ready(trainer(tiny(), "torch"))
    batches_a = batches(a.x_train, a.y_train, 16, a.data_rng)
    batches_b = batches(b.x_train, b.y_train, 16, b.data_rng)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(batches_a), next(batches_b)
        assert np.array_equal(xa, xb)                         # same data order
        ce_a, reg_a, loss_a, hits_a = a.engine.train_step(a._normalize(xa), ya, 0.1)
        ce_b, reg_b, loss_b, hits_b = b.engine.train_step(b._normalize(xb), yb, 0.1)
        assert float(loss_b) == pytest.approx(loss_a, rel=2e-6)
        assert float(ce_b) == pytest.approx(ce_a, rel=2e-6)
        assert float(reg_b) == pytest.approx(reg_a, rel=1e-6)
        assert int(hits_b) == hits_a
        b.engine.sync_state()
        sa, sb = a.model.state_dict(), b.model.state_dict()
        for k in sa:
            d = diff(sa, sb, k)
            # Adam moves an element by ~lr whatever its gradient: where a gradient is ~0 a
            # float32 rounding can change the move; everywhere else they agree to ~1e-6.
            assert d.max() <= 1e-4 and (d > 2e-6).mean() <= 0.01, k
        oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
        assert oa.keys() == ob.keys()
        for k in oa:
            if k.endswith(".step"):
                assert int(oa[k]) == int(ob[k])
            elif k.endswith(("exp_avg", "exp_avg_sq")):
                assert diff(oa, ob, k).max() <= 1e-5 * (1 + np.abs(oa[k]).max()), k
        # next step from the same state again
        b.model.load_state_dict(a.model.state_dict())
        b.optimizer.load_state_dict(a.optimizer.state_dict())
        b.engine.load_state()


def test_free_running_parity_over_an_epoch():
    """Without resynchronising, the two runs stay together (float32 drift only)."""
    config = tiny(epochs=1, log_every=1)
    a, b = trainer(config, "numpy"), trainer(config, "torch")
    a.fit(), b.fit()
    steps_a = [h for h in a.history if h["kind"] == "step"]
    steps_b = [h for h in b.history if h["kind"] == "step"]
    assert len(steps_a) == len(steps_b) == 3
    assert steps_b[0]["ce"] == pytest.approx(steps_a[0]["ce"], rel=1e-6)
    for ha, hb in zip(steps_a, steps_b):
        assert hb["ce"] == pytest.approx(ha["ce"], rel=1e-3)
        assert hb["reg"] == pytest.approx(ha["reg"], rel=1e-5)
        assert hb["relative_bops"] == ha["relative_bops"]
    ea, eb = a.history[-1], b.history[-1]
    assert eb["test_acc"] == pytest.approx(ea["test_acc"], abs=2 / 32)
    assert a.noise_rng.bit_generator.state == b.noise_rng.bit_generator.state
    assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state


# --------------------------------------------------------------------------- state both ways

def test_adam_state_round_trips_exactly():
    t = ready(trainer(tiny(), "torch"))
    xb, yb = t._normalize(t.x_train[:16]), t.y_train[:16]
    for _ in range(2):
        t.engine.train_step(xb, yb, 0.1)
    t.engine.sync_state()
    model, optim = t.model.state_dict(), t.optimizer.state_dict()
    assert any(k.endswith(".exp_avg") for k in optim)
    t.engine.load_state()                                   # back into torch ...
    t.engine.sync_state()                                   # ... and out again
    for before, after in ((model, t.model.state_dict()), (optim, t.optimizer.state_dict())):
        assert before.keys() == after.keys()
        for k in before:
            assert np.array_equal(before[k], after[k]), k
    steps = {int(v) for k, v in optim.items() if k.endswith(".step")}
    assert steps == {2}


def test_numpy_torch_numpy_resume_keeps_training_sensibly(tmp_path):
    out = tmp_path / "run"
    config = tiny(epochs=3)
    trainer(config, "numpy", out).fit(stop_after=1)

    resumed = Trainer.resume(out, progress=False, verbose=False, engine="torch", device="cpu")
    model_state, optim_state, _ = load_checkpoint(out / "checkpoint.npz")
    net_state = resumed.engine.net.state_dict()
    for k, v in model_state.items():                        # the checkpoint, exactly
        assert np.array_equal(net_state[k].numpy(), v), k
    resumed.engine.sync_state()
    for k, v in resumed.optimizer.state_dict().items():
        assert np.array_equal(v, optim_state[k]), k
    resumed.fit(stop_after=1)

    final = Trainer.resume(out, progress=False, verbose=False)   # default: the last engine
    assert final.engine.name == "torch"
    final = Trainer.resume(out, progress=False, verbose=False, engine="numpy")
    summary = final.fit()

    record = json.loads((out / "run.json").read_text())
    assert [(e["engine"], e["epoch"]) for e in record["engines"]] == \
        [("numpy", 0), ("torch", 1), ("numpy", 2)]
    notes = [h for h in final.history if h["kind"] == "note"]
    assert [(n["event"], n["engine"], n["epoch"]) for n in notes] == \
        [("engine", "torch", 1), ("engine", "numpy", 2)]
    assert "engine" not in json.loads((out / "config.json").read_text())

    # against the same run computed by numpy alone: close, not equal (float32 drift)
    alone = trainer(config, "numpy")
    expected = alone.fit()
    epochs = [h for h in final.history if h["kind"] == "epoch"]
    epochs_alone = [h for h in alone.history if h["kind"] == "epoch"]
    assert [h["epoch"] for h in epochs] == [1, 2, 3]
    assert epochs[0] == epochs_alone[0]                    # epoch 1 was numpy in both
    for h, h_alone in zip(epochs[1:], epochs_alone[1:]):
        assert h["ce"] == pytest.approx(h_alone["ce"], rel=0.05)
        assert h["reg"] == pytest.approx(h_alone["reg"], rel=1e-3)
    assert summary["steps"] == expected["steps"] == 9
    assert np.isfinite(summary["relative_bops"])


def test_torch_run_writes_the_same_files_and_checkpoint_format(tmp_path):
    out_t, out_n = tmp_path / "t", tmp_path / "n"
    trainer(tiny(epochs=1), "torch", out_t).fit()
    trainer(tiny(epochs=1), "numpy", out_n).fit()
    names = sorted(p.name for p in out_t.iterdir())
    assert names == sorted(p.name for p in out_n.iterdir())
    mt, ot, meta_t = load_checkpoint(out_t / "checkpoint.npz")
    mn, on, meta_n = load_checkpoint(out_n / "checkpoint.npz")
    assert {k: (v.shape, v.dtype) for k, v in mt.items()} == \
        {k: (v.shape, v.dtype) for k, v in mn.items()}
    assert {k: (v.shape, v.dtype) for k, v in ot.items()} == \
        {k: (v.shape, v.dtype) for k, v in on.items()}
    assert meta_t["config"] == meta_n["config"]
    assert meta_t["run"]["engines"][0]["engine"] == "torch"
    assert meta_t["rng"] == meta_n["rng"]                    # same data order and noise drawn


# --------------------------------------------------------------------------- evaluation

def test_cached_weights_give_the_same_logits_and_are_dropped_after():
    ref = vgg7(0.125, rng=0)
    net = VGG7(0.125, rng=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    net.initialize(x, noise=ref.sample_noise(np.random.default_rng(1)))
    with torch.no_grad():                 # move the running statistics off their defaults
        for _ in range(2):
            net(torch.as_tensor(x), noise=ref.sample_noise(np.random.default_rng(2)))
    net.eval()
    calls = []
    original = net.conv2.weight_quantizer.forward
    net.conv2.weight_quantizer.forward = lambda w: calls.append(1) or original(w)
    with torch.no_grad():
        plain = [net(torch.as_tensor(x)) for _ in range(2)]
        assert len(calls) == 2                             # quantized at every batch
        with cached_weights(net):
            cached = [net(torch.as_tensor(x)) for _ in range(2)]
        assert len(calls) == 3                             # once for the whole evaluation
    for p, c in zip(plain, cached):
        assert torch.equal(p, c)
    assert all(m.cached_weight is None for _, m in net.quantized_layers())
    net.train()
    with pytest.raises(RuntimeError, match="model.eval"):
        with cached_weights(net):
            pass


def test_torch_evaluation_matches_the_reference():
    t = trainer(tiny(test_limit=32), "torch")
    t.engine.sync_state()
    assert t.evaluate(batch_size=10) == t._evaluate_reference(10)


# --------------------------------------------------------------------------- divergence

def test_torch_divergence_is_caught_at_the_next_check_naming_the_steps(tmp_path):
    out = tmp_path / "run"
    t = trainer(tiny(epochs=3, log_every=2), "torch", out)
    t.fit(stop_after=1)                                     # 3 steps, a checkpoint
    saved = (out / "checkpoint.npz").read_bytes()
    step = t.engine.train_step

    def spoiling_step(xb, yb, mu):
        result = step(xb, yb, mu)
        if t.step == 3:                                     # the 4th step (counter not yet +1)
            with torch.no_grad():
                t.engine.net.fc1.weight[0, 0] = float("nan")
        return result
    t.engine.train_step = spoiling_step
    with pytest.raises(TrainingDiverged) as info:
        t.fit()
    message = str(info.value)
    assert "parameter fc1.weight became nan" in message
    assert "at step 4 (epoch 2)" in message                # checked at step 4 (log_every 2)
    assert str(out / "checkpoint.npz") in message and "--resume" in message
    assert (out / "checkpoint.npz").read_bytes() == saved


def test_torch_divergence_between_checks_names_the_range_of_steps():
    t = trainer(tiny(epochs=1, log_every=20), "torch")     # only the epoch end checks
    step = t.engine.train_step

    def spoiling_step(xb, yb, mu):
        result = step(xb, yb, mu)
        if t.step == 0:          # after the 1st step: the 2nd step's loss is NaN, and its update
            with torch.no_grad():   # spoils the gate logits, which torch_impl refuses at the 3rd
                t.engine.net.fc1.weight[0, 0] = float("nan")
        return result
    t.engine.train_step = spoiling_step
    with pytest.raises(TrainingDiverged, match=r"loss became non-finite at a step from 1 to 2 "
                                               r"\(the torch engine checks every log_every = 20 "
                                               r"steps and at epoch ends\) \(epoch 1\); no "
                                               r"checkpoint"):
        t.fit()


# --------------------------------------------------------------------------- usage errors

def test_torch_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UsageError, match=r"^--engine torch needs the optional extra: pip install "
                                         r"'bbits-ref\[torch\]'$"):
        engines.make_engine("torch")


def test_cuda_asked_but_unavailable_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="sees no CUDA GPU; use --device cpu"):
        engines.make_engine("torch", "cuda")
    assert engines.make_engine("torch", "auto").device == "cpu"
    assert main(["train", "--engine", "torch", "--device", "cuda", "--epochs", "1",
                 "--train-limit", "8", "--no-progress", "--out", "/nonexistent/x"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith("note: OPENBLAS")]        # the machine's BLAS note, if any
    assert len(err) == 1 and err[0].startswith("bbits-ref: --device cuda: this PyTorch")


def test_numpy_engine_runs_on_the_cpu_only():
    with pytest.raises(UsageError, match="numpy engine runs on the CPU only"):
        engines.make_engine("numpy", "cuda")
    with pytest.raises(UsageError, match="engine must be one of numpy, torch"):
        engines.make_engine("jax")


def test_cli_trains_with_torch_and_resumes_with_numpy(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--train-limit", "32", "--test-limit", "16", "--batch-size", "16",
            "--no-progress", "--out", str(out)]
    assert main(base + ["--epochs", "1", "--engine", "torch", "--device", "cpu"]) == 0
    assert "computed by the torch engine on cpu" in capsys.readouterr().out
    record = json.loads((out / "run.json").read_text())
    assert record["engines"][0]["engine"] == "torch"
    # a finished run: resuming it with the other engine is accepted (engine is not a setting)
    assert main(["train", "--resume", str(out), "--engine", "numpy", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out


@pytest.mark.parametrize("changes", [
    dict(epochs=1, finetune_epochs=1),                      # fixed-gate fine-tuning phase
    dict(epochs=1, quantize=False, mu=0.0),                 # full precision: no gates
    dict(epochs=1, pruning=False, gate="gumbel_softmax"),
], ids=["finetune", "full-precision", "gumbel-no-pruning"])
def test_variants_of_the_method_agree_between_engines(changes):
    config = tiny(log_every=1, **changes)
    a, b = trainer(config, "numpy"), trainer(config, "torch")
    a.fit(), b.fit()
    steps_a = [h for h in a.history if h["kind"] == "step"]
    steps_b = [h for h in b.history if h["kind"] == "step"]
    assert len(steps_a) == len(steps_b) == 3 * a.total_epochs
    assert steps_b[0]["ce"] == pytest.approx(steps_a[0]["ce"], rel=1e-5)
    for ha, hb in zip(steps_a, steps_b):
        assert hb["ce"] == pytest.approx(ha["ce"], rel=1e-2)
        assert hb["relative_bops"] == ha["relative_bops"]


def test_noise_goes_to_the_device_in_one_copy_with_the_same_values():
    """The GPU path's packing of the step noise (checked here on the CPU)."""
    model = lenet5(rng=0)
    noise = model.sample_noise(np.random.default_rng(5))
    packed = engines.noise_to(noise, "cpu")
    bases = {t.untyped_storage().data_ptr() for parts in packed.values() for t in parts.values()}
    assert len(bases) == 1                                  # views of one buffer
    assert packed.keys() == noise.keys()
    for q, parts in noise.items():
        assert parts.keys() == packed[q].keys()
        for k, u in parts.items():
            assert packed[q][k].dtype == torch.float64 and np.array_equal(packed[q][k].numpy(), u)


def test_the_no_ste_ablation_is_refused_by_the_torch_engine_in_one_line(tmp_path):
    from bbits_ref._errors import UsageError
    from bbits_ref.training.config import TrainConfig
    from bbits_ref.training.trainer import Trainer

    config = TrainConfig(train_limit=64, test_limit=32, epochs=1, batch_size=32).replace(ste=False)
    with pytest.raises(UsageError, match="numpy engine only"):
        Trainer(config, out_dir=tmp_path / "run", progress=False, verbose=False, engine="torch")
