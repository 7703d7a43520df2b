"""Tests for bbits_ref.autograd.optim: hand-computed updates, groups, the schedule, checkpoints, errors,
and (if installed) step-by-step parity with torch.optim."""
import io
import math

import numpy as np
import pytest

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor
from bbits_ref.autograd.nn import Linear, Parameter
from bbits_ref.autograd.optim import SGD, Adam, linear_decay_last_third

F32_EPS = np.finfo(np.float32).eps


def param(values, dtype=np.float64):
    return Parameter(np.array(values, dtype=dtype))


def step_with(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = None if g is None else np.array(g, dtype=p.dtype)
    opt.step()


# --------------------------------------------------------------------------- hand-computed updates

def test_sgd_plain_one_and_two_steps():
    p = param([1.0, -2.0, 0.5])
    opt = SGD([p], lr=0.1)
    step_with(opt, [p], [[0.5, -1.0, 2.0]])
    np.testing.assert_allclose(p.data, [0.95, -1.9, 0.3], rtol=0, atol=1e-15)
    step_with(opt, [p], [[1.0, 1.0, -1.0]])
    np.testing.assert_allclose(p.data, [0.85, -2.0, 0.4], rtol=0, atol=1e-15)


def test_sgd_momentum_two_steps():
    # buf1 = g1; p1 = p0 - lr·g1; buf2 = 0.9·g1 + g2; p2 = p1 - lr·buf2
    p = param([1.0, 1.0])
    opt = SGD([p], lr=0.1, momentum=0.9)
    step_with(opt, [p], [[1.0, -2.0]])
    np.testing.assert_allclose(p.data, [0.9, 1.2], atol=1e-15)
    step_with(opt, [p], [[0.5, 0.5]])
    # buf2 = [0.9 + 0.5, -1.8 + 0.5] = [1.4, -1.3]
    np.testing.assert_allclose(p.data, [0.9 - 0.14, 1.2 + 0.13], atol=1e-15)
    np.testing.assert_allclose(opt.state_dict()["group0.param0.momentum_buffer"], [1.4, -1.3])


def test_sgd_nesterov_two_steps():
    # step 1: buf = g1, update g1 + 0.9·g1 = 1.9·g1; step 2: buf = 0.9·g1 + g2, update g2 + 0.9·buf
    p = param([0.0, 0.0])
    opt = SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    step_with(opt, [p], [[1.0, -1.0]])
    np.testing.assert_allclose(p.data, [-0.19, 0.19], atol=1e-15)
    step_with(opt, [p], [[1.0, 2.0]])
    buf = np.array([1.9, 1.1])
    np.testing.assert_allclose(p.data, [-0.19, 0.19] - 0.1 * (np.array([1.0, 2.0]) + 0.9 * buf),
                               atol=1e-15)


def test_sgd_weight_decay_adds_wd_times_p():
    p = param([2.0, -4.0])
    opt = SGD([p], lr=0.5, weight_decay=0.25)
    step_with(opt, [p], [[0.0, 1.0]])
    # g + 0.25·p = [0.5, 0]
    np.testing.assert_allclose(p.data, [1.75, -4.0], atol=1e-15)


def test_adam_one_step_moves_by_lr_times_sign():
    # t = 1: m = 0.1·g, v = 0.001·g², m/(1−β1) = g, √v/√(1−β2) = |g|, so Δp = −lr·g/(|g| + eps)
    g = np.array([3.0, -0.25, 1e-3])
    p = param([1.0, 1.0, 1.0])
    opt = Adam([p], lr=0.01)
    step_with(opt, [p], [g])
    np.testing.assert_allclose(p.data, 1.0 - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_adam_two_steps_by_hand():
    g1, g2 = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    p = param([0.5, -0.5])
    opt = Adam([p], lr=0.1, betas=(0.5, 0.75), eps=0.0)
    step_with(opt, [p], [g1])
    step_with(opt, [p], [g2])
    m = 0.5 * (0.5 * g1) + 0.5 * g2                   # [1.75, -0.25]
    v = 0.75 * (0.25 * g1 ** 2) + 0.25 * g2 ** 2      # [2.4375, 0.8125]
    m_hat, v_hat = m / (1 - 0.5 ** 2), v / (1 - 0.75 ** 2)
    p1 = np.array([0.5, -0.5]) - 0.1 * np.sign(g1)
    np.testing.assert_allclose(p.data, p1 - 0.1 * m_hat / np.sqrt(v_hat), rtol=1e-14)
    sd = opt.state_dict()
    assert int(sd["group0.param0.step"]) == 2
    np.testing.assert_allclose(sd["group0.param0.exp_avg"], m)
    np.testing.assert_allclose(sd["group0.param0.exp_avg_sq"], v)


def test_adam_eps_is_added_after_the_bias_correction():
    # tiny gradients: eps is comparable to √v̂, and must be added to √v / √(1−β2ᵗ), not to √v
    g = np.array([1e-8])
    p = param([0.0])
    opt = Adam([p], lr=1.0, eps=1e-8)
    step_with(opt, [p], [g])
    np.testing.assert_allclose(p.data, [-0.5], rtol=1e-9)      # g / (|g| + eps) = 1/2


def test_adam_weight_decay_enters_the_moments():
    p = param([2.0])
    opt = Adam([p], lr=0.1, weight_decay=0.5)
    step_with(opt, [p], [[-1.0]])                       # g + 0.5·p = 0 → no movement
    np.testing.assert_allclose(p.data, [2.0], atol=1e-15)
    np.testing.assert_array_equal(opt.state_dict()["group0.param0.exp_avg"], [0.0])


def test_float32_stays_float32_and_matches_the_float32_formula_exactly():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(3)]
    p = Parameter(p0.copy())
    opt = Adam([p], lr=np.float64(1e-3))          # a NumPy float64 lr must not promote the update
    data = p.data
    f32 = np.float32
    m = np.zeros(50, f32)
    v = np.zeros(50, f32)
    ref = p0.copy()
    for t, g in enumerate(grads, 1):
        step_with(opt, [p], [g])
        m = f32(0.9) * m + f32(1 - 0.9) * g
        v = f32(0.999) * v + f32(1 - 0.999) * g * g
        denom = np.sqrt(v) / f32(math.sqrt(1 - 0.999 ** t)) + f32(1e-8)
        ref = ref - f32(1e-3 / (1 - 0.9 ** t)) * m / denom
        assert ref.dtype == np.float32
    assert p.data is data and p.data.dtype == np.float32           # updated in place
    np.testing.assert_array_equal(p.data, ref)
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if "exp_avg" in k)


