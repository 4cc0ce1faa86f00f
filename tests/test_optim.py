"""Optimizers: SGD / Adam / AdamW steps against the update rules written out in numpy, in-place and
dtype/device behaviour, param groups, validation errors, state dicts and exact resume."""

from __future__ import annotations

import numpy as np
import pytest

import minires as mr
from minires import optim
from minires.backend import to_numpy

TARGET = np.array([0.5, -1.0, 2.0, 0.25, -0.75, 1.5])
P0 = np.array([1.0, 0.5, -0.5, 2.0, 0.0, -1.0])


def grad_fn(p: np.ndarray, t: int) -> np.ndarray:
    """A gradient that depends on the parameter and the step (so state and resume matter)."""
    return 2.0 * (p - TARGET) + 0.1 * np.cos(np.arange(p.size) + t)


def run(make_opt, steps: int, device: str = "cpu", dtype=np.float64, p0: np.ndarray = P0):
    p = mr.tensor(p0.astype(dtype), device=device, requires_grad=True)
    opt = make_opt([p])
    for t in range(steps):
        p.grad = mr.tensor(grad_fn(to_numpy(p.data).astype(np.float64), t).astype(dtype), device=device)
        opt.step()
    return to_numpy(p.data), opt, p


# ----- reference update rules, written out ------------------------------------------------------
def sgd_reference(steps, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    p = P0.copy()
    buf = None
    for t in range(steps):
        g = grad_fn(p, t)
        if maximize:
            g = -g
        g = g + weight_decay * p
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_reference(steps, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    b1, b2 = betas
    p = P0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    vmax = np.zeros_like(p)
    for t in range(1, steps + 1):
        g = grad_fn(p, t - 1)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        if amsgrad:
            vmax = np.maximum(vmax, v)
            v_use = vmax
        else:
            v_use = v
        p = p - lr * m_hat / (np.sqrt(v_use) / np.sqrt(1 - b2**t) + eps)
    return p


SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.05, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.9, dampening=0.3),
    "nesterov": dict(lr=0.05, momentum=0.8, nesterov=True),
    "weight_decay": dict(lr=0.1, weight_decay=0.01),
    "all": dict(lr=0.03, momentum=0.7, weight_decay=5e-3, nesterov=True),
    "maximize": dict(lr=0.02, momentum=0.5, maximize=True),
}

ADAM_CASES = {
    "adam": (optim.Adam, dict(lr=0.01)),
    "adam_l2": (optim.Adam, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    "adam_amsgrad": (optim.Adam, dict(lr=0.02, amsgrad=True, eps=1e-6)),
    "adamw": (optim.AdamW, dict(lr=0.01)),
    "adamw_wd_amsgrad": (optim.AdamW, dict(lr=0.05, weight_decay=0.2, amsgrad=True)),
}


@pytest.mark.parametrize("case", SGD_CASES)
def test_sgd_matches_hand_computed_updates(case: str) -> None:
    kw = SGD_CASES[case]
    got, _, _ = run(lambda ps: optim.SGD(ps, **kw), steps=6)
    np.testing.assert_allclose(got, sgd_reference(6, **kw), rtol=1e-12, atol=1e-14)


def test_sgd_first_momentum_step_uses_the_gradient_itself() -> None:
    # buf = g on the first step, so dampening does not shrink it: p1 = p0 - lr * g0
    got, opt, p = run(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5), steps=1)
    np.testing.assert_allclose(got, P0 - 0.1 * grad_fn(P0, 0), rtol=1e-14)
    np.testing.assert_allclose(opt.state[p]["momentum_buffer"], grad_fn(P0, 0), rtol=1e-14)


@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_family_matches_hand_computed_updates(case: str) -> None:
    cls, kw = ADAM_CASES[case]
    got, _, _ = run(lambda ps: cls(ps, **kw), steps=7)
    ref_kw = dict(kw)
    if cls is optim.AdamW:
        ref_kw.setdefault("weight_decay", 1e-2)  # AdamW's default
    np.testing.assert_allclose(got, adam_reference(7, decoupled=cls is optim.AdamW, **ref_kw), rtol=1e-10)


