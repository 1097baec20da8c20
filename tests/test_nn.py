"""The layer API: layers and their gradients, losses, optimisers, initialisers, backends,
summary, save/load and visualisation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import simdnn
from simdnn import Tensor, init, nn, optim


def backward_of(layer, x, g):
    """dL/dx for L = sum(layer(x) * g), through the tape; parameter gradients land in .grad."""
    xt = Tensor(x, requires_grad=True)
    (layer(xt) * g).sum().backward()
    return xt.grad


LAYERS = [
    ("linear", lambda: nn.Linear(7, 5), (4, 7)),
    ("linear-nobias", lambda: nn.Linear(6, 3, bias=False), (2, 6)),
    ("conv", lambda: nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 5)),
    ("conv-strided", lambda: nn.Conv2d(2, 4, (3, 2), stride=2, dilation=(1, 2)), (2, 2, 9, 8)),
    ("conv-groups", lambda: nn.Conv2d(4, 6, 3, groups=2, padding=(1, 0)), (1, 4, 5, 6)),
    ("conv-depthwise", lambda: nn.Conv2d(3, 3, 3, groups=3, padding=1), (2, 3, 5, 5)),
    ("maxpool", lambda: nn.MaxPool2d(2), (2, 3, 6, 7)),
    ("maxpool-overlap", lambda: nn.MaxPool2d(3, stride=1, padding=1), (1, 2, 5, 5)),
    ("avgpool", lambda: nn.AvgPool2d(2), (2, 3, 6, 6)),
    ("avgpool-pad", lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False), (1, 2, 7, 6)),
    ("flatten", nn.Flatten, (3, 2, 4, 5)),
    ("sigmoid", nn.Sigmoid, (4, 9)),
    ("tanh", nn.Tanh, (4, 9)),
    ("relu", nn.ReLU, (4, 9)),
    ("leaky", lambda: nn.LeakyReLU(0.1), (4, 9)),
    ("softmax", nn.Softmax, (4, 9)),
]


@pytest.mark.parametrize(("name", "make", "shape"), LAYERS, ids=[layer[0] for layer in LAYERS])
def test_layer_backward_matches_finite_differences(name, make, shape):
    """Input gradient and parameter gradients against central differences in float64, for
    L = sum(layer(x) * g) with a random g."""
    rng = np.random.default_rng(5)
    layer = make().astype(np.float64) if make().parameters() else make()
    x = rng.standard_normal(shape)
    if name.startswith("maxpool"):
        x = rng.permutation(np.arange(x.size, dtype=np.float64)).reshape(shape) / x.size
    y = layer(x)
    assert y.shape == layer.output_shape(x.shape)
    g = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = backward_of(layer, x, g)
    assert dx.shape == x.shape
    eps = 1e-6

    def loss() -> float:
        return float(np.sum(layer(x) * g))

    for i in rng.choice(x.size, size=min(12, x.size), replace=False):
        old = x.flat[i]
        x.flat[i] = old + eps
        up = loss()
        x.flat[i] = old - eps
        down = loss()
        x.flat[i] = old
        assert abs((up - down) / (2 * eps) - dx.flat[i]) < 1e-6 * max(1, abs(dx.flat[i]))
    for pname, p in layer.named_parameters():
        for i in rng.choice(p.data.size, size=min(8, p.data.size), replace=False):
            old = p.data.flat[i]
            p.data.flat[i] = old + eps
            up = loss()
            p.data.flat[i] = old - eps
            down = loss()
            p.data.flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert abs(numeric - p.grad.flat[i]) < 1e-6 * max(1, abs(numeric)), pname


def test_parameter_gradients_accumulate():
    layer = nn.Linear(3, 2)
    x = np.ones((4, 3), np.float32)
    layer(x).sum().backward()
    first = layer.weight.grad.copy()
    layer(x).sum().backward()
    np.testing.assert_allclose(layer.weight.grad, 2 * first)
    layer.zero_grad()
    assert not layer.weight.grad.any()


def test_wrong_input_shape_names_the_layer():
    with pytest.raises(
        ValueError,
        match=r"Linear\(in_features=784.*expected input of shape \(N, 784\), got \(2, 100\)",
    ):
        nn.Linear(784, 10)(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*\(N, 3, H, W\), got \(2, 1, 8, 8\)"):
        nn.Conv2d(3, 4, 3)(np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d.*\(N, C, H, W\), got \(8, 8\)"):
        nn.MaxPool2d(2)(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="expected a tensor or NumPy array"):
        nn.Linear(2, 2)([[1.0, 2.0]])


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="groups=3 must divide"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        nn.Conv2d(1, 1, 2.5)
    with pytest.raises(ValueError, match="padding"):
        nn.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="p must be in"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="unknown initializer 'bogus'"):
        nn.Linear(2, 2, init="bogus")


def test_sequential_forward_backward_and_structure():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert len(model) == 3
    assert isinstance(model[1], nn.ReLU)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.ones((5, 4), np.float32)
    assert model(x).shape == (5, 3)
    assert backward_of(model, x, np.ones((5, 3), np.float32)).shape == (5, 4)
    model.eval()
    assert all(not m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), "relu")


def _relu_pool_input(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    """Random values with the cases where ReLU then max-pooling could differ from the reverse
    order: windows all negative, ties at exactly zero, a window of -0.0 and zeros, infinities of
    both signs and a NaN."""
    x = np.random.default_rng(7).standard_normal(shape).astype(dtype)
    x[0, 0, :2, :2] = -np.abs(x[0, 0, :2, :2]) - 1.0
    x[0, 0, 2:4, :2] = 0.0
    x[0, 0, 2, 1] = -1.0
    x[0, 1, :2, :2] = -0.0
    x[0, 1, 0, 1] = 0.0
    x[1, 0, 1, 3] = np.inf
    x[1, 0, 4, 4] = -np.inf
    x[1, 1, 2, 2] = np.nan
    return x


@pytest.mark.usefixtures("quiet_numpy")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "pool",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "stride": 1},
    ],
    ids=["2x2", "3x3s2p1", "3x3s1-overlapping"],
)
def test_relu_then_max_pool_runs_pooled_first_with_the_same_results(dtype, pool, monkeypatch):
    """Sequential runs ReLU -> MaxPool2d as MaxPool2d -> ReLU (the ReLU sees the pooled shape),
    and the output and every gradient equal those of the layers called one by one as written,
    on the cases of _relu_pool_input; overlapping windows sum their gradients the same way."""
    from simdnn import functional

    x = _relu_pool_input(dtype, (2, 3, 7, 8))
    g = np.random.default_rng(8).standard_normal((2, 3 * 7 * 8)).astype(dtype)
    conv_seed = np.random.default_rng(9)
    model = nn.Sequential(
        nn.Conv2d(3, 3, 1, rng=conv_seed),
        nn.ReLU(),
        nn.MaxPool2d(**pool),
        nn.Flatten(),
    ).astype(dtype)
    model[0].weight.data[...] = np.eye(3, dtype=dtype).reshape(3, 3, 1, 1)  # x reaches ReLU as is
    model[0].bias.data[...] = 0
    results = []
    for reordered in (True, False):
        seen = []
        relu = functional.relu
        monkeypatch.setattr(
            functional, "relu", lambda t, seen=seen, relu=relu: seen.append(np.shape(t)) or relu(t)
        )
        model.zero_grad()
        xt = Tensor(x, requires_grad=True)
        if reordered:
            y = model(xt)
        else:
            y = xt
            for layer in model:
                y = layer(y)
        (y * g[:, : y.shape[1]]).sum().backward()
        monkeypatch.undo()
        pooled = model[2].output_shape(x.shape)
        assert seen == [pooled if reordered else x.shape]
        results.append((y.data, xt.grad, model[0].weight.grad.copy(), model[0].bias.grad.copy()))
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want)
    assert np.isnan(results[0][0]).any()
    assert np.isinf(results[0][0]).any()


def test_relu_before_other_layers_keeps_its_place(monkeypatch):
    """Only ReLU -> MaxPool2d is reordered: ReLU before average pooling (which does not commute
    with it) or after a max-pooling runs where it is written."""
    from simdnn import functional

    x = _relu_pool_input(np.float64, (2, 3, 8, 8))
    x[~np.isfinite(x)] = 0.5
    seen = []
    relu = functional.relu
    monkeypatch.setattr(functional, "relu", lambda t: seen.append(np.shape(t)) or relu(t))
    model = nn.Sequential(nn.ReLU(), nn.AvgPool2d(2), nn.MaxPool2d(2), nn.ReLU())
    y = model(x)
    assert seen == [(2, 3, 8, 8), (2, 3, 2, 2)]
    want = relu(nn.MaxPool2d(2)(nn.AvgPool2d(2)(relu(x))))
    np.testing.assert_array_equal(y.data, want.data)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_linear_then_relu_runs_as_one_op_with_the_same_results(dtype, monkeypatch):
    """Sequential runs each Linear -> ReLU as F.linear(..., activation="relu") (no separate
    ReLU), a Linear before anything else (here a Tanh, and the last layer) without it; output
    and gradients agree with the layers called one by one, up to the rounding of the bias added
    after the product instead of before it; summary() lists the layers as written."""
    from simdnn import functional

    rng = np.random.default_rng(3)
    model = nn.Sequential(
        nn.Linear(13, 33, rng=rng), nn.ReLU(), nn.Linear(33, 17, rng=rng), nn.Tanh(),
        nn.Linear(17, 29, rng=rng), nn.ReLU(), nn.Linear(29, 5, rng=rng),
    ).astype(dtype)  # fmt: skip
    for layer in model:
        if isinstance(layer, nn.Linear):
            layer.bias.data[...] = rng.standard_normal(layer.bias.shape)
    x = rng.standard_normal((11, 13)).astype(dtype)
    g = rng.standard_normal((11, 5)).astype(dtype)
    results = []
    for fused in (True, False):
        seen: list[object] = []
        linear, relu = functional.linear, functional.relu

        def spy_linear(*a, seen=seen, linear=linear):
            seen.append(a[3:])
            return linear(*a)

        def spy_relu(t, seen=seen, relu=relu):
            seen.append("relu")
            return relu(t)

        monkeypatch.setattr(functional, "linear", spy_linear)
        monkeypatch.setattr(functional, "relu", spy_relu)
        model.zero_grad()
        xt = Tensor(x, requires_grad=True)
        if fused:
            y = model(xt)
        else:
            y = xt
            for layer in model:
                y = layer(y)
        (y * g).sum().backward()
        monkeypatch.undo()
        want = [("relu",), (None,), ("relu",), (None,)] if fused else [
            (None,), "relu", (None,), (None,), "relu", (None,)]  # fmt: skip
        assert seen == want
        results.append([y.data, xt.grad] + [p.grad.copy() for p in model.parameters()])
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    rows = [line.split()[1] for line in model.summary((13,)).splitlines()[2:9]]
    assert rows == ["Linear", "ReLU", "Linear", "Tanh", "Linear", "ReLU", "Linear"], rows


def test_dropout_train_and_eval():
    d = nn.Dropout(0.25, rng=np.random.default_rng(0))
    x = np.ones((200, 100), np.float32)
    y = d(x)
    assert abs((y == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    xt = Tensor(x, requires_grad=True)
    y = d(xt)
    y.sum().backward()
    np.testing.assert_array_equal(xt.grad, y.data)  # the gradient goes through the same mask
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def test_float64_models():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).astype(
        np.float64
    )
    assert all(p.dtype == np.float64 for p in model.parameters())
    y = model(np.zeros((2, 1, 6, 6)))
    assert y.dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        model.astype(np.int32)
    assert nn.Linear(3, 2, dtype=np.float64).weight.dtype == np.float64


# ------------------------------------------------------------------------------------------------
# Losses


def test_cross_entropy_value_gradient_and_stability():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.5, 0.2, 0.1]])
    labels = np.array([0, 2])
    ce = nn.CrossEntropyLoss()
    lt = Tensor(logits, requires_grad=True)
    value = ce(lt, labels)
    z = logits[1] - logits[1].max()
    expected = (0.0 + (-(z[2] - np.log(np.exp(z).sum())))) / 2
    assert math.isclose(float(value), expected, rel_tol=1e-12)
    value.backward()
    grad = lt.grad
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(grad[1], (p - [0, 0, 1]) / 2)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    ("labels", "exc", "words"),
    [
        (np.array([0, 3]), ValueError, "labels must be in [0, 3)"),
        (np.array([0, -1]), ValueError, "found -1"),
        (np.array([0.0, 1.0]), TypeError, "labels must be integers"),
        (np.array([0, 1, 2]), ValueError, "2 predictions but 3 targets"),
        (np.array([[0], [1]]), ValueError, "must be 1-D"),
    ],
)
def test_cross_entropy_bad_labels(labels, exc, words):
    with pytest.raises(
        exc, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        nn.CrossEntropyLoss()(np.zeros((2, 3)), labels)


@pytest.mark.parametrize("loss_cls", [nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss])
def test_loss_gradients_match_finite_differences(loss_cls):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((6, 4))
    if loss_cls is nn.CrossEntropyLoss:
        target = rng.integers(0, 4, 6)
    elif loss_cls is nn.BCEWithLogitsLoss:
        target = rng.uniform(0, 1, (6, 4))
    else:
        target = rng.standard_normal((6, 4))
    loss = loss_cls()
    pt = Tensor(pred, requires_grad=True)
    loss(pt, target).backward()
    grad = pt.grad
    eps = 1e-6
    for i in range(pred.size):
        old = pred.flat[i]
        pred.flat[i] = old + eps
        up = float(loss(pred, target))
        pred.flat[i] = old - eps
        down = float(loss(pred, target))
        pred.flat[i] = old
        assert abs((up - down) / (2 * eps) - grad.flat[i]) < 1e-7


def test_bce_is_stable_and_checked():
    loss = nn.BCEWithLogitsLoss()
    assert math.isfinite(float(loss(np.array([[800.0, -800.0]]), np.array([[0.0, 1.0]]))))
    with pytest.raises(ValueError, match="targets must be in"):
        loss(np.zeros((1, 2)), np.array([[2.0, 0.0]]))
    with pytest.raises(ValueError, match="target has shape"):
        nn.MSELoss()(np.zeros((2, 2)), np.zeros(2))


# ------------------------------------------------------------------------------------------------
# Optimisers and initialisers


def test_sgd_momentum_nesterov_weight_decay_match_the_formulas():
    p = nn.Parameter(np.array([1.0, -2.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    v = None
    ref = np.array([1.0, -2.0])
    for g in (np.array([0.5, 0.1]), np.array([-0.3, 0.2])):
        p.grad[...] = g
        opt.step()
        gg = g + 0.01 * ref
        v = gg.copy() if v is None else 0.9 * v + gg
        ref = ref - 0.1 * (gg + 0.9 * v)
    np.testing.assert_allclose(p.data, ref)


def test_adam_matches_the_formula():
    p = nn.Parameter(np.array([0.3, -0.7]))
    opt = optim.Adam([p], lr=0.01)
    m = v = np.zeros(2)
    ref = p.data.copy()
    for t, g in enumerate((np.array([0.5, -1.0]), np.array([0.1, 0.4])), start=1):
        p.grad[...] = g
        opt.step()
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(p.data, ref, rtol=1e-12)


def test_optimiser_arguments_are_checked():
    with pytest.raises(ValueError, match="no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        optim.Adam([nn.Parameter(np.zeros(1))], lr=0)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD([nn.Parameter(np.zeros(1))], nesterov=True)


def test_initialisers_have_their_scales_and_are_seedable():
    shape = (256, 512)
    fan_in, fan_out = init.fans(shape)
    w = init.xavier_uniform(shape, rng=np.random.default_rng(0))
    assert (
        abs(w.std() - math.sqrt(2 / (fan_in + fan_out)))
        < 0.02 * math.sqrt(2 / (fan_in + fan_out)) * 10
    )
    w = init.kaiming_normal(shape, rng=np.random.default_rng(0))
    assert abs(w.std() - math.sqrt(2 / fan_in)) < 0.01
    assert abs(init.small_normal(shape, rng=np.random.default_rng(0)).std() - 0.01) < 0.001
    assert init.fans((8, 3, 5, 5)) == (75, 200)
    simdnn.seed(42)
    a = nn.Linear(10, 10).weight.data
    simdnn.seed(42)
    b = nn.Linear(10, 10).weight.data
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# Backends, summary, save/load, visualisation


def small_convnet(seed: int = 0) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, rng=rng),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6, 5, rng=rng),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_and_numpy_backends_agree(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 10, 10)).astype(dtype)
    y = rng.integers(0, 5, 8)
    results = {}
    for backend in ("native", "numpy"):
        model = small_convnet().astype(dtype)
        with simdnn.use_backend(backend):
            assert simdnn.get_backend() == backend
            loss = nn.CrossEntropyLoss()
            value = loss(model(x), y)
            model.zero_grad()
            value.backward()
        results[backend] = (float(value), [p.grad.copy() for p in model.parameters()])
    assert simdnn.get_backend() == "native"
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert math.isclose(results["native"][0], results["numpy"][0], rel_tol=tol)
    for a, b in zip(results["native"][1], results["numpy"][1]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


def test_use_backend_as_a_call_and_errors():
    simdnn.use_backend("numpy")
    try:
        assert simdnn.get_backend() == "numpy"
    finally:
        simdnn.use_backend("native")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        simdnn.use_backend("cuda")


def test_gradcheck_on_real_kernels():
    rng = np.random.default_rng(1)
    model = small_convnet()
    errors = simdnn.gradcheck(
        model, nn.CrossEntropyLoss(), rng.standard_normal((3, 1, 10, 10)), np.array([0, 2, 4])
    )
    assert set(errors) == {n for n, _ in model.named_parameters()}
    assert max(errors.values()) < 1e-5, errors
    assert model.dtype == np.float32  # the model itself is untouched


def test_summary_reports_receptive_fields_and_weight_sharing():
    model = small_convnet()
    text = model.summary((1, 10, 10), print_fn=None)
    lines = text.splitlines()
    assert "(4, 10, 10)" in lines[2]
    assert "40" in lines[2]
    assert "3x3" in lines[2]
    assert "4x4" in lines[4]  # after the 2x2/2 pool
    assert "8x8" in lines[5]  # 3x3 conv on stride-2 maps: 4 + 2*2
    assert f"{model.num_parameters():,}" in lines[-1]
    assert "fewer" in lines[-1]


class _Scaled(nn.Module):
    """A child layer plus a parameter of its own, used in forward."""

    def __init__(self, tie: nn.Parameter | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(np.ones(4, np.float32))
        if tie is not None:
            self.shift = tie  # also held by another module: counted once

    def forward(self, x):
        h = self.fc(x) * self.scale
        return h + self.shift if "shift" in self._params else h


def test_summary_counts_parameters_a_module_holds_beside_its_children():
    first = _Scaled()
    models = {
        "alone": (_Scaled(), 24),
        "in-sequential": (nn.Sequential(_Scaled(), nn.ReLU(), _Scaled()), 48),
        "tied": (nn.Sequential(first, _Scaled(tie=first.fc.bias)), 48),
    }
    for name, (model, want) in models.items():
        assert model.num_parameters() == want, name
        lines = model.summary((4,), print_fn=None).splitlines()
        assert lines[-1].startswith(f"total parameters: {want:,};"), (name, lines[-1])
        own = [r.split() for r in lines if "_Scaled (own)" in r]
        assert own, name
        assert own[0][-3:] == ["4", "-", "4"], (name, own)  # parameters, rf, dense
    rows = models["alone"][0].summary((4,), print_fn=None).splitlines()
    assert rows[2].startswith("fc Linear")
    assert rows[3].startswith("_Scaled (own)")  # after its children's rows


def test_save_and_load_round_trip(tmp_path):
    model = small_convnet()
    path = tmp_path / "model.npz"
    simdnn.save(model, path)
    loaded = simdnn.load(path)
    assert repr(loaded) == repr(model)
    x = np.random.default_rng(0).standard_normal((2, 1, 10, 10)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
    m64 = nn.Sequential(nn.Linear(3, 2)).astype(np.float64)
    simdnn.save(m64, tmp_path / "m64.npz")
    assert simdnn.load(tmp_path / "m64.npz").dtype == np.float64


def test_load_rejects_foreign_truncated_and_pickled_files(tmp_path):
    simdnn.save(small_convnet(), tmp_path / "good.npz")
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable simdnn model file"):
        simdnn.load(tmp_path / "cut.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a simdnn model file"):
        simdnn.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        simdnn.load(tmp_path / "text.npz")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="simdnn model file"):
        simdnn.load(tmp_path / "pickled.npy")

    class Custom(nn.Module):
        def forward(self, x):
            return x

    # A user class is saved as weights only; load names the way to restore it.
    simdnn.save(nn.Sequential(Custom(), nn.Linear(2, 2)), tmp_path / "custom.npz")
    with pytest.raises(ValueError, match="load_state_dict"):
        simdnn.load(tmp_path / "custom.npz")
    assert list(simdnn.load_state_dict(tmp_path / "custom.npz")) == ["1.weight", "1.bias"]


def test_feature_maps_and_filters(tmp_path):
    model = small_convnet()
    x = np.random.default_rng(0).standard_normal((2, 1, 10, 10)).astype(np.float32)
    maps = simdnn.viz.feature_maps(model, x, 0, save=tmp_path / "maps.png")
    np.testing.assert_allclose(maps, model[0](x))
    assert (tmp_path / "maps.png").stat().st_size > 1000
    w = simdnn.viz.filters(model[3], save=tmp_path / "filters.png")
    assert w.shape == (6, 4, 3, 3)
    assert simdnn.viz.feature_maps(model, x, model[2]).shape == (2, 4, 5, 5)
    with pytest.raises(TypeError, match="not a convolution layer"):
        simdnn.viz.filters(model[1])
    with pytest.raises(IndexError):
        simdnn.viz.feature_maps(model, x, 20)


# ------------------------------------------------------------------------------------------------
# Non-finite values: NaN, +Inf, -Inf and zeros sprinkled into every input; the class of
# each element must be the twin's.


@pytest.mark.nonfinite
@pytest.mark.usefixtures("quiet_numpy")
def test_layers_propagate_nan_through_forward_and_backward():
    """A NaN pixel of one image makes that image's outputs NaN (not the other image's) and
    reaches the weight gradients; no layer hides it."""
    from simdnn import nn

    rng = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    x[1, 0, 3, 3] = np.nan
    out = model(x)
    assert np.isnan(out.data[1]).all()
    assert np.isfinite(out.data[0]).all()
    grad = np.ones_like(out)
    grad[1] = 0.0  # even a zero gradient times the NaN activation gives NaN (IEEE), not 0
    out.backward(grad)
    first, last = model[0], model[4]
    assert np.isnan(last.weight.grad).any()
    assert np.isnan(first.weight.grad).all()