def test_sgd_does_not_modify_the_gradient():
    p = param([1.0, 2.0])
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    g = np.array([1.0, 1.0])
    p.grad = g
    opt.step()
    p.grad = g
    opt.step()
    np.testing.assert_array_equal(g, [1.0, 1.0])


# ------------------------------------------------------------------ groups, skipping, zero_grad

def test_param_groups_use_their_own_lr_and_record_initial_lr():
    a, b = param([1.0]), param([1.0])
    opt = SGD([{"params": [a], "name": "weights"}, {"params": [b], "lr": 0.5, "name": "gates"}],
              lr=0.1)
    assert [g["initial_lr"] for g in opt.param_groups] == [0.1, 0.5]
    step_with(opt, [a, b], [[1.0], [1.0]])
    np.testing.assert_allclose(a.data, [0.9])
    np.testing.assert_allclose(b.data, [0.5])


def test_step_skips_parameters_without_gradient():
    a, b = param([1.0]), param([1.0])
    opt = Adam([a, b], lr=0.1)
    step_with(opt, [a, b], [[1.0], None])
    step_with(opt, [a, b], [[1.0], [1.0]])
    assert b.data[0] == pytest.approx(0.9)                # its first step: exactly lr·sign
    sd = opt.state_dict()
    assert int(sd["group0.param0.step"]) == 2 and int(sd["group0.param1.step"]) == 1