def test_adam_first_step_moves_each_coordinate_by_about_lr() -> None:
    # bias correction makes the first step lr * g / (|g| + eps) = lr * sign(g)
    got, _, _ = run(lambda ps: optim.Adam(ps, lr=0.01, eps=0.0), steps=1)
    np.testing.assert_allclose(got, P0 - 0.01 * np.sign(grad_fn(P0, 0)), rtol=1e-12)


def test_adamw_decay_is_decoupled_from_moments() -> None:
    # zero gradient: Adam with L2 moves through the moments, AdamW only shrinks by (1 - lr*wd)
    p = mr.tensor(P0.copy(), requires_grad=True)
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = mr.zeros(P0.shape, dtype=np.float64)
    opt.step()
    np.testing.assert_allclose(p.data, P0 * (1 - 0.1 * 0.5), rtol=1e-14)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=0.01),
], ids=["sgd", "adam", "adamw"])
def test_updates_are_in_place_and_keep_dtype_and_device(make, device: str) -> None:
    p = mr.tensor(P0.astype(np.float32), device=device, requires_grad=True)
    array = p.data
    opt = make([p])
    for t in range(3):
        p.grad = mr.tensor(grad_fn(P0, t).astype(np.float32), device=device)
        opt.step()
    assert p.data is array
    assert p.data.dtype == np.float32
    for value in opt.state[p].values():
        if hasattr(value, "dtype"):
            assert value.dtype == np.float32
            assert mr.backend.device_of(value) == p.device


def test_float32_tracks_float64_reference() -> None:
    got, _, _ = run(lambda ps: optim.Adam(ps, lr=0.01), steps=5, dtype=np.float32)
    np.testing.assert_allclose(got, adam_reference(5, lr=0.01), rtol=1e-5, atol=1e-6)


def test_params_without_grad_are_skipped_and_get_no_state() -> None:
    a = mr.tensor(P0.copy(), requires_grad=True)
    b = mr.tensor(P0.copy(), requires_grad=True)
    opt = optim.Adam([a, b], lr=0.1)
    a.grad = mr.tensor(np.ones_like(P0))
    opt.step()
    np.testing.assert_array_equal(b.data, P0)
    assert b not in opt.state and opt.state[a]["step"] == 1


def test_zero_grad() -> None:
    p = mr.tensor(P0.copy(), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)
    p.grad = mr.tensor(np.ones_like(P0))
    grad_array = p.grad.data
    opt.zero_grad(set_to_none=False)
    assert p.grad.data is grad_array and not grad_array.any()
    opt.zero_grad()
    assert p.grad is None


def test_closure_result_is_returned() -> None:
    p = mr.tensor(P0.copy(), requires_grad=True)
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = ((p - mr.tensor(TARGET)) ** 2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == pytest.approx(((P0 - TARGET) ** 2).sum())
    np.testing.assert_allclose(p.data, P0 - 0.1 * 2 * (P0 - TARGET))


def test_param_groups_have_their_own_hyperparameters() -> None:
    a = mr.tensor(P0.copy(), requires_grad=True)
    b = mr.tensor(P0.copy(), requires_grad=True)
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5}], lr=0.1, momentum=0.9)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.9
    a.grad = mr.tensor(np.ones_like(P0))
    b.grad = mr.tensor(np.ones_like(P0))
    opt.step()
    np.testing.assert_allclose(a.data, P0 - 0.1)
    np.testing.assert_allclose(b.data, P0 - 0.5)
    c = mr.tensor(P0.copy(), requires_grad=True)
    opt.add_param_group({"params": [c], "momentum": 0.0})
    assert opt.param_groups[2]["lr"] == 0.1 and opt.param_groups[2]["momentum"] == 0.0


