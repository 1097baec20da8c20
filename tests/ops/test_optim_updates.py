"""The fused optimiser updates, sgd_update and adam_update: every ISA and dtype against the NumPy
twin (arrays and lists of arrays, in place), any draw (hypothesis), hyper-parameter checks and
non-finite gradients."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

import simdnn
from helpers import F64, ISAS, as64, assert_same_classes, sprinkle
from simdnn import ops, reference
from strategies import (
    BAD_DTYPES,
    DTYPES,
    FLAGS,
    NOT_INTS,
    NOT_REALS,
    Draw,
    any_shapes,
    assert_bounded,
    assert_raises_bad_input,
    common,
    int_like,
    normal,
    operand,
    real_like,
)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n", [1, 33, 70_001])
def test_sgd_update_matches_twin(isa, dtype, rng, momentum, nesterov, weight_decay, n):
    if nesterov and not momentum:
        return
    p = rng.standard_normal(n).astype(dtype)
    v = rng.standard_normal(n).astype(dtype) if momentum else None
    p2, v2 = p.copy(), None if v is None else v.copy()
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        kw = {"lr": 0.1, "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        ops.sgd_update(p, g, v, **kw)
        reference.sgd_update(p2, g, v2, **kw)
        np.testing.assert_allclose(p, p2, rtol=tol, atol=tol)
        if v is not None:
            np.testing.assert_allclose(v, v2, rtol=tol, atol=tol)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("n", [1, 33, 70_001])
def test_adam_update_matches_twin(isa, dtype, rng, weight_decay, n):
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for step in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        kw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
        ops.adam_update(p, g, m, v, weight_decay=weight_decay, step=step, **kw)
        reference.adam_update(p2, g, m2, v2, weight_decay=weight_decay, step=step, **kw)
        np.testing.assert_allclose(p, p2, rtol=tol, atol=tol)
        np.testing.assert_allclose(m, m2, rtol=tol, atol=tol)
        np.testing.assert_allclose(v, v2, rtol=tol, atol=tol)


# Parameters of mixed sizes updated in one call: the threads split their concatenation (135,642
# elements, past two grains of 65,536), so ranges start and end inside arrays, at offsets that
# are no multiple of a vector, and cover several small arrays at once. Small enough for the
# valgrind run (tools/memcheck.sh runs this file).
MIXED = [1, 70_001, 63, 65_536, 5, 17, 19]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_update_of_many_parameters_at_once(isa, dtype, rng, momentum):
    ps = [rng.standard_normal(n).astype(dtype) for n in MIXED]
    gs = [rng.standard_normal(n).astype(dtype) for n in MIXED]
    vs = [rng.standard_normal(n).astype(dtype) for n in MIXED] if momentum else None
    want_p = [p.copy() for p in ps]
    want_v = None if vs is None else [v.copy() for v in vs]
    kw = {"lr": 0.1, "momentum": momentum, "weight_decay": 0.01}
    ops.sgd_update(ps, gs, vs, **kw)
    reference.sgd_update(want_p, gs, want_v, **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for got, want in zip(ps + (vs or []), want_p + (want_v or [])):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_adam_update_of_many_parameters_at_once(isa, dtype, rng):
    ps = [rng.standard_normal(n).astype(dtype) for n in MIXED]
    gs = [rng.standard_normal(n).astype(dtype) for n in MIXED]
    ms = [rng.standard_normal(n).astype(dtype) for n in MIXED]
    vs = [np.abs(rng.standard_normal(n)).astype(dtype) for n in MIXED]
    want = [[a.copy() for a in arrays] for arrays in (ps, ms, vs)]
    kw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.05, "step": 3}
    ops.adam_update(ps, gs, ms, vs, **kw)
    reference.adam_update(want[0], gs, want[1], want[2], **kw)
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for got, w in zip(ps + ms + vs, want[0] + want[1] + want[2]):
        np.testing.assert_allclose(got, w, rtol=tol, atol=tol)


def test_update_bad_input():
    p = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.sgd_update(np.zeros(16, np.float32)[::2], p, None, lr=0.1)
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ops.sgd_update(ro, p, None, lr=0.1)
    with pytest.raises(TypeError, match="'param' is float32 but 'grad' is float64"):
        ops.sgd_update(p, np.zeros(8), None, lr=0.1)
    with pytest.raises(
        ValueError, match="'grad' has shape \\(9,\\) but 'param' has shape \\(8,\\)"
    ):
        ops.sgd_update(p, np.zeros(9, np.float32), None, lr=0.1)
    with pytest.raises(ValueError, match="needs a 'velocity'"):
        ops.sgd_update(p, p.copy(), None, lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match="'param' must be a NumPy array"):
        ops.sgd_update([0.0], p, None, lr=0.1)
    with pytest.raises(ValueError, match="step must be >= 1"):
        ops.adam_update(p, p.copy(), p.copy(), p.copy(), lr=0.1, step=0)
    with pytest.raises(TypeError, match="int64"):
        ops.relu(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="must match"):
        ops.relu_backward(np.zeros(3, np.float32), np.zeros(4, np.float32))


# ------------------------------------------------------------------------------------------------
# Properties (hypothesis, marker property): any draw of shapes, layouts and arguments
# against the float64 twin.


def _optimizer_state(
    draw: Draw, rng: np.random.Generator, dtype: type
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A model's worth of parameters (1 to 4 arrays of any shapes), gradients in drawn layouts,
    and two state arrays per parameter (non-negative, as Adam's second moment)."""
    shapes = [draw(any_shapes()) for _ in range(draw(st.integers(1, 4)))]
    params = [normal(rng, s, dtype) for s in shapes]
    grads = [operand(draw, normal(rng, s, dtype)) for s in shapes]
    m = [normal(rng, s, dtype) for s in shapes]
    v = [np.asarray(np.abs(normal(rng, s, dtype))) for s in shapes]
    return params, grads, m, v


