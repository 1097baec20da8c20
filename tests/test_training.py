"""fit, evaluate, predict, callbacks, divergence handling, and the concept demos."""

from __future__ import annotations

import numpy as np
import pytest

import simdnn
from simdnn import demos, nn, optim


def blobs(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[2.0, 0.0], [-1.0, 2.0], [-1.0, -2.0]])
    x = centres[y] + 0.5 * rng.standard_normal((n, 2))
    return x.astype(np.float32), y


def mlp(seed: int = 0) -> nn.Sequential:
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Linear(2, 16, rng=rng), nn.Tanh(), nn.Linear(16, 3, rng=rng))


def test_fit_learns_and_records_history(capsys):
    x, y = blobs()
    model = mlp()
    history = simdnn.fit(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.2, momentum=0.9),
        x,
        y,
        epochs=8,
        batch_size=16,
        validation_data=blobs(100, seed=1),
        seed=0,
        progress=False,
    )
    assert capsys.readouterr().err == ""  # progress=False is silent
    assert history.epochs == 8
    assert history["loss"][-1] < history["loss"][0] / 3
    assert history["accuracy"][-1] > 0.95
    assert history["val_accuracy"][-1] > 0.95
    assert len(history["val_loss"]) == 8
    assert set(history["grad_norms"][0]) == {"0 Linear", "2 Linear"}
    assert history.stop_reason is None
    assert not model.training  # left in evaluation mode
    scores = simdnn.evaluate(model, nn.CrossEntropyLoss(), *blobs(50, seed=2))
    assert scores["accuracy"] > 0.9
    assert simdnn.predict(model, x[:7]).shape == (7, 3)


def test_fit_is_reproducible_with_a_seed():
    x, y = blobs()
    runs = []
    for _ in range(2):
        model = mlp()
        simdnn.fit(
            model,
            nn.CrossEntropyLoss(),
            optim.Adam(model.parameters()),
            x,
            y,
            epochs=2,
            seed=7,
            progress=False,
        )
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])


def test_progress_bar_shows_loss_and_accuracy(capsys):
    x, y = blobs(64)
    model = mlp()
    simdnn.fit(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.1),
        x,
        y,
        epochs=1,
        batch_size=16,
    )
    err = capsys.readouterr().err
    assert "epoch 1/1" in err
    assert "loss=" in err
    assert "accuracy=" in err


def test_early_stopping_restores_the_best_weights():
    x, y = blobs()
    val = blobs(60, seed=3)
    model = mlp()
    # Improvements smaller than min_delta do not count: the first epoch stays the best, so
    # training stops after patience + 1 more epochs and puts the first epoch's weights back.
    stopper = simdnn.EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)
    history = simdnn.fit(
        model,
        nn.CrossEntropyLoss(),
        optim.SGD(model.parameters(), lr=0.1),
        x,
        y,
        epochs=30,
        batch_size=16,
        validation_data=val,
        callbacks=[stopper],
        seed=0,
        progress=False,
    )
    assert history.stop_reason is not None
    assert "EarlyStopping" in history.stop_reason
    assert history.epochs == 4
    assert stopper.best_epoch == 0
    final = simdnn.evaluate(model, nn.CrossEntropyLoss(), *val)["loss"]
    assert final == pytest.approx(history["val_loss"][0], rel=1e-6)
    acc_stop = simdnn.EarlyStopping(monitor="val_accuracy", patience=0)
    assert acc_stop.higher_is_better
    with pytest.raises(ValueError, match="needs validation_data"):
        simdnn.fit(
            model,
            nn.CrossEntropyLoss(),
            optim.SGD(model.parameters()),
            x,
            y,
            callbacks=[simdnn.EarlyStopping()],
            progress=False,
        )


def test_nan_loss_stops_and_keeps_the_weights():
    x, y = blobs(64)
    x = x.copy()
    x[40] = np.nan  # batch 3 of 16
    model = mlp()
    before = model.state_dict()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="loss became nan at epoch 1, batch 3"):
        history = simdnn.fit(
            model,
            nn.CrossEntropyLoss(),
            opt,
            x,
            y,
            epochs=3,
            batch_size=16,
            shuffle=False,
            progress=False,
        )
    assert "epoch 1, batch 3" in history.stop_reason
    after = model.state_dict()
    # Two steps were taken on good batches; the weights are those from before the last one and
    # all finite.
    assert all(np.all(np.isfinite(v)) for v in after.values())
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_divergence_to_infinity_restores_finite_weights():
    x, _y = blobs(128)
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=1e30)
    with pytest.warns(RuntimeWarning, match="loss became"):
        simdnn.fit(
            model,
            nn.MSELoss(),
            opt,
            x,
            np.zeros((128, 3), np.float32),
            epochs=5,
            batch_size=16,
            progress=False,
        )
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"y": np.zeros(5, np.int64)}, ValueError, "x has 10 examples but y has 5"),
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        ({"epochs": -1}, ValueError, "epochs must be an int >= 0"),
        ({"epochs": "3"}, TypeError, "epochs must be an int, got '3'"),
        ({"epochs": 2.0}, TypeError, "epochs must be an int, got 2.0"),
        (
            {"validation_data": (np.zeros((0, 2), np.float32), np.zeros(0, np.int64))},
            ValueError,
            "validation_data has 0 examples",
        ),
        ({"y": np.full(10, 7)}, ValueError, r"labels must be in \[0, 3\)"),
        ({"y": np.zeros(10)}, TypeError, "labels must be integers"),
        ({"x": [[0.0, 0.0]] * 10}, TypeError, "x must be a NumPy array"),
    ],
)
def test_fit_bad_arguments(kwargs, exc, words):
    model = mlp()
    args = {"x": np.zeros((10, 2), np.float32), "y": np.zeros(10, np.int64), "progress": False}
    args.update(kwargs)
    with pytest.raises(exc, match=words):
        simdnn.fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters()), **args)


def test_vanishing_gradients_show(tmp_path):
    table = demos.vanishing(out=tmp_path / "v.png")
    sig = table["sigmoid + small Gaussian"]
    assert sig[0] < 1e-6  # orders of magnitude smaller than the last layer's
    assert all(a < b for a, b in zip(sig, sig[1:]))  # shrinking layer after layer
    assert 0.1 < table["ReLU + He"][0] < 10
    assert 0.1 < table["tanh + Glorot"][0] < 10
    assert (tmp_path / "v.png").stat().st_size > 1000


def test_equivariance_demo():
    figures = demos.equivariance()
    assert figures["conv_shift_error"] < 1e-5
    assert figures["pool2_change"] < 0.6 * figures["maps_change"]
    assert figures["pool4_change"] < figures["pool2_change"]


def test_demo_reaches_its_accuracy(capsys):
    results = demos.demo(progress=False)
    assert results["MLP"]["test_accuracy"] >= 0.97
    assert results["ConvNet"]["test_accuracy"] >= 0.98
    out = capsys.readouterr().out
    assert "faster native" in out