def test_param_list_errors() -> None:
    p = mr.tensor(P0.copy(), requires_grad=True)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(p, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([p * 2], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([P0], lr=0.1)


def test_a_set_of_parameters_is_refused() -> None:
    # State dicts number parameters by position; a set's order follows id hashes, so it changes
    # between runs and a resumed run would load one parameter's momentum into another (as PyTorch, refuse).
    p, q = (mr.tensor(P0.copy(), requires_grad=True) for _ in range(2))
    with pytest.raises(TypeError, match="SGD: .*ordered collection.*not a set"):
        optim.SGD({p, q}, lr=0.1)
    opt = optim.Adam([p])
    with pytest.raises(TypeError, match="Adam: .*not a set"):
        opt.add_param_group({"params": {q}})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize(("make", "match"), [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"SGD: invalid learning rate lr=-0.1"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), r"SGD: invalid momentum=-0.5"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1.0), r"SGD: invalid weight_decay=-1.0"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), r"SGD: nesterov .* momentum=0.0"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"dampening=0.1"),
    (lambda ps: optim.Adam(ps, lr=-1.0), r"Adam: invalid learning rate lr=-1.0"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), r"Adam: invalid beta parameter at index 0: 1.0"),
    (lambda ps: optim.AdamW(ps, betas=(0.9, -0.1)), r"AdamW: invalid beta parameter at index 1: -0.1"),
    (lambda ps: optim.AdamW(ps, eps=-1e-8), r"AdamW: invalid epsilon value eps=-1e-08"),
    (lambda ps: optim.Adam([{"params": ps, "lr": -2.0}]), r"Adam: invalid learning rate lr=-2.0"),
])
def test_hyperparameter_validation_names_optimizer_and_value(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make([mr.tensor(P0.copy(), requires_grad=True)])


# ----- state dicts and exact resume ------------------------------------------------------------
RESUME_CASES = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    "sgd_dampening": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.2),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-2),
    "adam_amsgrad": lambda ps: optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, betas=(0.8, 0.95)),
}


def _two_group_params(dtype=np.float32, device: str = "cpu"):
    a = mr.tensor(P0.astype(dtype), device=device, requires_grad=True)
    b = mr.tensor((P0[:4] * 0.5).reshape(2, 2).astype(dtype), device=device, requires_grad=True)
    return a, b


def _steps(opt, params, start: int, stop: int, device: str = "cpu") -> None:
    for t in range(start, stop):
        for p in params:
            host = to_numpy(p.data).astype(np.float64).ravel()
            g = (2.0 * host + 0.1 * np.cos(np.arange(host.size) + t)).reshape(p.shape)
            p.grad = mr.tensor(g.astype(p.data.dtype), device=device)
        opt.step()


@pytest.mark.parametrize("case", RESUME_CASES)
def test_exact_resume_through_save_and_load(case: str, tmp_path, device: str) -> None:
    make = RESUME_CASES[case]

    def groups(a, b):
        return [{"params": [a]}, {"params": [b], "lr": 0.02}]

    a, b = _two_group_params(device=device)
    straight = make(groups(a, b))
    _steps(straight, [a, b], 0, 5, device)

    a2, b2 = _two_group_params(device=device)
    first = make(groups(a2, b2))
    _steps(first, [a2, b2], 0, 2, device)
    mr.save_tree({"params": {"a": a2.data, "b": b2.data}, "optimizer": first.state_dict()}, tmp_path / "ckpt.npz")

    saved = mr.load_tree(tmp_path / "ckpt.npz")
    a3 = mr.tensor(saved["params"]["a"], device=device, requires_grad=True)
    b3 = mr.tensor(saved["params"]["b"], device=device, requires_grad=True)
    resumed = make(groups(a3, b3))
    resumed.load_state_dict(saved["optimizer"])
    _steps(resumed, [a3, b3], 2, 5, device)

    np.testing.assert_array_equal(to_numpy(a3.data), to_numpy(a.data))
    np.testing.assert_array_equal(to_numpy(b3.data), to_numpy(b.data))
    assert a3.data.dtype == np.float32


def test_state_dict_format() -> None:
    a, b = _two_group_params()
    opt = optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, amsgrad=True)
    _steps(opt, [a], 0, 1)  # only a gets state
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert list(sd["state"]) == [0]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] == 1
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.5 and sd["param_groups"][0]["betas"] == (0.9, 0.999)
    # arrays are copies: stepping on does not change a saved state dict
    saved = sd["state"][0]["exp_avg"].copy()
    _steps(opt, [a], 1, 2)
    np.testing.assert_array_equal(sd["state"][0]["exp_avg"], saved)


