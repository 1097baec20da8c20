"""The tape: every differentiable op against central finite differences in float64 (inputs kept
away from kinks) and against its NumPy-backend twin; composite models (residual block, a layer
used twice, branches joined by concatenation, tied weights, BatchNorm in train and eval) through
gradcheck; the PyTorch training loop; engine semantics (accumulation, no_grad, detach, errors).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
import pytest

import simdnn
from simdnn import Tensor, nn, optim
from simdnn import functional as F
from simdnn.autograd import as_array

Fn = Callable[..., Tensor]


def _away_from_zero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal values pushed at least 0.1 from 0 (ReLU's kink)."""
    x = rng.standard_normal(shape)
    return np.where(x >= 0, x + 0.1, x - 0.1)


def _distinct(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values at least 1/size apart, so that no max-pool window has a near tie."""
    n = int(np.prod(shape))
    return rng.permutation(np.arange(n, dtype=np.float64)).reshape(shape) / n * 4 - 2


def check_gradients(fn: Fn, inputs: list[np.ndarray], seed: int = 0, samples: int = 10) -> None:
    """d sum(fn(*inputs) * g) / d input, by the tape, against central differences."""
    rng = np.random.default_rng(seed)
    arrays = [np.array(a, dtype=np.float64) for a in inputs]
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    g = rng.standard_normal(out.shape)
    (out * g).sum().backward()
    eps = 1e-6

    def value() -> float:
        return float(np.sum(as_array(fn(*[Tensor(a) for a in arrays])) * g))

    for k, (a, t) in enumerate(zip(arrays, tensors)):
        assert t.grad is not None, f"input {k} got no gradient"
        assert t.grad.shape == a.shape
        for i in rng.choice(a.size, size=min(samples, a.size), replace=False):
            old = a.flat[i]
            a.flat[i] = old + eps
            up = value()
            a.flat[i] = old - eps
            down = value()
            a.flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - t.grad.flat[i]) < 2e-6 * max(1.0, abs(numeric)), (k, i)


def check_backends(fn: Fn, inputs: list[np.ndarray], dtype: type, seed: int = 0) -> None:
    """The native kernels and the NumPy twins give the same result and input gradients."""
    rng = np.random.default_rng(seed)
    results = {}
    for backend in ("native", "numpy"):
        tensors = [Tensor(np.array(a, dtype=dtype), requires_grad=True) for a in inputs]
        with simdnn.use_backend(backend):
            out = fn(*tensors)
            g = np.random.default_rng(seed).standard_normal(out.shape).astype(dtype)
            (out * g).sum().backward()
        results[backend] = (out.data, [t.grad for t in tensors])
    del rng
    tol = 2e-4 if dtype == np.float32 else 1e-10
    (y_n, g_n), (y_r, g_r) = results["native"], results["numpy"]
    assert y_n.dtype == dtype
    np.testing.assert_allclose(y_n, y_r, rtol=tol, atol=tol)
    for a, b in zip(g_n, g_r):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def _rng_dropout(x: Tensor) -> Tensor:
    return F.dropout(x, 0.3, True, np.random.default_rng(7))


def _bn_train(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    c, dt = x.shape[1], x.dtype
    return F.batch_norm(x, np.zeros(c, dt), np.ones(c, dt), w, b, training=True)


def _bn_eval(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    c = x.shape[1]
    mean = np.linspace(-0.5, 0.5, c).astype(x.dtype)
    var = np.linspace(0.5, 2.0, c).astype(x.dtype)
    return F.batch_norm(x, mean, var, w, b, training=False)


def _sliced(x: Tensor) -> Tensor:
    return x[1:, ::2] * 2.0 + x[:-1, 1::2]


def _fancy(x: Tensor) -> Tensor:
    return x[np.array([0, 2, 0, 1])]  # a repeated row: its gradients add up


# (name, function, input makers): each maker takes a generator and returns one float64 input.
OPS: list[tuple[str, Fn, list[Callable[[np.random.Generator], np.ndarray]]]] = [
    ("add-broadcast", lambda a, b: a + b,
     [lambda r: r.standard_normal((4, 3)), lambda r: r.standard_normal((3,))]),
    ("sub-broadcast", lambda a, b: a - b,
     [lambda r: r.standard_normal((2, 1, 3)), lambda r: r.standard_normal((4, 1))]),
    ("mul-broadcast", lambda a, b: a * b,
     [lambda r: r.standard_normal((4, 3)), lambda r: r.standard_normal((4, 1))]),
    ("div", lambda a, b: a / b,
     [lambda r: r.standard_normal((3, 5)), lambda r: r.uniform(0.5, 2.0, (5,))]),
    ("matmul", lambda a, b: a @ b,
     [lambda r: r.standard_normal((5, 7)), lambda r: r.standard_normal((7, 3))]),
    ("neg-pow", lambda a: (-a) ** 3, [lambda r: r.standard_normal((3, 4))]),
    ("exp-log", lambda a: (a.exp() + 1.0).log(), [lambda r: r.standard_normal((3, 4))]),
    ("sum-axis", lambda a: a.sum(axis=1), [lambda r: r.standard_normal((3, 4, 2))]),
    ("sum-keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True),
     [lambda r: r.standard_normal((3, 4, 2))]),
    ("mean", lambda a: a.mean(axis=0) * a.mean(), [lambda r: r.standard_normal((5, 3))]),
    ("reshape-flatten", lambda a: a.reshape(6, 4).flatten(),
     [lambda r: r.standard_normal((2, 3, 4))]),
    ("transpose", lambda a: a.transpose(2, 0, 1) * a.transpose(2, 1, 0).sum(axis=2)[:, None, :],
     [lambda r: r.standard_normal((2, 4, 3))]),
    ("slicing", _sliced, [lambda r: r.standard_normal((5, 6))]),
    ("fancy-index", _fancy, [lambda r: r.standard_normal((3, 4))]),
    ("concatenate", lambda a, b: simdnn.concatenate([a, b * 2.0, a], axis=1),
     [lambda r: r.standard_normal((3, 2)), lambda r: r.standard_normal((3, 4))]),
    ("stack", lambda a, b: simdnn.stack([a, b], axis=1),
     [lambda r: r.standard_normal((3, 2)), lambda r: r.standard_normal((3, 2))]),
    ("linear", F.linear, [lambda r: r.standard_normal((5, 7)), lambda r: r.standard_normal((7, 3)),
                          lambda r: r.standard_normal(3)]),
    # Pre-activations at least 1.75 from ReLU's kink: x in [0.5, 1.5], the weights of columns
    # 0 and 2 positive and of column 1 negative (an inactive unit, whose gradients are zero).
    ("linear-relu", lambda x, w, b: F.linear(x, w, b, "relu"),
     [lambda r: r.uniform(0.5, 1.5, (5, 7)),
      lambda r: r.uniform(0.5, 1.0, (7, 3)) * np.array([1.0, -1.0, 1.0]),
      lambda r: 0.1 * r.standard_normal(3)]),
    ("conv2d", lambda x, w, b: F.conv2d(x, w, b, 1, 1),
     [lambda r: r.standard_normal((2, 3, 6, 5)), lambda r: r.standard_normal((4, 3, 3, 3)),
      lambda r: r.standard_normal(4)]),
    ("conv2d-strided-dilated-grouped", lambda x, w: F.conv2d(x, w, None, (2, 1), (1, 2), (1, 2), 2),
     [lambda r: r.standard_normal((2, 4, 7, 8)), lambda r: r.standard_normal((6, 2, 3, 2))]),
    ("conv2d-depthwise", lambda x, w: F.conv2d(x, w, None, 1, 1, 1, 3),
     [lambda r: r.standard_normal((2, 3, 5, 5)), lambda r: r.standard_normal((3, 1, 3, 3))]),
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, 2, 1, 1),
     [lambda r: r.standard_normal((2, 3, 11)), lambda r: r.standard_normal((4, 3, 3)),
      lambda r: r.standard_normal(4)]),
    ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1), [lambda r: _distinct(r, (2, 3, 7, 6))]),
    ("max_pool1d", lambda x: F.max_pool1d(x, 2), [lambda r: _distinct(r, (2, 3, 9))]),
    ("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1, False),
     [lambda r: r.standard_normal((2, 3, 7, 6))]),
    ("avg_pool1d", lambda x: F.avg_pool1d(x, 3, 2, 1), [lambda r: r.standard_normal((2, 3, 9))]),
    ("adaptive_avg_pool2d",
     lambda x: F.adaptive_avg_pool2d(x, 1) * F.adaptive_avg_pool2d(x, 2).sum(),
     [lambda r: r.standard_normal((2, 3, 4, 6))]),
    ("global_avg_pool2d", F.global_avg_pool2d, [lambda r: r.standard_normal((2, 3, 4, 5))]),
    ("relu", F.relu, [lambda r: _away_from_zero(r, (4, 9))]),
    ("leaky_relu", lambda x: F.leaky_relu(x, 0.1), [lambda r: _away_from_zero(r, (4, 9))]),
    ("sigmoid", F.sigmoid, [lambda r: r.standard_normal((4, 9))]),
    ("tanh", F.tanh, [lambda r: r.standard_normal((4, 9))]),
    ("softmax", lambda x: F.softmax(x, 0), [lambda r: r.standard_normal((4, 9))]),
    ("log_softmax", F.log_softmax, [lambda r: r.standard_normal((4, 9))]),
    ("dropout", _rng_dropout, [lambda r: r.standard_normal((6, 7))]),
    ("batch_norm-train-1d", _bn_train,
     [lambda r: r.standard_normal((8, 5)) * 3 + 1, lambda r: r.uniform(0.5, 2, 5),
      lambda r: r.standard_normal(5)]),
    ("batch_norm-train-2d", _bn_train,
     [lambda r: r.standard_normal((3, 4, 5, 3)), lambda r: r.uniform(0.5, 2, 4),
      lambda r: r.standard_normal(4)]),
    ("batch_norm-eval", _bn_eval,
     [lambda r: r.standard_normal((3, 4, 5)), lambda r: r.uniform(0.5, 2, 4),
      lambda r: r.standard_normal(4)]),
    ("cross_entropy", lambda x: F.cross_entropy(x, np.array([0, 2, 1, 2])),
     [lambda r: r.standard_normal((4, 3))]),
    ("mse_loss", F.mse_loss,
     [lambda r: r.standard_normal((4, 3)), lambda r: r.standard_normal((4, 3))]),
    ("bce_with_logits", lambda x: F.binary_cross_entropy_with_logits(x, np.full((4, 3), 0.3)),
     [lambda r: r.standard_normal((4, 3)) * 3]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fn", "makers"), OPS, ids=[op[0] for op in OPS])
def test_op_gradients_match_finite_differences(name, fn, makers):
    rng = np.random.default_rng(11)
    check_gradients(fn, [make(rng) for make in makers])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("name", "fn", "makers"), OPS, ids=[op[0] for op in OPS])
def test_op_native_and_numpy_backends_agree(name, fn, makers, dtype):
    rng = np.random.default_rng(12)
    check_backends(fn, [make(rng) for make in makers], dtype)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_linear_adds_bias_and_relu_in_the_gemm(backend, activation, monkeypatch):
    """The bias and the ReLU are the GEMM's epilogue: one gemm call, no c, no separate pass or
    relu call; backward is one bias_backward call (the gate and db) and the two products. The
    bias is untouched, the results and gradients those of the unfused formulas."""
    surface = simdnn.ops if backend == "native" else simdnn.reference
    calls: list[tuple[str, dict]] = []
    for name in ("gemm", "matmul", "relu", "relu_backward", "bias_backward"):
        real = getattr(surface, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, kwargs))
            return _real(*args, **kwargs)

        monkeypatch.setattr(surface, name, spy)
    rng = np.random.default_rng(5)
    x, w, b = (Tensor(rng.standard_normal(s), requires_grad=True) for s in [(5, 7), (7, 3), (3,)])
    bias_before = b.data.copy()
    with simdnn.use_backend(backend):
        y = F.linear(x, w, b, activation)
        forward = list(calls)
        g = rng.standard_normal(y.shape)
        (y * g).sum().backward()
    backward = [name for name, _ in calls[len(forward) :]]
    assert [name for name, _ in forward] == ["gemm"], forward
    assert forward[0][1]["relu"] is (activation == "relu")
    assert "c" not in forward[0][1]
    np.testing.assert_array_equal(forward[0][1]["bias"], bias_before)
    assert sorted(backward) == ["bias_backward", "gemm", "gemm"], backward
    assert not np.shares_memory(y.data, b.data)
    np.testing.assert_array_equal(b.data, bias_before)
    pre = x.data @ w.data + b.data
    gate = pre > 0 if activation else np.ones_like(pre, bool)
    np.testing.assert_allclose(y.data, np.where(gate, pre, 0), rtol=1e-13, atol=1e-13)
    gp = g * gate
    np.testing.assert_allclose(x.grad, gp @ w.data.T, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(w.grad, x.data.T @ gp, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(b.grad, gp.sum(axis=0), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_linear_casts_a_bias_of_another_dtype(backend):
    """A float64 bias on a float32 layer is cast to the product's dtype on both backends (it was
    before the bias moved into the GEMM's epilogue, whose kernel takes one dtype)."""
    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with simdnn.use_backend(backend):
        y = F.linear(x, w, np.arange(4.0), "relu")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, 3 + np.arange(4)[None, :].repeat(2, 0))