def _copies(arrays: list[np.ndarray], dtype: type | None = None) -> list[np.ndarray]:
    return [np.array(a, dtype=dtype) for a in arrays]


@pytest.mark.property
@given(st.data())
def test_sgd_update_matches_twin_on_any_draw(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    params, grads, vel, _ = _optimizer_state(draw, rng, dtype)
    momentum = real_like(draw, draw(st.sampled_from([0.0, 0.5, 0.9])))
    kw = {
        "lr": real_like(draw, draw(st.floats(0, 2))),
        "momentum": momentum,
        "nesterov": bool(float(momentum)) and draw(FLAGS),
        "weight_decay": real_like(draw, draw(st.sampled_from([0.0, 1e-4, 0.5]))),
    }
    as_list = draw(st.booleans()) or len(params) > 1
    note(f"{kw} as_list={as_list}")
    want_p, want_v = _copies(params, F64), _copies(vel, F64)
    velocity = vel if float(momentum) else draw(st.sampled_from([None, vel]))
    with simdnn.use_isa(isa):
        if as_list:
            ops.sgd_update(params, grads, velocity, **kw)
        else:
            ops.sgd_update(params[0], grads[0], None if velocity is None else velocity[0], **kw)
    n = len(params) if as_list else 1
    plain = {k: (float(v) if k != "nesterov" else v) for k, v in kw.items()}
    reference.sgd_update(
        want_p[:n], _copies(grads[:n], F64), want_v[:n] if float(momentum) else None, **plain
    )
    for got, want in zip(
        params[:n] + (vel[:n] if float(momentum) else []),
        want_p[:n] + (want_v[:n] if float(momentum) else []),
    ):
        mag = np.abs(want) + 4.0
        assert_bounded(got, want, mag, 8, dtype, "sgd_update")


@pytest.mark.property
@given(st.data())
def test_adam_update_matches_twin_on_any_draw(data: st.DataObject) -> None:
    draw = data.draw
    isa, dtype, rng = common(draw)
    params, grads, m, v = _optimizer_state(draw, rng, dtype)
    kw = {
        "lr": real_like(draw, draw(st.floats(0, 0.1))),
        "beta1": real_like(draw, draw(st.sampled_from([0.0, 0.5, 0.9]))),
        "beta2": real_like(draw, draw(st.sampled_from([0.0, 0.9, 0.999]))),
        "eps": real_like(draw, draw(st.sampled_from([1e-8, 1e-3, 0.1]))),
        "weight_decay": real_like(draw, draw(st.sampled_from([0.0, 1e-2]))),
        "step": int_like(draw, draw(st.integers(1, 1000))),
    }
    note(f"{kw}")
    want = [_copies(a, F64) for a in (params, m, v)]
    g64 = _copies(grads, F64)
    plain = {k: (int(x) if k == "step" else float(x)) for k, x in kw.items()}
    lr, b1, b2, wd, step = (plain[k] for k in ("lr", "beta1", "beta2", "weight_decay", "step"))
    # The magnitudes of the terms of each result (for the rounding bound), from the inputs: the
    # first moment may cancel (beta1 * m + (1 - beta1) * g near 0), and the step divides it by
    # sqrt(v) + eps, which amplifies its rounding error when v is small.
    # The gradient itself may cancel (g + weight_decay * p near 0), and the second moment's
    # error (first order: the magnitudes below, times u) moves the step by half its relative size.
    g_mag = [np.abs(g) + wd * np.abs(p) for g, p in zip(g64, want[0])]
    g_abs = [np.abs(g + wd * p) for g, p in zip(g64, want[0])]
    m_mag = [b1 * np.abs(m0) + (1 - b1) * gm for m0, gm in zip(want[1], g_mag)]
    v_mag = [b2 * v0 + (1 - b2) * gm * gm for v0, gm in zip(want[2], g_mag)]
    v_err = [b2 * v0 + (1 - b2) * 2 * ga * gm for v0, ga, gm in zip(want[2], g_abs, g_mag)]
    reference.adam_update(want[0], g64, want[1], want[2], **plain)
    c1, c2 = 1 - b1**step, 1 - b2**step
    p_mag = [
        np.abs(p)
        + lr
        / c1
        * (mm + np.abs(m1) * (1 + ve / np.maximum(v1, 1e-300)))
        / (np.sqrt(v1 / c2) + plain["eps"])
        for p, mm, m1, v1, ve in zip(want[0], m_mag, want[1], want[2], v_err)
    ]
    with simdnn.use_isa(isa):
        ops.adam_update(params, grads, m, v, **kw)
    for got_list, want_list, mags, what in zip(
        (params, m, v), want, (p_mag, m_mag, v_mag), ("param", "exp_avg", "exp_avg_sq")
    ):
        for got, w, mag in zip(got_list, want_list, mags):
            assert_bounded(got, w, mag, 16, dtype, f"adam_update {what}")


@st.composite
def bad_elementwise_calls(draw: Draw) -> tuple[str, Callable[[], object], type[Exception]]:
    op = draw(st.sampled_from(["relu", "relu_backward", "sgd", "adam"]))
    bad = draw(
        st.sampled_from(
            [
                "dtype",
                "mixed",
                "shape",
                "not_array",
                "hyper_type",
                "hyper_range",
                "layout",
                "readonly",
                "list_length",
                "step",
            ]
        )
    )
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(any_shapes())
    good = np.ones(shape, dtype)
    exc: type[Exception] = ValueError
    what = f"{op}: {bad} shape={shape}"
    if op in ("relu", "relu_backward"):
        x, dy = good, good.copy()
        if bad in ("dtype", "hyper_type", "step", "readonly"):
            x, exc = np.ones(shape, draw(BAD_DTYPES)), TypeError
        elif bad == "mixed":
            dy, exc = dy.astype(np.float32 if dtype == np.float64 else np.float64), TypeError
            if op == "relu":
                x = np.full(shape, "a")  # a string array, even when empty
        elif bad in ("shape", "layout", "list_length", "hyper_range"):
            dy = np.ones((*shape, 2), dtype)
            if op == "relu":
                x, exc = np.array([[1.0], [1.0, 2.0]], dtype=object), TypeError
        else:
            x, exc = "not an array", TypeError
        if op == "relu":
            return what, lambda: ops.relu(x), exc
        return what, lambda: ops.relu_backward(dy, x), exc
    # Optimisers: param, grad and states of one shape and dtype, writeable and C-contiguous.
    p, g, s1, s2 = good.copy(), good.copy(), np.zeros_like(good), np.zeros_like(good)
    kw: dict[str, object] = {"lr": 0.1}
    if op == "sgd":
        kw["momentum"] = 0.9
    if bad == "dtype":
        p, exc = p.astype(draw(BAD_DTYPES)), TypeError
    elif bad == "mixed":
        g, exc = g.astype(np.float32 if dtype == np.float64 else np.float64), TypeError
    elif bad == "shape":
        g = np.ones((*shape, 1), dtype)
    elif bad == "not_array":
        g, exc = draw(st.sampled_from(["x", None, object()])), TypeError
    elif bad == "hyper_type":
        name = draw(
            st.sampled_from(
                ["lr", "weight_decay"] + (["momentum"] if op == "sgd" else ["beta1", "eps", "step"])
            )
        )
        kw[name], exc = draw(NOT_REALS if name != "step" else NOT_INTS), TypeError
    elif bad == "hyper_range":
        names = ["lr", "weight_decay"] + (
            ["momentum"] if op == "sgd" else ["beta1", "beta2", "eps"]
        )
        name = draw(st.sampled_from(names))
        kw[name] = draw(
            st.sampled_from(
                [-1e-9, -1.0, math.nan, math.inf, -math.inf]
                + ([1.0, 1.5] if name.startswith("beta") else [])
            )
        )
    elif bad == "layout":  # a strided view: not C-contiguous, cannot be updated in place
        p = np.ones((*shape, 2), dtype)[..., 0] if good.size > 1 else np.ones(4, dtype)[::2]
        g, s1, s2 = np.ones(p.shape, dtype), np.zeros(p.shape, dtype), np.zeros(p.shape, dtype)
    elif bad == "readonly":
        p.flags.writeable = False
    elif bad == "list_length":
        p, g = [p, p.copy()], [g]
        s1, s2 = [s1, s1.copy()], [s2, s2.copy()]
    elif bad == "step":
        if op == "adam":
            kw["step"] = draw(st.sampled_from([0, -1, -(2**40)]))
        else:
            kw["nesterov"], kw["momentum"] = True, 0.0
    note(f"{what} kw={kw}")
    if op == "sgd":
        return what, lambda: ops.sgd_update(p, g, s1, **kw), exc
    return what, lambda: ops.adam_update(p, g, s1, s2, **kw), exc


@pytest.mark.property
@given(st.data())
def test_elementwise_and_optimizers_reject_bad_input(data: st.DataObject) -> None:
    what, call, exc = data.draw(bad_elementwise_calls())
    with simdnn.use_isa(data.draw(st.sampled_from(ISAS))):
        assert_raises_bad_input(call, exc, what)


# ------------------------------------------------------------------------------------------------
# Regressions (marker regression): one reproducer per bug found, named after it.


# ------------------------------------------------------------------------------------------------
# cpp/elementwise: Adam's 1 - beta was computed in float32 (1 - 0.999f = 0.00099998713).


@pytest.mark.regression
def test_adam_one_minus_beta_is_rounded_once(isa):
    p = np.zeros(37, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    with simdnn.use_isa(isa):
        ops.adam_update(p, np.ones_like(p), m, v, lr=1e-3, beta1=0.9, beta2=0.999)
    np.testing.assert_array_equal(v, np.float32(1.0 - 0.999))  # was 0.00099998713
    np.testing.assert_array_equal(m, np.float32(1.0 - 0.9))


# ------------------------------------------------------------------------------------------------
# python/simdnn/ops.py: optimiser steps truncated a float step and took any hyper-parameter.


@pytest.mark.regression
@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({"step": 1.5}, TypeError),
        ({"step": True}, TypeError),
        ({"step": 0}, ValueError),
        ({"beta1": 1.0}, ValueError),
        ({"beta2": -0.1}, ValueError),
        ({"lr": float("nan")}, ValueError),
        ({"lr": -1e-3}, ValueError),
        ({"eps": float("inf")}, ValueError),
        ({"weight_decay": -1.0}, ValueError),
    ],
)
def test_adam_hyper_parameters_are_checked(kw, exc):
    p = np.ones(5, np.float32)
    with pytest.raises(exc, match="adam_update"):
        ops.adam_update(p, p.copy(), np.zeros_like(p), np.zeros_like(p), **{"lr": 0.1, **kw})
    np.testing.assert_array_equal(p, 1.0)  # nothing was updated


