"""Optimisers, in order of increasing complexity. ``step()`` updates every parameter from its
accumulated ``.grad``; ``zero_grad()`` clears the gradients for the next batch. The update rules
are PyTorch's (weight decay is L2, added to the gradient)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from .backend import backend_ops
from .nn.module import Parameter


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = []
        seen: set[int] = set()
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__}: expected Parameters (model.parameters()), got "
                    f"{type(p).__name__}"
                )
            if id(p) not in seen:  # a tied parameter is updated once
                seen.add(id(p))
                self.params.append(p)
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

    # The optimiser's state as arrays (updated in place by step) and its step count: what fit
    # restores when a step diverges, and what a distributed run broadcasts.
    def _state_arrays(self) -> list[np.ndarray]:
        return []

    def _step_count(self) -> int:
        return 0

    def _set_step_count(self, t: int) -> None:
        """Nothing to set: the update does not depend on the step number."""


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

    def _state_arrays(self) -> list[np.ndarray]:
        return [v for v in self._velocity if v is not None]

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

    def _state_arrays(self) -> list[np.ndarray]:
        return [*self._m, *self._v]

    def _step_count(self) -> int:
        return self._t

    def _set_step_count(self, t: int) -> None:
        self._t = t

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


# ------------------------------------------------------------------------------------------------
# Learning-rate schedules: call step() once per epoch (by hand, as in PyTorch), or pass the
# schedule to simdnn.fit in `callbacks`, which steps it after every epoch.


class LRScheduler:
    """Base class: sets ``optimizer.lr`` from the epoch count; ``step()`` advances one epoch."""

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def lr_at(self, epoch: int) -> float:
        raise TypeError(f"{type(self).__name__} does not define lr_at()")

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    # As a simdnn.fit callback.
    def on_train_begin(self, model: object) -> None:
        """Nothing to do: the schedule continues from where it is."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: object) -> bool:
        self.step()
        return False

    def on_train_end(self, model: object) -> None:
        """Nothing to do."""


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size): divide by 1/gamma every step_size epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, (int, np.integer)):
            raise TypeError(f"StepLR: step_size must be an int, got {step_size!r}")
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        if not 0 < gamma <= 1:
            raise ValueError(f"StepLR: gamma must be in (0, 1], got {gamma!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr_at(self, epoch: int) -> float:
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi * epoch / T_max)) / 2: from base_lr down
    to eta_min over T_max epochs along half a cosine (then back up, as PyTorch's closed form)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        if isinstance(T_max, bool) or not isinstance(T_max, (int, np.integer)):
            raise TypeError(f"CosineAnnealingLR: T_max must be an int, got {T_max!r}")
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        if not 0 <= eta_min < self.base_lr:
            raise ValueError(
                f"CosineAnnealingLR: eta_min must be in [0, lr={self.base_lr}), got {eta_min!r}"
            )
        self.T_max, self.eta_min = int(T_max), float(eta_min)

    def lr_at(self, epoch: int) -> float:
        cos = math.cos(math.pi * epoch / self.T_max)
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + cos) / 2
