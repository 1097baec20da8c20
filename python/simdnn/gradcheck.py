"""Finite-difference check of backpropagation through the real kernels."""

from __future__ import annotations

import copy

import numpy as np

from .nn.losses import Loss
from .nn.module import Module


def gradcheck(
    model: Module,
    loss: Loss,
    x: np.ndarray,
    y: np.ndarray,
    eps: float = 1e-6,
    entries: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """Compare each parameter's backpropagated gradient with central finite differences.

    Works on a float64 copy of the model (the original is untouched) in evaluation mode, so
    dropout is off. For each parameter, up to `entries` randomly chosen elements are perturbed by
    +-eps; returns, per parameter name, the largest relative error
    |numeric - analytic| / max(|numeric| + |analytic|, 1e-12). Values around 1e-7 or below mean
    the backward pass is right; a wrong one shows errors near 1.
    """
    m = copy.deepcopy(model).astype(np.float64).eval()
    x64 = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray(y)
    if y_arr.dtype.kind == "f":
        y_arr = y_arr.astype(np.float64)
    m.zero_grad()
    loss(m.forward(x64), y_arr)
    m.backward(loss.backward())
    rng = np.random.default_rng(seed)
    errors: dict[str, float] = {}
    for name, p in m.named_parameters():
        flat = p.data.reshape(-1)
        grad = p.grad.reshape(-1)
        picks = rng.choice(flat.size, size=min(entries, flat.size), replace=False)
        worst = 0.0
        for i in picks:
            old = flat[i]
            flat[i] = old + eps
            up = loss(m.forward(x64), y_arr)
            flat[i] = old - eps
            down = loss(m.forward(x64), y_arr)
            flat[i] = old
            numeric = (up - down) / (2 * eps)
            denom = max(abs(numeric) + abs(grad[i]), 1e-12)
            worst = max(worst, abs(numeric - grad[i]) / denom)
        errors[name] = worst
    return errors
