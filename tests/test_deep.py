"""The deep-net lab (``python -m simdnn deep``): its ordering on a reduced budget, and the CLI.

Margins come from the quick budget (3 epochs, depth 20, width 64, lr 0.01) over seeds 0-5:
held-out accuracy sigmoid 7.8-11.7%, ReLU + He 37.3-65.2%, + BatchNorm 71.3-85.0%,
+ residual 92.8-96.7%; training loss sigmoid >= 2.31, residual <= 0.38 against ReLU's >= 1.07.
BatchNorm beat plain ReLU by 6.6 to 41 points and residual by 27 to 59, so the 5-point
tolerance below leaves room for kernel rounding and thread-count differences without letting
the ordering flip.
"""

from __future__ import annotations

import math

import pytest

from simdnn import deep
from simdnn.__main__ import main

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def quick() -> dict:
    return deep.deep_lab(epochs=deep.QUICK_EPOCHS, seed=0, quiet=True)


def test_every_arm_ran(quick):
    assert list(quick) == [k for k, _ in deep.VARIANTS]
    for key, r in quick.items():
        assert "skipped" not in r, key
        assert len(r["loss"]) == deep.QUICK_EPOCHS
        assert len(r["init_norms"]) == len(r["train_norms"]) == 20
        assert all(math.isfinite(v) for v in r["loss"]), key


def test_sigmoid_net_is_at_chance_with_vanishing_gradients(quick):
    r = quick["sigmoid"]
    assert r["test_accuracy"] < 0.2
    assert r["final_loss"] > 2.2  # ln 10 = 2.30: it has learnt nothing
    assert r["ratio_init"] < 1e-10
    assert r["ratio_train"] < 1e-10
    # Every layer's gradient is smaller than the one above it.
    norms = r["init_norms"]
    assert all(a < b for a, b in zip(norms, norms[1:]))


def test_he_batchnorm_and_residual_learn_without_vanishing(quick):
    for key in ("relu", "bn", "residual"):
        r = quick[key]
        assert r["test_accuracy"] > 0.3, key
        assert r["test_accuracy"] > quick["sigmoid"]["test_accuracy"] + 0.2, key
        assert 0.1 < r["ratio_init"] < 100, key


def test_batchnorm_and_residual_at_least_as_good_as_plain_relu(quick):
    relu = quick["relu"]
    for key in ("bn", "residual"):
        assert quick[key]["test_accuracy"] >= relu["test_accuracy"] - TOLERANCE, key
    assert quick["residual"]["final_loss"] < relu["final_loss"]
    assert quick["residual"]["final_loss"] < quick["bn"]["final_loss"]


def test_residual_arm_has_identity_shortcuts_and_same_depth():
    counts = {}
    for key, _ in deep.VARIANTS:
        model = deep.build_deep_net(key, seed=0)
        counts[key] = sum(isinstance(m, deep.nn.Linear) for m in model.modules())
    assert set(counts.values()) == {20}
    residual = deep.build_deep_net("residual", seed=0)
    assert sum(isinstance(m, deep.nn.Residual) for m in residual.modules()) == 9
    with pytest.raises(ValueError, match="even depth"):
        deep.build_deep_net("residual", depth=19)
    with pytest.raises(ValueError, match="kind must be"):
        deep.build_deep_net("tanh")


def test_cli_quick_writes_the_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(deep, "QUICK_EPOCHS", 1)
    try:
        import matplotlib  # noqa: F401

        out = tmp_path / "deep.png"
        args = ["deep", "--quick", "--out", str(out)]
    except ImportError:
        out = None
        args = ["deep", "--quick"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for _, label in deep.VARIANTS:
        assert label in text
    assert "|g1|/|gL|" in text
    if out is not None:
        assert out.stat().st_size > 10_000
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