def test_zero_grad_fills_zeros_by_default_and_set_to_none_skips():
    # PyTorch 1.x (the official code) zero-fills: Adam keeps moving a parameter with its momentum.
    for set_to_none, moves in ((False, True), (True, False)):
        p, unused = param([1.0]), param([3.0])
        opt = Adam([p, unused], lr=0.1)
        step_with(opt, [p, unused], [[1.0], None])
        opt.zero_grad(set_to_none=set_to_none)
        assert unused.grad is None                      # never had a gradient: stays None
        before = p.data.copy()
        opt.step()
        assert (p.data[0] != before[0]) == moves
        assert unused.data[0] == 3.0


def test_optimizer_trains_a_small_model_with_the_engine():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((64, 5)).astype(np.float32))
    labels = (x.data[:, 0] + x.data[:, 1] > 0).astype(np.int64)
    model = Linear(5, 2, rng=rng)
    opt = Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ops.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- schedule

def test_schedule_hook_scales_only_groups_with_a_lambda():
    a, b = param([1.0]), param([1.0])
    opt = Adam([{"params": [a], "lr_lambda": lambda e: 0.5 ** e}, {"params": [b]}], lr=0.01)
    opt.schedule(3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 8)
    assert opt.param_groups[1]["lr"] == 0.01
    opt.schedule(0)
    assert opt.param_groups[0]["lr"] == 0.01
    assert isinstance(opt.param_groups[0]["lr"], float)


def test_schedule_is_applied_at_construction_like_lambda_lr():
    a = param([1.0])
    opt = SGD([{"params": [a], "lr_lambda": lambda e: 0.25}], lr=1.0)
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["initial_lr"] == 1.0


@pytest.mark.parametrize("epochs, ones_through, checks", [
    (100, 67, {68: 0.9706, 100: 0.0294}),
    (300, 201, {202: 0.99, 300: 0.01}),
])
def test_linear_decay_last_third_matches_spec_11_6(epochs, ones_through, checks):
    factor = linear_decay_last_third(epochs)
    per_epoch = {k: factor(k - 1) for k in range(1, epochs + 1)}     # training epoch k, 1-based
    assert all(per_epoch[k] == 1.0 for k in range(1, ones_through + 1))
    assert per_epoch[ones_through + 1] < 1.0
    for k, value in checks.items():
        assert round(per_epoch[k], 4) == value
    assert factor(epochs) == 0.0
    assert all(np.diff([per_epoch[k] for k in range(1, epochs + 1)]) <= 0)


def test_linear_decay_last_third_matches_the_official_formula_for_all_sizes():
    for total in range(1, 400):
        factor = linear_decay_last_third(total)
        start = int(2 * total / 3)
        for e in range(total + 1):
            expected = 1.0 if e <= start else (total - e) / (total - start)
            assert factor(e) == expected


def test_schedule_with_linear_decay_in_an_optimizer():
    w, gate = param([1.0]), param([1.0])
    opt = Adam([{"params": [w], "name": "weights", "lr_lambda": linear_decay_last_third(100)},
                {"params": [gate], "name": "gates"}], lr=1e-3)
    lrs = []
    for k in range(1, 101):
        opt.schedule(k - 1)
        lrs.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
    assert lrs[66] == (1e-3, 1e-3)
    assert lrs[67][0] == pytest.approx(1e-3 * 33 / 34) and lrs[99][0] == pytest.approx(1e-3 / 34)
    assert all(g == 1e-3 for _, g in lrs)


def test_linear_decay_bad_input():
    for bad in (0, -3, 2.5, True, "100"):
        with pytest.raises(ValueError, match="positive int"):
            linear_decay_last_third(bad)
    factor = linear_decay_last_third(10)
    for bad in (-1, 11, 2.0):
        with pytest.raises(ValueError, match=r"finished epochs"):
            factor(bad)


# --------------------------------------------------------------------------- checkpoints