def test_load_state_dict_restores_hyperparameters_as_plain_values(tmp_path) -> None:
    a, b = _two_group_params()
    opt = optim.Adam([a, b], lr=0.1, betas=(0.8, 0.9))
    _steps(opt, [a, b], 0, 1)
    # a flat dotted-key file (mr.save) gives numbers back as 0-d arrays and lists as 0..n-1 dicts
    mr.save({"state": {"0": opt.state_dict()["state"][0], "1": opt.state_dict()["state"][1]},
             "param_groups": {"0": {k: v for k, v in opt.state_dict()["param_groups"][0].items()}}}, tmp_path / "f.npz")
    flat = mr.load(tmp_path / "f.npz")
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = [int(p) if p.isdigit() else p for p in key.split(".")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    fresh = optim.Adam(list(_two_group_params()), lr=0.7)
    fresh.load_state_dict(nested)
    group = fresh.param_groups[0]
    assert group["lr"] == 0.1 and type(group["lr"]) is float
    assert group["betas"] == (0.8, 0.9) and isinstance(group["betas"], tuple)
    assert group["amsgrad"] is False
    state = fresh.state[group["params"][0]]
    assert state["step"] == 1 and type(state["step"]) is int


def test_load_state_dict_errors() -> None:
    a, b = _two_group_params()
    opt = optim.SGD([a, b], lr=0.1, momentum=0.9)
    _steps(opt, [a, b], 0, 1)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="2 parameter groups, the optimizer has 1"):
        optim.SGD([{"params": [a, b]}], lr=0.1).load_state_dict(
            {"state": {}, "param_groups": [sd["param_groups"][0], sd["param_groups"][0]]})
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state dict, 1 in the optimizer"):
        optim.SGD([a], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="no 'param_groups'"):
        opt.load_state_dict({"state": {}})
    swapped = optim.SGD([b, a], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"shape \(6,\) does not match the parameter's \(2, 2\)"):
        swapped.load_state_dict(sd)
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="SGD: invalid learning rate lr=-1.0"):
        opt.load_state_dict(bad)


def test_save_tree_roundtrips_state_dicts_exactly(tmp_path) -> None:
    a, b = _two_group_params()
    opt = optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, amsgrad=True)
    _steps(opt, [a, b], 0, 2)
    sd = opt.state_dict()
    mr.save_tree({"optimizer": sd}, tmp_path / "o.npz")
    back = mr.load_tree(tmp_path / "o.npz")["optimizer"]
    assert back["param_groups"] == sd["param_groups"]  # tuples, floats, bools and lists as they were
    assert back["state"].keys() == sd["state"].keys()
    for i, entry in sd["state"].items():
        assert back["state"][i]["step"] == entry["step"] and type(back["state"][i]["step"]) is int
        np.testing.assert_array_equal(back["state"][i]["exp_avg"], entry["exp_avg"])


# ----- optional parity with torch.optim ---------------------------------------------------------
PARITY_CASES = {
    "sgd_nesterov_wd": ("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True)),
    "sgd_dampening_max": ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.25, maximize=True)),
    "adam_l2_amsgrad": ("Adam", dict(lr=0.01, weight_decay=1e-2, amsgrad=True)),
    "adamw": ("AdamW", dict(lr=0.02, betas=(0.85, 0.99), weight_decay=0.1)),
}


@pytest.mark.parametrize("case", PARITY_CASES)
def test_parity_with_torch_optim(case: str) -> None:
    torch = pytest.importorskip("torch")
    name, kw = PARITY_CASES[case]
    got, _, _ = run(lambda ps: getattr(optim, name)(ps, **kw), steps=8)
    tp = torch.tensor(P0.copy(), requires_grad=True)
    topt = getattr(torch.optim, name)([tp], **kw)
    for t in range(8):
        tp.grad = torch.from_numpy(grad_fn(tp.detach().numpy().copy(), t))
        topt.step()
    np.testing.assert_allclose(got, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
