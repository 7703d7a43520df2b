"""Tests for bbits_ref.training.trainer: the official recipe (docs/method.md §7.3) as the default, parameter groups,
the history, bit-for-bit resume, seeds, divergence handling and fixed-gate fine-tuning.

Every run is tiny (48 embedded MNIST images, batch 32: two steps per epoch, the second on a
partial batch of 16)."""
import json

import numpy as np
import pytest

from bbits_ref._errors import UsageError
from bbits_ref.method.layers import BBConfig

from bbits_ref.training import trainer as train_mod
from bbits_ref.method.models import BBNet
from bbits_ref.autograd.optim import Adam, linear_decay_last_third
from bbits_ref.method.readout import model_readout
from bbits_ref.training.config import TrainConfig
from bbits_ref.training.trainer import Trainer, TrainingDiverged, build_model

TINY = dict(train_limit=48, test_limit=32, batch_size=32, epochs=2, log_every=3)
QUANTIZERS = ["conv1.weight_quantizer", "conv1.act_quantizer", "conv2.weight_quantizer",
              "conv2.act_quantizer", "fc1.weight_quantizer", "fc1.act_quantizer",
              "fc2.weight_quantizer"]


def tiny(**changes) -> TrainConfig:
    return TrainConfig().replace(**{**TINY, **changes})


def quiet(config, out_dir=None) -> Trainer:
    return Trainer(config, out_dir=out_dir, progress=False, verbose=False)


def assert_same_run(a: Trainer, b: Trainer):
    """Parameters, buffers, optimizer state, counters and history identical, bit for bit."""
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k]), k
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa.keys() == ob.keys()
    for k in oa:
        assert oa[k].dtype == ob[k].dtype and np.array_equal(oa[k], ob[k]), k
    assert (a.epoch, a.step) == (b.epoch, b.step)
    assert json.dumps(a.history) == json.dumps(b.history)
    assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state
    assert a.noise_rng.bit_generator.state == b.noise_rng.bit_generator.state