def _run(opt_factory, n_steps, start_state=None, split=None):
    """Train a tiny model with the engine; optionally checkpoint after ``split`` steps, rebuild
    model and optimizer from the .npz bytes, and continue."""
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((16, 4)).astype(np.float32))
    labels = rng.integers(0, 3, 16)
    model = Linear(4, 3, rng=np.random.default_rng(2))
    opt = opt_factory(model)
    for k in range(n_steps):
        if split is not None and k == split:
            buf = io.BytesIO()
            np.savez(buf, **{"model." + n: v for n, v in model.state_dict().items()},
                     **{"optim." + n: v for n, v in opt.state_dict().items()})
            buf.seek(0)
            with np.load(buf, allow_pickle=False) as f:
                saved = dict(f)
            model = Linear(4, 3, rng=np.random.default_rng(99))      # different init
            model.load_state_dict({n[6:]: v for n, v in saved.items() if n.startswith("model.")})
            opt = opt_factory(model)
            opt.load_state_dict({n[6:]: v for n, v in saved.items() if n.startswith("optim.")})
        opt.schedule(k)
        opt.zero_grad()
        ops.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.state_dict(), opt.state_dict()


@pytest.mark.parametrize("factory", [
    lambda m: Adam([{"params": [m.weight], "name": "weights",
                     "lr_lambda": linear_decay_last_third(6)},
                    {"params": [m.bias], "name": "bias", "lr": 0.03}], lr=0.01),
    lambda m: SGD([{"params": [m.weight], "lr_lambda": lambda e: 0.9 ** e},
                   {"params": [m.bias], "lr": 0.2, "nesterov": True}], lr=0.1, momentum=0.9),
])
def test_resume_from_state_dict_gives_identical_parameters(factory):
    straight_model, straight_opt = _run(factory, 6)
    resumed_model, resumed_opt = _run(factory, 6, split=3)
    for name in straight_model:
        np.testing.assert_array_equal(resumed_model[name], straight_model[name])
    assert straight_opt.keys() == resumed_opt.keys()
    for name in straight_opt:
        np.testing.assert_array_equal(resumed_opt[name], straight_opt[name])


def test_state_dict_holds_only_arrays_and_survives_npz_without_pickle():
    a, b = param([1.0, 2.0], np.float32), param([[3.0]], np.float32)
    opt = Adam([{"params": [a], "name": "weights", "lr_lambda": lambda e: 1.0},
                {"params": [b], "name": "ranges"}])
    step_with(opt, [a, b], [[1.0, 1.0], [[1.0]]])
    sd = opt.state_dict()
    assert all(type(v) is np.ndarray and v.dtype != object for v in sd.values())
    assert {"group0.lr", "group0.initial_lr", "group0.betas", "group0.eps", "group0.weight_decay",
            "group0.name", "group1.param0.exp_avg", "group1.param0.exp_avg_sq",
            "group1.param0.step"} <= set(sd)
    assert not any("lambda" in k for k in sd)
    buf = io.BytesIO()
    np.savez(buf, **sd)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        loaded = dict(f)
    opt.load_state_dict(loaded)
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
    assert type(opt.param_groups[0]["lr"]) is float
    # the state dict holds copies: changing it does not change the optimizer
    sd["group0.param0.exp_avg"][:] = 123.0
    assert opt.state_dict()["group0.param0.exp_avg"][0] != 123.0


def test_load_state_dict_restores_lr_and_hyper_parameters():
    a = param([1.0])
    opt = SGD([a], lr=0.1, momentum=0.9)
    opt.param_groups[0]["lr"] = 0.025
    sd = opt.state_dict()
    other = SGD([param([1.0])], lr=0.7, momentum=0.5)
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.025 and other.param_groups[0]["momentum"] == 0.9


def _two_group_adam():
    a, b = param([1.0, 2.0]), param([3.0])
    opt = Adam([{"params": [a], "name": "weights"}, {"params": [b], "name": "gates"}])
    step_with(opt, [a, b], [[1.0, 1.0], [1.0]])
    return opt