def test_linear_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="linear: activation must be None or 'relu', got 'tanh'"):
        F.linear(np.ones((2, 3)), np.ones((3, 4)), None, "tanh")


# ------------------------------------------------------------------------------------------------
# Composite models through gradcheck (kinks are detected and skipped, so every error counts)


class TwoBranch(nn.Module):
    """Two convolution branches joined by concatenation along the channels."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(3)
        self.a = nn.Conv2d(2, 3, 3, padding=1, rng=rng)
        self.b = nn.Conv2d(2, 2, 1, rng=rng)
        self.head = nn.Linear(5 * 4 * 4, 3, rng=rng)

    def forward(self, x):
        joined = simdnn.concatenate([F.tanh(self.a(x)), F.sigmoid(self.b(x))], axis=1)
        return self.head(joined.flatten(1))


class TiedAutoencoder(nn.Module):
    """Decoder weights tied to the encoder's (transposed), plus two layers sharing a Parameter."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(4)
        self.enc = nn.Linear(6, 4, rng=rng)
        self.mid = nn.Linear(4, 4, rng=rng)
        self.mid2 = nn.Linear(4, 4, rng=rng)
        self.mid2.weight = self.mid.weight  # tied
        self.out_bias = nn.Parameter(np.zeros(6))

    def forward(self, x):
        h = F.tanh(self.enc(x))
        h = F.tanh(self.mid2(F.tanh(self.mid(h))))
        return F.linear(h, self.enc.weight.T, self.out_bias)


