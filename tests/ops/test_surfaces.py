"""The native surface (simdnn.ops) and the NumPy one (simdnn.reference) agree: the same ops, the
same signatures, the same errors for bad arguments and the same output shapes, as described once
in simdnn._opspec."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from simdnn import _core, _opspec, ops, reference

NAMES = sorted(_opspec.SPECS)


WINOGRAD_TWINS = [
    "WINOGRAD_2X2_AT",
    "WINOGRAD_2X2_BT",
    "WINOGRAD_2X2_G",
    "WINOGRAD_AT",
    "WINOGRAD_BT",
    "WINOGRAD_G",
    "conv2d_winograd",
    "conv2d_winograd_backward_data",
    "conv2d_winograd_backward_weights",
]


def test_both_surfaces_export_every_op_of_the_spec():
    """reference exports the twins of the ops, then the Winograd algorithm and its matrices."""
    assert ops.__all__ == NAMES == _opspec.NAMES
    assert reference.__all__ == NAMES + WINOGRAD_TWINS
    assert all(hasattr(reference, name) for name in reference.__all__)


@pytest.mark.parametrize("name", NAMES)
def test_signatures_are_equal(name):
    native, twin = (
        inspect.signature(getattr(ops, name)),
        inspect.signature(getattr(reference, name)),
    )
    assert native == twin  # names, order, kinds, defaults and annotations
    assert native.parameters  # explicit parameters, not (*args, **kwargs)
    assert all(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in native.parameters.values())


def _binding_parameters(fn: object) -> list[tuple[str, str | None]]:
    """(name, default as written) of a pybind11 function, from its signature line."""
    line = (fn.__doc__ or "").strip().splitlines()[0]
    inner = re.fullmatch(r"\w+\((.*)\) -> .*", line)
    assert inner, line
    params = []
    for part in inner.group(1).split(", "):
        name, _, rest = part.partition(":")
        default = rest.split(" = ", 1)[1] if " = " in rest else None
        params.append((name.strip(), default))
    return params


def _stub_parameters() -> dict[str, list[tuple[str, str | None]]]:
    """(name, default as written) of each function of simdnn/_core.pyi."""
    tree = ast.parse(Path(ops.__file__).with_name("_core.pyi").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            defaults = [None] * (
                len(node.args.posonlyargs + node.args.args) - len(node.args.defaults)
            )
            defaults += [ast.unparse(d) for d in node.args.defaults]
            defaults += [None if d is None else ast.unparse(d) for d in node.args.kw_defaults]
            out[node.name] = [(a.arg, d) for a, d in zip(args, defaults)]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_bindings_and_stub_take_the_parameters_of_the_python_surface(name):
    """The native function (its py::arg list), its stub in _core.pyi and the public function name
    the same parameters in the same order (ops passes them through positionally), with the same
    defaults where the native function has one."""
    public = inspect.signature(getattr(ops, name)).parameters
    binding = _binding_parameters(getattr(_core, name))
    stub = _stub_parameters()[name]
    assert [n for n, _ in binding] == [n for n, _ in stub] == list(public)
    for (n, native_default), (_, stub_default) in zip(binding, stub):
        if native_default is None:
            continue
        want = repr(public[n].default)
        assert stub_default == want, (n, stub_default, want)
        assert native_default == want, (n, native_default, want)


# ------------------------------------------------------------------------------------------------
# Valid calls: each op with arguments of every kind; fresh arrays for each surface (the updates
# work in place).

F32 = np.float32


def _x(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(F32)


def _calls() -> dict[str, Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]]:
    x, w = (2, 4, 9, 8), (6, 2, 3, 2)
    geom = {"stride": (2, 1), "padding": 1, "dilation": (1, 2), "groups": 2}
    y = _opspec.conv2d_output_shape(x, w, **{k: v for k, v in geom.items() if k != "groups"})
    pool = {"kernel_size": 3, "stride": (2, 1), "padding": (1, 0)}
    py = _opspec.pool2d_output_shape(x, **pool)
    bn = (5, 3, 4)
    return {
        "matmul": lambda: ((_x(3, 5), _x(5, 7)), {}),
        "gemm": lambda: ((_x(5, 3), _x(7, 5)), {"alpha": 2, "trans_a": True, "trans_b": True}),
        "conv2d": lambda: ((_x(*x), _x(*w), _x(6)), geom),
        "conv2d_backward_data": lambda: ((_x(*y), _x(*w), x), geom),
        "conv2d_backward_weights": lambda: ((_x(*x), _x(*y), w), geom),
        "max_pool2d": lambda: ((_x(*x),), pool),
        "max_pool2d_backward": lambda: (
            (_x(*py), reference.max_pool2d(_x(*x), **pool)[1], x),
            pool,
        ),
        "avg_pool2d": lambda: ((_x(*x),), {**pool, "count_include_pad": False}),
        "avg_pool2d_backward": lambda: ((_x(*py), x), {**pool, "count_include_pad": False}),
        "relu": lambda: ((_x(3, 4),), {}),
        "relu_backward": lambda: ((_x(3, 4), _x(3, 4)), {}),
        "bias_backward": lambda: (
            (_x(3, 4), _x(3, 4)),
            {"db": np.zeros(4, F32), "accumulate": True},
        ),
        "softmax_cross_entropy": lambda: ((_x(3, 4),), {"labels": np.array([0, 3, 1])}),
        "sgd_update": lambda: ((_x(7), _x(7), np.zeros(7, F32)), {"lr": 0.1, "momentum": 0.9}),
        "adam_update": lambda: (
            (_x(7), _x(7), np.zeros(7, F32), np.zeros(7, F32)),
            {"lr": 0.1, "step": 3},
        ),
        "batch_norm": lambda: (
            (_x(*bn), _x(3), _x(3), np.zeros(3, F32), np.ones(3, F32), True),
            {"momentum": 0.2},
        ),
        "batch_norm_backward": lambda: (
            (_x(*bn), _x(*bn), _x(3), _x(3), np.abs(_x(3)), True),
            {},
        ),
    }


CALLS = _calls()


def test_every_op_has_a_valid_call():
    assert sorted(CALLS) == NAMES


def _shapes(result: object) -> tuple[tuple[int, ...], ...] | None:
    if result is None:
        return None
    items = result if isinstance(result, tuple) else (result,)
    return tuple(np.shape(r) for r in items)


@pytest.mark.parametrize("name", NAMES)
def test_output_shapes_agree_with_the_spec(name):
    spec = _opspec.SPECS[name]
    args, kwargs = CALLS[name]()
    want = None if spec.output_shape is None else spec.output_shape(*args, **kwargs)
    for surface in (ops, reference):
        args, kwargs = CALLS[name]()
        assert _shapes(getattr(surface, name)(*args, **kwargs)) == want, surface.__name__


# ------------------------------------------------------------------------------------------------
# Bad arguments: one argument of a valid call replaced; both surfaces raise the same exception
# with the same message (which names the op and the argument).

BAD_CONV = [
    ("stride", 0),
    ("stride", (1, 0)),
    ("stride", 1.5),
    ("stride", (1, 2, 3)),
    ("stride", "2"),
    ("stride", 2**64),
    ("padding", -1),
    ("padding", (0, -2)),
    ("padding", None),
    ("dilation", 0),
    ("dilation", [1, 1.0]),
    ("groups", 0),
    ("groups", 1.5),
    ("groups", (2,)),
    ("algorithm", "fast"),
    ("algorithm", "Winograd"),
    ("algorithm", ""),
    ("algorithm", None),
    ("algorithm", 1),
    ("algorithm", b"auto"),
]
BAD_POOL = [
    ("kernel_size", 0),
    ("kernel_size", 2.0),
    ("kernel_size", (3, 3, 3)),
    ("stride", 0),
    ("stride", (2, -1)),
    ("padding", 2),
    ("padding", (0, 2)),
    ("padding", -1),
    ("padding", (1, 2**64)),
]
BAD_SCALARS = {
    "gemm": [("alpha", "1"), ("alpha", None), ("beta", True), ("beta", 1j)],
    "sgd_update": [
        ("lr", -0.1),
        ("lr", float("nan")),
        ("lr", "0.1"),
        ("momentum", -0.5),
        ("momentum", float("inf")),
        ("weight_decay", np.nan),
        ("weight_decay", None),
    ],
    "adam_update": [
        ("step", 0),
        ("step", 1.5),
        ("step", True),
        ("lr", -1e-3),
        ("beta1", 1.0),
        ("beta2", -0.1),
        ("beta2", "0.9"),
        ("eps", float("inf")),
        ("weight_decay", -1.0),
    ],
    "batch_norm": [
        ("eps", 0.0),
        ("eps", float("nan")),
        ("eps", "1e-5"),
        ("momentum", 1.5),
        ("momentum", -0.1),
        ("momentum", None),
    ],
}


def _read_only(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    a = np.zeros(shape, dtype)
    a.flags.writeable = False
    return a


def _bad_outputs() -> dict[str, list[tuple[str, object]]]:
    """out= values that both surfaces refuse, for the valid calls of conv2d and max_pool2d."""
    y = _opspec.conv2d_output_shape((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), 1, (1, 2))
    py = _opspec.pool2d_output_shape((2, 4, 9, 8), 3, (2, 1), (1, 0))
    wrong = (*py[:3], py[3] + 1)
    # A uint8 index array over the bytes of y's buffer: the right dtype and shape, but the two
    # outputs would overwrite each other.
    buf = np.zeros(int(np.prod(py)) * 4, np.uint8)
    shared = (buf.view(F32).reshape(py), buf[: int(np.prod(py))].reshape(py))
    good_y, good_idx = np.zeros(py, F32), np.zeros(py, np.uint8)
    return {
        "conv2d": [
            ("out", [0.0]),
            ("out", np.zeros(y, np.float64)),
            ("out", np.zeros(y, np.dtype(">f4"))),
            ("out", np.zeros(y, np.int32)),
            ("out", np.zeros(y[1:], F32)),
            ("out", np.zeros((*y[:3], y[3] + 1), F32)),
            ("out", _read_only(y, F32)),
        ],
        "bias_backward": [
            ("db", [0.0] * 4),
            ("db", None),  # accumulate=True without db
            ("db", np.zeros(4, np.float64)),
            ("db", np.zeros(4, np.dtype(">f4"))),
            ("db", np.zeros(5, F32)),
            ("db", np.zeros((1, 4), F32)),
            ("db", _read_only((4,), F32)),
        ],
        "softmax_cross_entropy": [
            ("labels", np.array([0.0, 3.0, 1.0])),
            ("labels", np.array([True, False, True])),
            ("labels", np.array([[0, 3, 1]])),
            ("labels", np.array([0, 3])),
            ("labels", np.array([0, 4, 1])),
            ("labels", np.array([0, -1, 1], np.int8)),
            ("labels", np.array([0, 2**63, 1], np.uint64)),
        ],
        "max_pool2d": [
            ("out", np.zeros(py, F32)),
            ("out", [good_y, good_idx]),
            ("out", (good_y,)),
            ("out", (good_y, good_idx, good_idx)),
            ("out", (None, good_idx)),
            ("out", (good_y, np.zeros(py, np.int32))),
            ("out", (np.zeros(py, np.float64), good_idx)),
            ("out", (np.zeros(wrong, F32), good_idx)),
            ("out", (good_y, np.zeros(wrong, np.uint8))),
            ("out", (_read_only(py, F32), good_idx)),
            ("out", (good_y, _read_only(py, np.uint8))),
            ("out", shared),
        ],
    }


def _bad_cases() -> list[tuple[str, str, object]]:
    cases = [(name, arg, v) for name, rows in _bad_outputs().items() for arg, v in rows]
    for name in ("conv2d", "conv2d_backward_data", "conv2d_backward_weights"):
        cases += [(name, arg, v) for arg, v in BAD_CONV]
    for name in ("max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward"):
        cases += [(name, arg, v) for arg, v in BAD_POOL]
    for name, rows in BAD_SCALARS.items():
        cases += [(name, arg, v) for arg, v in rows]
    return cases


def _raised(call: Callable[[], object]) -> tuple[type[BaseException], str]:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    return info.type, str(info.value)


def _case_id(v: object) -> str:
    """repr, but an array by its dtype, shape and writability (the out= cases)."""
    if isinstance(v, np.ndarray):
        return f"{v.dtype.str}{list(v.shape)}{'' if v.flags.writeable else 'ro'}"
    if isinstance(v, (tuple, list)) and any(isinstance(a, np.ndarray) for a in v):
        inner = ",".join(_case_id(a) for a in v)
        shared = len(v) == 2 and np.may_share_memory(v[0], v[1])
        return (f"({inner})" if isinstance(v, tuple) else f"[{inner}]") + " shared" * shared
    return repr(v)


@pytest.mark.parametrize(("name", "arg", "value"), _bad_cases(), ids=_case_id)
def test_bad_arguments_raise_the_same_error(name, arg, value):
    raised = []
    for surface in (ops, reference):
        args, kwargs = CALLS[name]()
        kwargs = {**kwargs, arg: value}
        raised.append(_raised(lambda: getattr(surface, name)(*args, **kwargs)))  # noqa: B023
    (native_type, native_msg), (twin_type, twin_msg) = raised
    assert native_type is twin_type
    assert native_msg == twin_msg
    assert native_msg.startswith(f"{name}: ")
    assert arg in native_msg


@pytest.mark.parametrize("name", ["conv2d", "conv2d_backward_data", "conv2d_backward_weights"])
def test_winograd_on_an_ineligible_geometry_is_refused_by_both(name):
    """The valid call's geometry (stride (2, 1), dilation (1, 2), groups 2, a 3x2 kernel) cannot
    run Winograd F(4x4, 3x3): a ValueError naming the op and the algorithm on both surfaces."""
    for surface in (ops, reference):
        args, kwargs = CALLS[name]()
        with pytest.raises(ValueError, match=rf"^{name}: .*winograd"):
            getattr(surface, name)(*args, **{**kwargs, "algorithm": "winograd"})


def test_nesterov_without_momentum_is_refused_by_both():
    for surface in (ops, reference):
        args, kwargs = CALLS["sgd_update"]()
        with pytest.raises(ValueError, match=r"^sgd_update: nesterov=True needs momentum > 0$"):
            surface.sgd_update(*args, **{**kwargs, "momentum": 0.0, "nesterov": True})


@pytest.mark.parametrize(
    ("x", "training", "running"),
    [((1, 3), True, True), ((1, 3, 1), True, False), ((4, 3), False, False)],
    ids=["one-value", "one-value-no-running", "eval-without-running"],
)
def test_batch_norm_statistics_errors_are_the_same(x, training, running):
    raised = []
    for surface in (ops, reference):
        stats = (np.zeros(3, F32), np.ones(3, F32)) if running else (None, None)
        raised.append(_raised(lambda: surface.batch_norm(_x(*x), None, None, *stats, training)))  # noqa: B023
    assert raised[0] == raised[1]


# One (C,) array of batch_norm in a dtype the native binding refuses for x's: float64 running
# statistics with float32 x (which NumPy would quietly mix in), the reverse, and dtypes no kernel
# takes; per argument, in training (the statistics are updated in place) and in evaluation.
BAD_CHANNEL_DTYPES = [
    (np.float32, np.float64),
    (np.float64, np.float32),
    (np.float32, np.int32),
    (np.float32, np.float16),
    (np.float32, np.dtype(">f4")),  # refused for the in-place statistics only
]


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("arg", ["weight", "bias", "running_mean", "running_var"])
@pytest.mark.parametrize(("x_dtype", "dtype"), BAD_CHANNEL_DTYPES, ids=repr)
def test_batch_norm_channel_dtype_errors_are_the_same(x_dtype, dtype, arg, training):
    def outcome(surface: Any) -> tuple[type[BaseException] | None, str]:
        x = _x(5, 3, 4).astype(x_dtype)
        arrays = {n: np.ones(3, x_dtype) for n in ("weight", "bias", "running_mean", "running_var")}
        arrays[arg] = np.ones(3, dtype)
        try:
            surface.batch_norm(x, *arrays.values(), training)
        except (TypeError, ValueError) as e:
            return type(e), str(e)
        return None, ""

    native, twin = outcome(ops), outcome(reference)
    assert native == twin
    byte_swapped = np.dtype(dtype).byteorder == ">"
    if not byte_swapped or (training and arg.startswith("running")):
        assert native[0] is TypeError
        assert native[1].startswith("batch_norm: ")
        assert f"'{arg}'" in native[1]


# ------------------------------------------------------------------------------------------------
# The output-size formula: one function, the one the layers use.


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [(9, 3, 1, 0, 1), (9, 3, 2, 1, 1), (8, 3, 3, 2, 2), (1, 1, 2**63 - 1, 0, 1), (5, 5, 1, 0, 1)],
)
def test_conv_out_size_is_the_kernels(size, kernel, stride, padding, dilation):
    x = _x(1, 1, size, 1)
    w = np.ones((1, 1, kernel, 1), F32)
    kw = {"stride": (stride, 1), "padding": (padding, 0), "dilation": (dilation, 1)}
    want = _opspec.conv_out_size(size, kernel, stride, padding, dilation)
    assert ops.conv2d(x, w, **kw).shape[2] == want
    assert reference.conv2d(x, w, **kw).shape[2] == want