@pytest.mark.regression
@pytest.mark.parametrize(
    "kw",
    [
        {"lr": -0.1},
        {"momentum": -0.5},
        {"momentum": 0.0, "nesterov": True},
        {"weight_decay": np.nan},
    ],
)
def test_sgd_hyper_parameters_are_checked(kw):
    p = np.ones(5)
    with pytest.raises(ValueError, match="sgd_update"):
        ops.sgd_update(p, p.copy(), np.zeros_like(p), **{"lr": 0.1, "momentum": 0.9, **kw})
    np.testing.assert_array_equal(p, 1.0)


# ------------------------------------------------------------------------------------------------
# Non-finite values (marker nonfinite): NaN, +Inf, -Inf and zeros sprinkled into every
# input; the class of each element must be the twin's.


def _optimizer_cases() -> list[tuple[str, Callable[..., None], dict[str, object], int]]:
    return [
        ("sgd", ops.sgd_update, {"lr": 0.1}, 0),
        ("sgd-momentum", ops.sgd_update, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, 1),
        ("adam", ops.adam_update, {"lr": 0.01, "step": 3}, 2),
    ]


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize(("name", "op", "kw", "states"), _optimizer_cases(), ids=lambda v: "")
def test_optimizer_updates_non_finite(isa, dtype, rng, name, op, kw, states):
    """A NaN or Inf gradient poisons exactly its parameter (and state), as in the twin."""
    size = 67
    param = rng.standard_normal(size).astype(dtype)
    grad = sprinkle(rng, (size,), dtype, 0.05)
    state = [np.abs(rng.standard_normal(size)).astype(dtype) for _ in range(states)]
    p64, g64 = as64(param, grad)
    s64 = as64(*state)
    if states == 0:
        op(param, grad, None, **kw)
        getattr(reference, op.__name__)(p64, g64, None, **kw)
    else:
        op(param, grad, *state, **kw)
        getattr(reference, op.__name__)(p64, g64, *s64, **kw)
    assert_same_classes(param, p64, name)
    for s, w in zip(state, s64):
        np.testing.assert_array_equal(np.isnan(s), np.isnan(w))
