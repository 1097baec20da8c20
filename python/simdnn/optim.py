"""Optimisers, in order of increasing complexity. ``step()`` updates every parameter from its
accumulated ``.grad``; ``zero_grad()`` clears the gradients for the next batch. The update rules
are PyTorch's (weight decay is L2, added to the gradient)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .backend import backend_ops
from .nn.module import Parameter


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise TypeError(f"{type(self).__name__} does not define step()")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    g = grad + weight_decay * p
    v = momentum * v + g                (v = g on the first step)
    p -= lr * (g + momentum * v if nesterov else v)
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("SGD: momentum and weight_decay must be >= 0")
        if nesterov and momentum == 0:
            raise ValueError("SGD: Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        # Zero velocity: its first update momentum * 0 + g is PyTorch's initial buffer g.
        self._velocity = [np.zeros_like(p.data) if momentum else None for p in self.params]

    def step(self) -> None:
        # Every parameter in one call of the fused update.
        backend_ops().sgd_update(
            [p.data for p in self.params],
            [p.grad for p in self.params],
            self._velocity if self.momentum else None,
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
        )


class Adam(Optimizer):
    """Adam (Kingma & Ba): per-parameter steps from running means of the gradient and of its
    square, bias-corrected.

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(
        self,
        params: Iterable[Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self._m = [np.zeros_like(p.data) for p in self.params]
        self._v = [np.zeros_like(p.data) for p in self.params]
        self._t = 0

    def step(self) -> None:
        self._t += 1
        backend_ops().adam_update(
            [p.data for p in self.params],
            [p.grad for p in self.params],
            self._m,
            self._v,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            eps=self.eps,
            weight_decay=self.weight_decay,
            step=self._t,
        )
