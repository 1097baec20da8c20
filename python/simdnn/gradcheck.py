"""Finite-difference check of backpropagation through the real kernels and the tape."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from . import functional as F
from .autograd import no_grad
from .nn.losses import Loss
from .nn.module import Module


class GradcheckResult(dict):
    """Per parameter name, the largest relative error found (see :func:`gradcheck`).

    ``checked[name]`` and ``skipped[name]`` count the entries compared and those passed over
    because both +eps and -eps crossed a kink (a ReLU changing sign, a max-pool window changing
    its arg-max).
    A parameter with no kink-free entry among the candidates gets NaN: nothing could be checked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.checked: dict[str, int] = {}
        self.skipped: dict[str, int] = {}


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


def gradcheck(
    model: Module,
    loss: Loss,
    x: Any,
    y: Any,
    eps: float = 1e-5,
    entries: int = 20,
    seed: int = 0,
) -> GradcheckResult:
    """Compare each parameter's backpropagated gradient with central finite differences.

    Works on a float64 copy of the model (the original is untouched) in evaluation mode, so
    dropout is off. For each parameter, up to `entries` randomly chosen elements are perturbed
    by +-eps. An entry whose perturbation changes a non-smooth decision anywhere in the model (a
    ReLU's active set, a max-pool arg-max) straddles a kink, where finite differences are
    meaningless. Where only one side crosses (the unperturbed model sits on the kink, as a ReLU
    of an exact zero does on a digit's blank background), the one-sided difference on the other
    side is used (second order, as accurate as the central one); where both do, the entry is
    skipped and another drawn (up to 20 x entries candidates).

    The default eps, 1e-5, is about the cube root of float64's machine epsilon: where the
    central difference's truncation error (~eps^2) and its rounding error (~ulp(loss) / eps)
    are both small. At 1e-6 rounding dominates: on the README's untrained ConvNet a gradient of
    4e-6 read an error of 1.6e-5 with nothing wrong.

    Returns, per parameter name, the largest error |numeric - analytic| / max(|numeric| +
    |analytic|, floor): relative, except that gradients under the floor are compared against it.
    The floor is the gradient at which the rounding of the loss, ulp(max(1, |loss|)) / eps, is a
    relative error of 1e-6 (and at least 1e-6 * max(1, |loss|)), so rounding alone never reads
    much above 1e-6 whatever eps. Values around 1e-6 or below mean the backward pass is right; a
    wrong rule shows errors near 1 (a gradient off by 0.1% about 5e-4).
    """
    m = copy.deepcopy(model).astype(np.float64).eval()
    x64 = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray(y)
    if y_arr.dtype.kind == "f":
        y_arr = y_arr.astype(np.float64)

    def value() -> tuple[float, list[np.ndarray]]:
        with no_grad(), F.record_kinks() as kinks:
            v = float(loss(m(x64), y_arr))
        return v, kinks

    m.zero_grad()
    with F.record_kinks() as base_kinks:
        out = loss(m(x64), y_arr)
    f0 = float(out)
    out.backward()
    # The loss is known to about an ulp of its scale (at least 1: a small loss may be what is left
    # of larger terms), so the central difference to about ulp / eps; the floor keeps that at
    # 1e-6 of what it is compared with.
    scale = max(1.0, abs(f0))
    floor = max(1e-6 * scale, float(np.spacing(scale)) / (eps * 1e-6))
    rng = np.random.default_rng(seed)
    result = GradcheckResult()
    for name, p in m.named_parameters():
        flat = p.data.reshape(-1)
        grad = p.grad.reshape(-1)
        worst, checked, skipped = 0.0, 0, 0
        for i in rng.permutation(flat.size)[: 20 * entries]:
            if checked >= entries:
                break
            old = flat[i]
            flat[i] = old + eps
            up, k_up = value()
            flat[i] = old - eps
            down, k_down = value()
            flat[i] = old
            same_up, same_down = _same(k_up, base_kinks), _same(k_down, base_kinks)
            numeric = None
            if same_up and same_down:
                numeric = (up - down) / (2 * eps)
            elif same_up or same_down:
                # On a kink (a ReLU input exactly 0): the second-order one-sided difference on
                # the side where nothing crossed, f'(0) = +-(4 f(+-h) - f(+-2h) - 3 f(0)) / 2h.
                sign = 1.0 if same_up else -1.0
                flat[i] = old + 2 * sign * eps
                far, k_far = value()
                flat[i] = old
                if _same(k_far, base_kinks):
                    near = up if same_up else down
                    numeric = sign * (4 * near - far - 3 * f0) / (2 * eps)
            if numeric is None:
                skipped += 1
                continue
            denom = max(abs(numeric) + abs(grad[i]), floor)
            worst = max(worst, abs(numeric - grad[i]) / denom)
            checked += 1
        result[name] = float(worst) if checked else float("nan")
        result.checked[name] = checked
        result.skipped[name] = skipped
    return result