@pytest.mark.parametrize("mutate, error, match", [
    (lambda sd: sd.pop("group1.eps"), KeyError, "missing key 'group1.eps'"),
    (lambda sd: sd.pop("group0.param0.exp_avg"), KeyError, "missing key"),
    (lambda sd: sd.update({"group0.param0.exp_avg": np.zeros(3)}), ValueError, "shape"),
    (lambda sd: sd.update({"group0.param5.exp_avg": np.zeros(3)}), KeyError, "unexpected"),
    (lambda sd: sd.update({"group2.lr": np.array(0.1)}), ValueError, "3 parameter groups"),
    (lambda sd: sd.update({"group0.num_params": np.array(4)}), ValueError, "had 4 parameters"),
    (lambda sd: sd.update({"group0.name": np.array("ranges")}), ValueError, "named 'weights'"),
    (lambda sd: sd.update({"group0.lr": np.array(-1.0)}), ValueError, "lr must be ≥ 0"),
])
def test_load_state_dict_errors_leave_the_optimizer_unchanged(mutate, error, match):
    opt = _two_group_adam()
    before = opt.state_dict()
    sd = opt.state_dict()
    mutate(sd)
    with pytest.raises(error, match=match):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_load_state_dict_rejects_a_different_number_of_groups():
    sd = _two_group_adam().state_dict()
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer 1"):
        Adam([param([1.0, 2.0])]).load_state_dict(sd)


# --------------------------------------------------------------------------- bad input

def test_bad_constructor_input():
    a, b = param([1.0]), param([2.0])
    with pytest.raises(ValueError, match="empty parameter list"):
        Adam([])
    with pytest.raises(ValueError, match="has no parameters"):
        Adam([{"params": [a]}, {"params": [], "name": "ranges"}])
    with pytest.raises(ValueError, match="group 0 and again in group 1"):
        Adam([{"params": [a, b]}, {"params": [a]}])
    with pytest.raises(ValueError, match="group 0 and again in group 0"):
        SGD([a, a], lr=0.1)
    with pytest.raises(TypeError, match="expected Parameters, got Tensor"):
        Adam([Tensor(np.ones(2), requires_grad=True)])
    with pytest.raises(TypeError, match="expected Parameters, got ndarray"):
        Adam([np.ones(2)])
    with pytest.raises(TypeError, match="use parameters"):
        Adam(list(Linear(2, 2, rng=0).named_parameters()))
    with pytest.raises(TypeError, match="not a mixture"):
        Adam([a, {"params": [b]}])
    with pytest.raises(TypeError, match="iterable"):
        Adam(3)
    with pytest.raises(KeyError, match="no 'params'"):
        Adam([{"lr": 0.1}])
    with pytest.raises(ValueError, match="unknown options"):
        Adam([{"params": [a], "learning_rate": 0.1}])
    with pytest.raises(TypeError, match="lr_lambda must be a function"):
        Adam([{"params": [a], "lr_lambda": 0.5}])