def record_lrs(trainer, monkeypatch):
    """Wrap train_step to log (epoch, mu, {group: lr}) at every step."""
    log = []
    inner = trainer.train_step

    def step(xb, yb, mu):
        log.append((trainer.epoch, mu, {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}))
        return inner(xb, yb, mu)

    monkeypatch.setattr(trainer, "train_step", step)
    return log


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2-epoch run with seed 0, saved to a run directory."""
    out = tmp_path_factory.mktemp("reference")
    trainer = quiet(tiny(), out)
    summary = trainer.fit()
    return trainer, summary, out


# --------------------------------------------------------------------------- the official recipe

def test_default_config_is_the_official_mnist_recipe():
    c = TrainConfig()
    assert (c.lr_weights, c.lr_gates, c.lr_ranges) == (1e-3, 1e-3, 1e-3)
    assert (c.epochs, c.mu, c.batch_size) == (100, 0.1, 128)
    assert (c.lr_schedule, c.finetune_epochs, c.augment) == ("official", 0, None)
    m = c.method
    assert (m.gate, m.prior, m.reg_type, m.hard_cut, m.pruning) == (
        "hard_concrete", "autoregressive", "bop", True, True)
    assert (c.dataset, c.model, c.dtype) == ("mnist-small", "lenet5", "float32")
    np.testing.assert_array_equal(c.method.chain_logits, [6.0, 6.0, -6.0, -6.0])
    model = build_model(c, rng=0)
    for _, q in model.quantizers():                      # the mnist preset: φ16 = φ32 = −6
        np.testing.assert_array_equal(q.gate_logits.data, np.float32([6, 6, -6, -6]))
        if q.prune_logits is not None:
            assert np.all(q.prune_logits.data == 6.0)
    assert TrainConfig(dataset="cifar10", model="vgg7").method.chain_logits.tolist() == [6] * 4


def test_optimizer_is_adam_with_three_groups(reference):
    opt = reference[0].optimizer
    assert isinstance(opt, Adam)
    assert [g["name"] for g in opt.param_groups] == ["weights", "gates", "ranges"]
    for g in opt.param_groups:
        assert (g["initial_lr"], g["betas"], g["eps"], g["weight_decay"]) == (
            1e-3, (0.9, 0.999), 1e-8, 0.0)


def test_official_lr_schedule_weights_only(monkeypatch):
    epochs = 4                                            # factors 1, 1, 1, 0.5 (decay from e > 2)
    trainer = quiet(tiny(epochs=epochs, train_limit=32, test_limit=8))
    log = record_lrs(trainer, monkeypatch)
    trainer.fit()
    factor = linear_decay_last_third(epochs)
    assert [e for e, _, _ in log] == list(range(epochs))  # one step per epoch
    for e, mu, lrs in log:
        assert lrs["weights"] == 1e-3 * factor(e), e     # training epoch e+1 uses factor(e)
        assert lrs["gates"] == lrs["ranges"] == 1e-3
        assert mu == 0.1
    assert log[-1][2]["weights"] == 0.5e-3


def test_constant_schedule_and_separate_group_lrs(monkeypatch):
    trainer = quiet(tiny(epochs=4, train_limit=32, test_limit=8, lr_schedule="constant",
                         lr_weights=3e-3, lr_gates=2e-3, lr_ranges=5e-4))
    log = record_lrs(trainer, monkeypatch)
    trainer.fit()
    assert all(lrs == {"weights": 3e-3, "gates": 2e-3, "ranges": 5e-4} for _, _, lrs in log)


# --------------------------------------------------------------------------- parameter groups

def _official_group(name: str) -> str:
    """The official code groups by name (§7.3): x_min/x_max → ranges, gamma_* → gates."""
    if name.endswith(".beta"):
        return "ranges"
    if name.endswith((".gate_logits", ".prune_logits")):
        return "gates"
    return "weights"


def _check_groups_by_name(model: BBNet, groups: dict):
    expected = {"weights": [], "gates": [], "ranges": []}
    for name, p in model.named_parameters():
        expected[_official_group(name)].append(id(p))
    assert {k: sorted(map(id, v)) for k, v in groups.items()} == {
        k: sorted(v) for k, v in expected.items()}


def test_lenet_parameter_groups_match_the_official_code(reference):
    trainer = reference[0]
    groups = {g["name"]: g["params"] for g in trainer.optimizer.param_groups}
    _check_groups_by_name(trainer.model, groups)
    assert [len(groups[k]) for k in ("weights", "gates", "ranges")] == [8, 10, 7]
    assert sum(p.size for p in groups["gates"]) == 636              # §7.1
    assert sum(p.size for p in groups["weights"]) == 582_026


def test_vgg_batchnorm_parameters_are_weights():
    config = TrainConfig(model="vgg7", width=0.125, dataset="cifar10")
    model = build_model(config, rng=0)
    model.initialize(np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32),
                     np.random.default_rng(1))
    groups = model.parameter_groups()
    _check_groups_by_name(model, groups)
    weight_ids = {id(p) for p in groups["weights"]}
    assert {id(model.conv1.bn.weight), id(model.conv1.bn.bias), id(model.fc1.bn.weight)} <= weight_ids
    assert len(groups["ranges"]) == 15                               # 8 weight + 7 activation


def test_optimizer_is_built_after_the_lazy_ranges(monkeypatch):
    events = []
    real_init, real_adam = BBNet.initialize, Adam.__init__

    def initialize(self, x, rng):
        events.append(("initialize", len(x)))
        real_init(self, x, rng)

    def adam_init(self, groups, *a, **k):
        ranges = next(g["params"] for g in groups if g["name"] == "ranges")
        events.append(("adam", all(p is not None for p in ranges)))
        real_adam(self, groups, *a, **k)

    monkeypatch.setattr(BBNet, "initialize", initialize)
    monkeypatch.setattr(Adam, "__init__", adam_init)
    trainer = quiet(tiny())
    assert events == [("initialize", 2), ("adam", True)]   # 2 training images, then Adam
    ranges = trainer.optimizer.param_groups[2]["params"]
    assert [id(q.beta) for _, q in trainer.model.quantizers()] == [id(p) for p in ranges]
    w = trainer.model.conv1.weight.data                     # β of a weight = max(w) (§2.1)
    assert trainer.model.conv1.weight_quantizer.beta.data == w.max()
    fresh = build_model(tiny(), rng=0)
    with pytest.raises(RuntimeError, match="initialize.*before building optimizers"):
        fresh.parameter_groups()


# --------------------------------------------------------------------------- history

def test_history_records(reference):
    trainer, summary, out = reference
    h = trainer.history
    # 48 images / batch 32 = 2 steps per epoch (32, 16); log_every = 3.
    assert [(r["kind"], r["step"]) for r in h] == [("epoch", 2), ("step", 3), ("epoch", 4)]
    assert h[1]["epoch"] == 1.5
    assert [r["epoch"] for r in h if r["kind"] == "epoch"] == [1, 2]
    for r in h:
        assert np.isfinite(r["ce"]) and r["ce"] > 0 and r["reg"] > 0
        assert 0.0 <= r["train_acc"] <= 1.0
        assert 0.0 < r["relative_bops"] <= 100.0 and 0.0 < r["expected_relative_bops"] <= 100.0
        assert ("test_acc" in r) == (r["kind"] == "epoch")
        assert list(r["quantizers"]) == QUANTIZERS
        for name, q in r["quantizers"].items():
            assert len(q["chain_probs"]) == 4 and q["chain_probs"][2:] == [0.0, 0.0]  # hard cut
            assert q["bits"] == 8 and 0 < q["expected_bits"] <= 8
            if name.endswith("weight_quantizer") and name != "fc2.weight_quantizer":
                assert 0 < q["kept"] <= q["channels"]
            else:
                assert q["kept"] is None
    # The last epoch record describes the final model, and its test accuracy is an evaluation.
    last = h[-1]
    assert last["test_acc"] == trainer.evaluate() == summary["test_accuracy"]
    assert last["relative_bops"] == model_readout(trainer.model).relative_bops
    assert last["reg"] == pytest.approx(float(trainer.model.regularizer().data))
    assert json.loads((out / "history.json").read_text()) == h


def test_summary_and_run_directory(reference):
    trainer, summary, out = reference
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz", "config.json", "history.json", "run.json", "summary.json"]
    assert json.loads((out / "config.json").read_text()) == tiny().to_dict()
    record = json.loads((out / "run.json").read_text())
    assert (record["run_id"], record["lr_changes"]) == (trainer.run_id, [])
    assert len(trainer.run_id) == 16
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert (summary["epochs"], summary["steps"]) == (2, 4)
    assert [layer["name"] for layer in summary["layers"]] == ["conv1", "conv2", "fc1", "fc2"]


# --------------------------------------------------------------------------- resume and seeds

def test_resume_after_interruption_is_bit_identical(reference, tmp_path):
    interrupted = quiet(tiny(), tmp_path)
    interrupted.fit(stop_after=1)
    assert interrupted.epoch == 1 and not (tmp_path / "summary.json").exists()
    resumed = Trainer.resume(tmp_path, progress=False, verbose=False)
    assert (resumed.epoch, resumed.step) == (1, 2)
    assert resumed.last_checkpoint == tmp_path / "checkpoint.npz"
    resumed.fit()
    assert_same_run(resumed, reference[0])
    assert (json.loads((tmp_path / "summary.json").read_text())
            == json.loads((reference[2] / "summary.json").read_text()))


def test_resume_from_an_explicit_save(reference, tmp_path):
    """fit(stop_after=1) in memory, Trainer.save to a file, resume from that file."""
    interrupted = quiet(tiny())
    interrupted.fit(stop_after=1)
    path = interrupted.save(tmp_path / "ckpt.npz")
    resumed = Trainer.resume(path, progress=False, verbose=False)
    resumed.fit()
    assert_same_run(resumed, reference[0])


def test_same_seed_same_run(reference):
    again = quiet(tiny())
    again.fit()
    assert_same_run(again, reference[0])


def test_different_seed_different_run():
    a, b = quiet(tiny(epochs=1, train_limit=32)), quiet(tiny(epochs=1, train_limit=32, seed=1))
    assert not np.array_equal(a.model.conv1.weight.data, b.model.conv1.weight.data)
    a.fit(), b.fit()
    assert a.history[-1]["ce"] != b.history[-1]["ce"]
    assert a.data_rng.bit_generator.state != b.data_rng.bit_generator.state
    assert a.noise_rng.bit_generator.state != b.noise_rng.bit_generator.state


def test_seed_streams_are_separate():
    """Same initialisation seed stream -> same weights, however the other streams are used."""
    a, b = quiet(tiny()), quiet(tiny())
    a.data_rng.random(5)
    b.noise_rng.random(7)
    for (_, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert a.data_rng.bit_generator.state != a.noise_rng.bit_generator.state


# --------------------------------------------------------------------------- divergence

def test_nan_weight_raises_and_keeps_last_good_checkpoint(tmp_path):
    trainer = quiet(tiny(), tmp_path)
    trainer.fit(stop_after=1)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(files) == {"checkpoint.npz", "config.json", "history.json", "run.json"}
    n_history = len(trainer.history)
    trainer.model.fc1.weight.data[0, 0] = np.nan
    ckpt = str(tmp_path / "checkpoint.npz")
    with pytest.raises(TrainingDiverged, match=rf"loss became nan at step 3 \(epoch 2\); the "
                                               rf"last good checkpoint is {ckpt}"):
        trainer.fit()
    assert trainer.step == 2 and trainer.epoch == 1 and len(trainer.history) == n_history
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files   # nothing new written
    resumed = Trainer.resume(tmp_path, progress=False, verbose=False)       # and it resumes
    assert np.isfinite(resumed.model.fc1.weight.data).all()


def test_infinite_loss_before_any_checkpoint(tmp_path, monkeypatch):
    trainer = quiet(tiny(), tmp_path)
    reg = trainer.model.regularizer
    monkeypatch.setattr(trainer.model, "regularizer", lambda: reg() * float("inf"))
    before = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    with pytest.raises(TrainingDiverged, match="loss became inf at step 1 .*no checkpoint has "
                                               "been written yet"):
        trainer.fit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "run.json"]
    for n, p in trainer.model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])


def test_non_finite_gradient_stops_before_the_update(monkeypatch):
    trainer = quiet(tiny())
    before = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    target = trainer.optimizer.param_groups[1]["params"][0]          # a gate-logit tensor
    zero_grad = trainer.optimizer.zero_grad

    def poisoned_zero_grad(*a, **k):
        zero_grad(*a, **k)
        target.grad = np.full(target.shape, np.inf, dtype=target.dtype)  # backward adds to it

    monkeypatch.setattr(trainer.optimizer, "zero_grad", poisoned_zero_grad)
    with pytest.raises(TrainingDiverged, match="a gradient in group 'gates' became nan at step 1"):
        trainer.fit()
    for n, p in trainer.model.named_parameters():
        np.testing.assert_array_equal(p.data, before[n])
    assert trainer.step == 0


@pytest.mark.parametrize("spoil, message", [
    (lambda m: m.fc1.weight_quantizer.beta.data.fill(-0.5),
     r"the range β of fc1.weight_quantizer fell to -0.5 \(it must stay > 0\) at step 1 "
     r"\(epoch 1\); no checkpoint"),
    (lambda m: m.conv2.bias.data.__setitem__(3, np.inf),
     r"parameter conv2.bias became inf at step 1 \(epoch 1\)"),
])
def test_a_spoiled_parameter_after_the_update_is_divergence(monkeypatch, spoil, message):
    """lr ≥ 0.01 overshoots a small β to ≤ 0: the divergence message, not a quantizer error."""
    trainer = quiet(tiny())
    step = trainer.optimizer.step

    def spoiling_step():
        step()
        spoil(trainer.model)

    monkeypatch.setattr(trainer.optimizer, "step", spoiling_step)
    with pytest.raises(TrainingDiverged, match=message):
        trainer.fit()


def test_a_new_run_refuses_a_folder_with_another_runs_results(tmp_path, reference):
    from bbits_ref._errors import RunDirError
    out = reference[2]
    with pytest.raises(RunDirError, match="already holds a run"):
        quiet(tiny(), out).fit()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"notes\.txt"):
        quiet(tiny(epochs=1, train_limit=32), tmp_path).fit()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # A run killed before its first checkpoint left only its settings: a new run may start.
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    (unstarted / "config.json").write_text("{}")
    (unstarted / "run.json").write_text("{}")
    trainer = quiet(tiny(epochs=1, train_limit=32), unstarted)
    trainer.fit()
    assert json.loads((unstarted / "run.json").read_text())["run_id"] == trainer.run_id


# --------------------------------------------------------------------------- fine-tuning

def _constant_noise(model, u):
    noise = model.sample_noise(np.random.default_rng(0))
    return {n: {k: np.full_like(v, u) for k, v in d.items()} for n, d in noise.items()}


def test_fixed_gate_finetuning(monkeypatch):
    trainer = quiet(tiny(epochs=1, finetune_epochs=1))
    assert trainer.total_epochs == 2
    log = record_lrs(trainer, monkeypatch)
    x = trainer._normalize(trainer.x_train[:4])
    lo, hi = _constant_noise(trainer.model, 0.01), _constant_noise(trainer.model, 0.99)
    noisy = []                     # per step: does the training forward depend on the gate noise?
    inner = trainer.train_step

    def step(xb, yb, mu):
        noisy.append(not np.array_equal(trainer.model(x, noise=lo).data,
                                        trainer.model(x, noise=hi).data))
        return inner(xb, yb, mu)

    monkeypatch.setattr(trainer, "train_step", step)

    trainer.fit(stop_after=1)                                     # the gated epoch
    snapshot = {n: p.data.copy() for n, p in trainer.model.named_parameters()}
    trainer.fit()                                                 # the fine-tuning epoch
    assert noisy == [True, True, False, False]                    # sampled, then fixed gates
    assert [(e, mu) for e, mu, _ in log] == [(0, 0.1), (0, 0.1), (1, 0.0), (1, 0.0)]
    assert log[-1][2] == {"weights": 1e-4, "gates": 0.0, "ranges": 1e-4}
    for n, p in trainer.model.named_parameters():
        group = _official_group(n)
        if group == "gates":
            np.testing.assert_array_equal(p.data, snapshot[n], err_msg=n)
        elif group == "ranges" or n.endswith("weight"):
            assert not np.array_equal(p.data, snapshot[n]), n
    assert [r["epoch"] for r in trainer.history if r["kind"] == "epoch"] == [1, 2]
    assert trainer.summary()["epochs"] == 2


# --------------------------------------------------------------------------- config checks, train()

@pytest.mark.parametrize("changes, message", [
    ({"dataset": "imagenet"}, "dataset must be one of"),
    ({"model": "resnet18"}, "model must be one of lenet5, vgg7; got 'resnet18'"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"mu": -0.1}, "mu must be at least 0"),
    ({"mu": float("nan")}, "mu must be a finite number"),
    ({"lr_gates": float("inf")}, "lr_gates must be a finite number"),
    ({"train_limit": 0}, "train_limit must be at least 1"),
    ({"test_limit": -1}, "test_limit must be at least 1"),
    ({"seed": -1}, "seed must be at least 0"),
    ({"width": 1e9}, "width must be at most 8"),
    ({"epochs": "100"}, "epochs must be a whole number"),
    ({"download": "yes"}, "download must be true or false"),
    ({"gate_options": {"straight_through": True}}, "hard_concrete gates take the options"),
    ({"weight_bits": 3}, "weight_bits: bits must be one of"),
    ({"lr_schedule": "cosine"}, "lr_schedule must be"),
    ({"dtype": "float16"}, "dtype must be"),
    ({"prior": "uniform"}, "prior must be one of"),
])
def test_bad_config_is_refused(changes, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig().replace(**changes)
    with pytest.raises(UsageError, match=message):        # the same checks for a config file
        method = {k: v for k, v in changes.items() if k in BBConfig.__dataclass_fields__}
        top = {k: v for k, v in changes.items() if k not in method}
        d = TrainConfig().to_dict()
        TrainConfig.from_dict({**d, **top, "method": {**d["method"], **method}})


def test_legacy_flat_config_files_are_read():
    """Run folders written by bbits_ref 0.1 (method settings flat in the config) still load."""
    legacy = {"dataset": "mnist", "model": "lenet5", "epochs": 100, "mu": 0.1, "gate": "gumbel_softmax",
              "gate_temperature": 0.5, "straight_through": True, "gate_preset": None, "hard_cut": True,
              "prior": "independent", "reg_type": "bop", "pruning": True, "learn_bits": True,
              "quantize": True, "weight_bits": None, "act_bits": None}
    c = TrainConfig.from_dict(legacy)
    assert c.method.gate_options == {"temperature": 0.5, "straight_through": True}
    assert (c.method.gate, c.method.prior, c.method.chain_init) == ("gumbel_softmax", "independent",
                                                                    "mnist")


@pytest.mark.parametrize("bad", [[1, 2], "config", {"method": [1]}, {"method": {"gate": ["x"]}},
                                 {"method": {"os": "system"}}, {"epochs": 1e300}])
def test_config_files_with_wrong_types_are_one_clear_error(bad):
    with pytest.raises(UsageError):
        TrainConfig.from_dict(bad)


def test_replace_routes_method_settings_and_follows_the_dataset():
    c = TrainConfig().replace(mu=0.0, pruning=False)
    assert (c.mu, c.method.pruning) == (0.0, False)
    cifar = TrainConfig().replace(dataset="cifar10")
    assert (cifar.model, cifar.epochs, cifar.method.chain_init) == ("vgg7", 100, "cifar10")
    with pytest.raises(UsageError, match="unknown settings"):
        TrainConfig().replace(learning_rate=1.0)


def test_config_dict_round_trip_and_unknown_keys():
    c = tiny(mu=0.5, gate="gumbel_softmax", seed=3)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(UsageError, match=r"unknown training settings: \['lr'\]"):
        TrainConfig.from_dict({**c.to_dict(), "lr": 0.1})


def test_train_one_call(monkeypatch):
    trainer, summary = train_mod.train(tiny(), progress=False, verbose=False, epochs=1,
                                       train_limit=32)
    assert trainer.config.epochs == 1 and summary["epochs"] == 1 and summary["steps"] == 1