def residual_block(c: int, rng: np.random.Generator) -> nn.Module:
    return nn.Residual(
        nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, rng=rng),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, rng=rng),
        )
    )


def composite_models() -> dict[str, tuple[nn.Module, tuple[int, ...], str]]:
    rng = np.random.default_rng(0)
    relu = nn.ReLU()
    twice = nn.Linear(6, 6, rng=rng)
    twice_relu = nn.Linear(6, 6, rng=rng)  # fused with its ReLU, both times
    return {
        "relu-object-reused": (
            nn.Sequential(nn.Linear(4, 8, rng=rng), relu, nn.Linear(8, 8, rng=rng), relu,
                          nn.Linear(8, 3, rng=rng)),
            (16, 4), "ce",
        ),
        "linear-relu-applied-twice": (
            nn.Sequential(nn.Linear(4, 6, rng=rng), nn.ReLU(), twice_relu, nn.ReLU(), twice_relu,
                          nn.ReLU(), nn.Linear(6, 3, rng=rng)),
            (8, 4), "ce",
        ),
        "linear-applied-twice": (
            nn.Sequential(nn.Linear(4, 6, rng=rng), nn.Tanh(), twice, nn.Tanh(), twice,
                          nn.Linear(6, 3, rng=rng)),
            (8, 4), "ce",
        ),
        "residual-convnet": (
            nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, rng=rng), nn.ReLU(), residual_block(4, rng),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 3, rng=rng)),
            (4, 1, 6, 6), "ce",
        ),
        "branches-concatenated": (TwoBranch(), (3, 2, 4, 4), "ce"),
        "tied-weights": (TiedAutoencoder(), (5, 6), "mse"),
        "batchnorm-mlp": (
            nn.Sequential(nn.Linear(5, 7, rng=rng), nn.BatchNorm1d(7), nn.Tanh(),
                          nn.Linear(7, 3, rng=rng)),
            (9, 5), "ce",
        ),
        "conv1d-net": (
            nn.Sequential(nn.Conv1d(2, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.MaxPool1d(2),
                          nn.AvgPool1d(2), nn.Flatten(), nn.Linear(4 * 2, 3, rng=rng)),
            (5, 2, 8), "ce",
        ),
        "global-pool": (
            nn.Sequential(nn.Conv2d(2, 5, 3, rng=rng), nn.LeakyReLU(0.2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3, rng=rng)),
            (4, 2, 5, 5), "ce",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(composite_models()))
def test_composite_models_pass_gradcheck(name):
    model, shape, kind = composite_models()[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    if kind == "ce":
        loss, y = nn.CrossEntropyLoss(), rng.integers(0, 3, shape[0])
    else:
        loss, y = nn.MSELoss(), rng.standard_normal(shape)
    model.train()  # gradcheck switches its copy to eval: BatchNorm uses running statistics
    result = simdnn.gradcheck(model, loss, x, y, entries=12)
    assert set(result) == {n for n, _ in model.named_parameters()}
    assert all(n > 0 for n in result.checked.values()), result.checked
    assert max(result.values()) < 1e-5, result


@pytest.mark.parametrize("name", ["batchnorm-mlp", "residual-convnet"])
def test_batchnorm_in_training_mode_matches_finite_differences(name):
    """BatchNorm with batch statistics (training mode) couples the examples of a batch; the whole
    model's parameter gradients against finite differences of the training-mode loss. The
    running statistics are restored before each evaluation, so only the loss is compared."""
    model, shape, _ = composite_models()[name]
    model.astype(np.float64).train()
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    y = rng.integers(0, 3, shape[0])
    loss = nn.CrossEntropyLoss()
    buffers = [b for _, b in model.named_buffers()]
    saved = [b.copy() for b in buffers]

    def value() -> float:
        with simdnn.no_grad(), F.record_kinks() as kinks:
            v = float(loss(model(x), y))
        for b, s in zip(buffers, saved):
            b[...] = s
        return v, kinks

    model.zero_grad()
    with F.record_kinks() as base:
        out = loss(model(x), y)
    out.backward()
    for b, s in zip(buffers, saved):
        b[...] = s
    eps = 1e-6
    checked = 0
    for pname, p in model.named_parameters():
        for i in rng.choice(p.data.size, size=min(6, p.data.size), replace=False):
            old = p.data.flat[i]
            p.data.flat[i] = old + eps
            up, k1 = value()
            p.data.flat[i] = old - eps
            down, k2 = value()
            p.data.flat[i] = old
            if not all(np.array_equal(a, b) for a, b in zip(k1 + k2, base + base)):
                continue
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - p.grad.flat[i]) < 1e-6 * max(1.0, abs(numeric)), pname
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("eps", [None, 1e-6], ids=["default-eps", "eps=1e-6"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_gradcheck_readme_example_has_no_false_alarm(split, eps):
    """The README's example: an untrained ConvNet fed digit images (many exact zeros, so ReLU
    and max-pool kinks everywhere). Every parameter is checked on kink-free entries. On the test
    images at eps=1e-6 a gradient of 4e-6 used to read 1.6e-5, pure rounding of the loss: the
    floor now accounts for it, and the default eps is where rounding is small."""
    x_train, y_train, x_test, y_test = simdnn.demos.load_digits_split()
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    model = simdnn.demos.build_convnet()
    kwargs = {} if eps is None else {"eps": eps}
    result = simdnn.gradcheck(model, nn.CrossEntropyLoss(), x[:4], y[:4], **kwargs)
    assert all(n > 0 for n in result.checked.values()), result.checked
    assert max(result.values()) < 1e-5, result


def test_gradcheck_flags_a_slightly_wrong_rule_on_the_readme_example(monkeypatch):
    """The floor and eps leave the check sharp: the README's ConvNet with every linear layer's
    gradient off by 0.1% reads 5e-4 or more (0.001 / 2.001), fifty times the tests' limit."""
    real = F.linear

    def off(x, weight, bias=None, activation=None):
        out = real(x, weight, bias, activation)
        return simdnn.autograd.record(out.data, (out,), lambda g, needs: (g * 1.001,), "off")

    monkeypatch.setattr(F, "linear", off)
    x, y, _, _ = simdnn.demos.load_digits_split()
    result = simdnn.gradcheck(simdnn.demos.build_convnet(), nn.CrossEntropyLoss(), x[:4], y[:4])
    assert min(result.values()) > 1e-4, result


def test_gradcheck_still_catches_a_wrong_rule(monkeypatch):
    """A broken backward rule (tanh's derivative doubled) shows errors near 1/3 or more."""
    real = F.tanh

    def broken(x):
        out = real(x)
        return simdnn.autograd.record(out.data, (x,), lambda g, needs: (2 * g * (1 - out.data**2),),
                                      "broken")  # fmt: skip

    monkeypatch.setattr(F, "tanh", broken)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    rng = np.random.default_rng(0)
    result = simdnn.gradcheck(model, nn.CrossEntropyLoss(), rng.standard_normal((5, 3)),
                              rng.integers(0, 2, 5))  # fmt: skip
    assert result["0.weight"] > 0.1


# ------------------------------------------------------------------------------------------------
# The PyTorch training loop


def test_pytorch_loop_trains_lenet_on_digits():
    """opt.zero_grad(); loss = crit(model(x), y); loss.backward(); opt.step(), with NumPy
    inputs, reaches at least 98% on the held-out digits."""
    x_train, y_train, x_test, y_test = simdnn.demos.load_digits_split()
    model = simdnn.demos.build_convnet(seed=0)
    crit = nn.CrossEntropyLoss()
    opt = optim.Adam(model.parameters(), lr=2e-3)
    sched = optim.StepLR(opt, step_size=10, gamma=0.3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            opt.zero_grad()
            loss = crit(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with simdnn.no_grad():
        pred = np.argmax(model(x_test).numpy(), axis=1)
    assert np.mean(pred == y_test) >= 0.98
    assert math.isclose(opt.lr, 2e-3 * 0.3**2)


def test_fit_equals_the_hand_written_loop():
    """simdnn.fit runs the same machinery: the same weights as the loop, bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    def build():
        r = np.random.default_rng(1)
        return nn.Sequential(nn.Linear(6, 8, rng=r), nn.ReLU(), nn.Linear(8, 3, rng=r))

    a, b = build(), build()
    simdnn.fit(a, nn.CrossEntropyLoss(), optim.SGD(a.parameters(), 0.1, momentum=0.9), x, y,
               epochs=2, batch_size=16, shuffle=False, progress=False)  # fmt: skip
    opt = optim.SGD(b.parameters(), 0.1, momentum=0.9)
    for _ in range(2):
        for i in range(0, 40, 16):
            opt.zero_grad()
            nn.CrossEntropyLoss()(b(x[i : i + 16]), y[i : i + 16]).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_schedules_follow_pytorch_formulas_and_run_from_fit():
    p = nn.Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=0.1)
    cos = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.01)
    lrs = []
    for _ in range(4):
        cos.step()
        lrs.append(cos.get_last_lr())
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(1, 5)]
    np.testing.assert_allclose(lrs, expected)
    model = nn.Sequential(nn.Linear(3, 2))
    opt = optim.SGD(model.parameters(), lr=1.0)
    step = optim.StepLR(opt, step_size=2, gamma=0.5)
    x = np.zeros((4, 3), np.float32)
    simdnn.fit(model, nn.CrossEntropyLoss(), opt, x, np.zeros(4, int), epochs=5,
               callbacks=[step], progress=False)  # fmt: skip
    assert opt.lr == 0.25
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        optim.StepLR(opt, 0)


# ------------------------------------------------------------------------------------------------
# Engine semantics


def test_reused_tensor_accumulates_and_leaf_grads_add_across_backwards():
    w = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    y = w * w + w * 3.0  # w used three times
    y.sum().backward()
    np.testing.assert_array_equal(w.grad, 2 * w.data + 3)
    (w * 2.0).sum().backward()
    np.testing.assert_array_equal(w.grad, 2 * w.data + 5)
    w.zero_grad()
    (w * 1.0).sum().backward()
    np.testing.assert_array_equal(w.grad, [1.0, 1.0])


def test_pass_through_gradients_are_not_shared_between_leaves():
    """add hands one array to both inputs: each leaf must own its gradient."""
    a = Tensor(np.ones(3), requires_grad=True)
    b = Tensor(np.ones(3), requires_grad=True)
    (a + b).backward(np.ones(3))
    a.grad[0] = 100.0
    assert b.grad[0] == 1.0


def test_no_grad_detach_and_constants():
    w = Tensor(np.ones(3), requires_grad=True)
    with simdnn.no_grad():
        y = w * 2.0
    assert not y.requires_grad
    assert y.grad_fn is None
    assert (w * 2.0).grad_fn == "mul"

    @simdnn.no_grad()
    def f(t):
        return t + 1.0

    assert not f(w).requires_grad
    assert simdnn.is_grad_enabled()
    d = (w * 2.0).detach()
    assert not d.requires_grad
    assert np.shares_memory(d.data, (d * 1.0).data) is False
    z = np.ones(3) * w  # a NumPy array on the left stays on the tape
    assert isinstance(z, Tensor)
    assert z.requires_grad
    assert np.asarray(z).dtype == np.float64
    assert float(Tensor(np.array([2.5]))) == 2.5
    assert Tensor(np.ones((2, 3))).ndim == 2
    assert isinstance(np.abs(z), np.ndarray)  # other ufuncs give plain arrays


def test_no_grad_works_with_and_without_parentheses():
    """@no_grad() and bare @no_grad (as in PyTorch), and the context manager: nothing recorded
    inside, grad mode restored after, also when the function raises."""
    w = Tensor(np.ones(3), requires_grad=True)

    @simdnn.no_grad
    def bare(t):
        """Doubles t."""
        return t * 2.0

    @simdnn.no_grad()
    def called(t):
        return t * 2.0

    @simdnn.no_grad
    def fails():
        raise KeyError("inside")

    @simdnn.enable_grad
    def recorded(t):
        return t * 2.0

    assert bare.__name__ == "bare"
    assert bare.__doc__ == "Doubles t."
    for fn in (bare, called):
        assert not fn(w).requires_grad
        assert simdnn.is_grad_enabled()
    with pytest.raises(KeyError, match="inside"):
        fails()
    assert simdnn.is_grad_enabled()
    with simdnn.no_grad():
        assert not (w * 2.0).requires_grad
        assert recorded(w).requires_grad
        assert not simdnn.is_grad_enabled()
    assert simdnn.is_grad_enabled()
    with pytest.raises(TypeError, match="no_grad: expected a function to decorate, got 3"):
        simdnn.no_grad(3)


def test_no_grad_is_per_thread():
    seen = []

    def other():
        seen.append(simdnn.is_grad_enabled())

    with simdnn.no_grad():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == [True]


def test_module_backward_says_it_was_removed():
    """Code written for the old per-layer API gets a TypeError naming the tape, not an
    AttributeError."""
    model = nn.Sequential(nn.Linear(3, 2))
    g = np.ones((4, 2), np.float32)
    msg = r"^Module\.backward was removed: gradients come from the tape; call loss\.backward\(\)"
    with pytest.raises(TypeError, match=msg):
        model.backward(g)
    with pytest.raises(TypeError, match="Linear's output"):
        model[0].backward(g)


def test_backward_errors():
    w = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="only one-element results"):
        (w * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        Tensor(np.ones(1)).backward()
    y = (w * w).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(w.grad, 4 * w.data)
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)
    with pytest.raises(ValueError, match="grad has shape"):
        (w * 2.0).backward(np.ones(4))


def test_first_trainable_layer_skips_its_input_gradient(monkeypatch):
    """The tape asks a rule only for the gradients someone needs: the input batch is a constant,
    so the first Linear never computes dX (a third of its backward pass)."""
    calls = []
    real = simdnn.ops.gemm

    def spy(a, b, c=None, **kw):
        calls.append((a.shape, b.shape, kw.get("trans_a", False), kw.get("trans_b", False)))
        return real(a, b, c, **kw)

    monkeypatch.setattr(simdnn.ops, "gemm", spy)
    model = nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    nn.CrossEntropyLoss()(model(np.ones((4, 784), np.float32)), np.zeros(4, int)).backward()
    assert ((4, 10), (16, 10), False, True) in calls  # dX of the second layer
    assert not any(c[:2] == ((4, 16), (784, 16)) for c in calls)  # no dX of the first


def test_linear_writes_weight_gradient_in_place():
    """The weight gradient buffer is the one allocated with the parameter: the GEMM writes it."""
    layer = nn.Linear(5, 3)
    buf = layer.weight._grad
    for _ in range(2):
        layer.zero_grad()
        layer(np.ones((2, 5), np.float32)).sum().backward()
    assert layer.weight.grad is buf
    np.testing.assert_array_equal(buf, 2 * np.ones((5, 3)))


def test_mixed_precision_input_is_a_clear_error():
    layer = nn.Linear(3, 2)
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    with pytest.raises(TypeError, match="input is float64 but the weights are float32"):
        layer(x)
    assert layer(np.ones((2, 3), np.int64)).dtype == np.float32  # constants are converted


def test_modules_take_several_inputs_and_summary_follows_forward():
    class Join(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(2, 4)

        def forward(self, x, z=None):
            h = self.a(x)
            return h if z is None else F.add(h, self.b(z))

    m = Join()
    out = m(np.ones((2, 3), np.float32), np.ones((2, 2), np.float32))
    assert out.shape == (2, 4)
    text = m.summary((3,), print_fn=None)
    assert "a Linear" in text
    assert "(4,)" in text
    model = composite_models()["linear-applied-twice"][0]
    rows = model.summary((4,), print_fn=None).splitlines()
    assert sum("2 Linear" in r for r in rows) == 2  # the shared layer runs twice
    assert f"{model.num_parameters():,}" in rows[-1]


def test_containers_and_residual():
    layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    layers.append(nn.Identity())
    assert len(layers) == 3
    assert isinstance(layers[2], nn.Identity)
    d = nn.ModuleDict({"enc": nn.Linear(2, 3)})
    assert "enc" in d
    assert [k for k, _ in d.items()] == ["enc"]

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers, self.heads = layers, d

        def forward(self, x):
            for m in self.layers:
                x = m(x)
            return self.heads["enc"](x)

    h = Holder()
    assert len(h.parameters()) == 6
    assert h(np.ones((1, 2), np.float32)).shape == (1, 3)
    r = nn.Residual(nn.Linear(3, 3, init="zeros"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(r(x).data, x)  # a zero block: the identity
    with pytest.raises(TypeError, match="block must be a Module"):
        nn.Residual("conv")


def test_user_class_named_like_a_builtin_cannot_replace_it(tmp_path):
    class ReLU(nn.Module):
        def forward(self, x):
            return x * 0.0

    assert nn.module.LAYER_REGISTRY["ReLU"] is nn.ReLU
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    simdnn.save(model, tmp_path / "m.npz")
    assert type(simdnn.load(tmp_path / "m.npz")[1]) is nn.ReLU
    del ReLU


def test_save_load_residual_shared_and_tied_models(tmp_path):
    rng = np.random.default_rng(0)
    shared = nn.Linear(4, 4, rng=rng)
    a, b = nn.Linear(4, 4, rng=rng), nn.Linear(4, 4, rng=rng)
    b.weight = a.weight  # tied between two different layers
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=rng),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, rng=rng), nn.ReLU())),
        nn.GlobalAvgPool2d(),
        nn.Linear(2, 4, rng=rng),
        shared,
        nn.Tanh(),
        shared,
        a,
        b,
    )
    x = rng.standard_normal((3, 1, 5, 5)).astype(np.float32)
    model.train()
    model(x)  # moves the running statistics
    model.eval()
    path = tmp_path / "m.npz"
    simdnn.save(model, path)
    loaded = simdnn.load(path)
    assert repr(loaded) == repr(model)
    assert loaded[6] is loaded[8]
    assert loaded[10].weight is loaded[9].weight
    assert loaded.num_parameters() == model.num_parameters()
    with np.load(path) as data:
        assert not any(k.endswith("10.weight") for k in data.files)  # stored once
    loaded.eval()
    np.testing.assert_array_equal(loaded(x).data, model(x).data)
    np.testing.assert_array_equal(loaded[1].running_mean, model[1].running_mean)
    # A subclass round-trips through its state dict.
    src = TwoBranch()
    simdnn.save(src, tmp_path / "user.npz")
    dst = TwoBranch()
    for p in dst.parameters():
        p.data[...] = 0
    dst.load_state_dict(simdnn.load_state_dict(tmp_path / "user.npz"))
    xb = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(dst(xb).data, src(xb).data)