@pytest.mark.parametrize("make, match", [
    (lambda p: SGD([p], lr=-0.1), "lr must be ≥ 0"),
    (lambda p: SGD([{"params": [p], "lr": -1.0}], lr=0.1), "group 0: lr must be ≥ 0"),
    (lambda p: SGD([p], lr=float("nan")), "lr must be ≥ 0"),
    (lambda p: SGD([p], lr=0.1, momentum=-0.5), "momentum must be ≥ 0"),
    (lambda p: SGD([p], lr=0.1, nesterov=True), "nesterov=True needs momentum"),
    (lambda p: SGD([p], lr=0.1, weight_decay=-1e-4), "weight_decay must be ≥ 0"),
    (lambda p: Adam([p], betas=(0.9, 1.0)), "betas must be two numbers"),
    (lambda p: Adam([p], betas=(0.9,)), "betas must be two numbers"),
    (lambda p: Adam([p], eps=-1e-8), "eps must be ≥ 0"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make(param([1.0]))


def test_bad_gradient_shape_and_bad_schedule_factor():
    p = param([1.0, 2.0])
    opt = SGD([{"params": [p], "lr_lambda": lambda e: 1.0 - e}], lr=0.1)
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match="gradient of shape"):
        opt.step()
    with pytest.raises(ValueError, match="factor must be ≥ 0"):
        opt.schedule(2)


# --------------------------------------------------------------------------- torch parity

def _torch_parity_run(kind, **options):
    """Several float32 steps of ours and torch.optim, two groups, a LambdaLR schedule on group 0."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shapes = [(16, 9), (9,), (4, 3, 3, 3)]
    # |p| in [1, 2] and lr·|g| ≪ |p|: no cancellation, so an ulp-level difference stays ulp-level
    init = [(rng.uniform(1, 2, s) * rng.choice([-1, 1], s)).astype(np.float32) for s in shapes]
    # gradient scales from 1e-9 to 1: Adam's eps matters for the smallest ones
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.integers(-9, 1, s)).astype(np.float32)
              for s in shapes] for _ in range(8)]
    sched = linear_decay_last_third(5)
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    lr0 = 0.01 if kind == "sgd" else 1e-3

    def groups(ps, with_lambda):
        return [{"params": ps[:2], "lr": lr0, **({"lr_lambda": sched} if with_lambda else {})},
                {"params": ps[2:], "lr": 3 * lr0}]

    if kind == "sgd":
        opt, topt = SGD(groups(ours, True), lr=lr0, **options), torch.optim.SGD(
            groups(theirs, False), lr=lr0, foreach=False, **options)
    else:
        opt, topt = Adam(groups(ours, True), **options), torch.optim.Adam(
            groups(theirs, False), foreach=False, **options)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, [sched, lambda e: 1.0])
    for t, gs in enumerate(grads):
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = g.copy(), torch.tensor(g.copy())
        opt.step()
        topt.step()
        if t % 2 == 1:              # an "epoch" is two steps
            opt.schedule(t // 2 + 1)
            tsched.step()
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in topt.param_groups]
    return ours, theirs, len(grads)


@pytest.mark.parametrize("kind, options", [
    ("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("adam", {}), ("adam", {"weight_decay": 0.01}), ("adam", {"betas": (0.8, 0.99), "eps": 1e-6}),
])
def test_torch_parity(kind, options):
    # Not bit-for-bit: torch's CPU kernels fuse a + α·b into one FMA (SGD, weight decay,
    # Adam's lerp of m) and its float32 sqrt is not correctly rounded on AVX-512; each step
    # may differ by about one ulp of |p|.  A wrong formula differs by ≥ 1e-4 relative.
    ours, theirs, n_steps = _torch_parity_run(kind, **options)
    for p, q in zip(ours, theirs):
        q = q.detach().numpy()
        np.testing.assert_allclose(p.data, q, rtol=2 * n_steps * F32_EPS, atol=0)
        assert np.mean(p.data == q) > 0.5            # most entries agree exactly


def test_adam_eps_placement_of_pytorch_1_1():
    """PyTorch 1.1 (the official runs) adds eps to √v before the bias correction; ≥ 1.5 after it.
    The two agree when √v ≫ eps and differ when the gradient is as small as eps."""

    def one_step(grad, placement):
        p = Parameter(np.zeros(1))
        opt = Adam([p], lr=1e-3, eps=1e-8, eps_placement=placement)
        p.grad = np.array([grad])
        opt.step()
        return float(p.data[0])

    b2 = 0.999
    for grad in (1.0, 1e-9):
        new = -1e-3 * (0.1 * grad / 0.1) / (np.sqrt(1e-3 * grad ** 2) / np.sqrt(1 - b2) + 1e-8)
        old = -1e-3 * np.sqrt(1 - b2) / 0.1 * (0.1 * grad) / (np.sqrt(1e-3 * grad ** 2) + 1e-8)
        assert one_step(grad, "after_bias_correction") == pytest.approx(new, rel=1e-12)
        assert one_step(grad, "before_bias_correction") == pytest.approx(old, rel=1e-12)
    assert one_step(1.0, "after_bias_correction") == pytest.approx(
        one_step(1.0, "before_bias_correction"), rel=1e-6)
    assert abs(one_step(1e-9, "after_bias_correction")) > 1.5 * abs(
        one_step(1e-9, "before_bias_correction"))
    with pytest.raises(ValueError, match="eps_placement"):
        Adam([Parameter(np.zeros(1))], eps_placement="torch")
